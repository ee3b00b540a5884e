"""``sweep create``: validate a spec and store it as a new study (identical re-creation is a no-op)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from sweep import record
from sweep.service import warm
from sweep.service.common import ServiceError, quiet_optuna, resolve_study_name, stored_spec_dict
from sweep.spec import StudySpec, load_spec, spec_from_dict
from sweep.storage import mask_url, open_storage


@dataclass(frozen=True)
class CreateResult:
    """What ``create_study`` did."""

    name: str
    created: bool
    spec: StudySpec
    warnings: tuple[str, ...] = ()
    warm_started: int = 0  # trials copied from --warm-start's study


def _local_warnings(spec: StudySpec) -> list[str]:
    """Data roots and weight files are resolved on the worker; warn when they are missing here."""
    from sweep.data import check_data
    from sweep.model import check_weights

    out = []
    problem = check_data(spec.data.name, spec.data.root)
    if problem:
        out.append(f"{problem} (not found on this machine; workers must have it)")
    problem = check_weights(spec.model.weights)
    if problem:
        out.append(f"{problem} (not found on this machine; workers must have it)")
    return out


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def create_study(
    spec_arg: str,
    *,
    storage_url: str,
    name: str | None = None,
    overrides: Sequence[str] = (),
    studies_dir: str | Path = "studies",
    warm_start: str | None = None,
) -> CreateResult:
    """Validate the spec and create its study; identical re-creation is a no-op, a conflict an error.

    ``warm_start``: an existing study whose finished trials the new one starts from (sweep.service.warm).
    """
    quiet_optuna()
    spec = load_spec(spec_arg, overrides=list(overrides), name=name, studies_dir=studies_dir)
    storage = open_storage(storage_url)
    resolved = spec.to_dict()
    if warm_start is not None:  # checked before anything is written
        if warm_start == spec.name:
            raise ServiceError(f"--warm-start {warm_start}: a study cannot warm-start from itself")
        warm_start = resolve_study_name(storage, warm_start, storage_url)
    try:
        study = optuna.create_study(storage=storage, study_name=spec.name, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        existing = _resolved_again(stored_spec_dict(storage, spec.name))
        if existing == resolved and warm_start is None:
            return CreateResult(spec.name, created=False, spec=spec)
        if existing == resolved:
            raise ServiceError(f"study {spec.name!r} already exists; --warm-start is for a new study") from None
        where = ", ".join(_diff_keys(existing, resolved)[:6]) or "the spec"
        raise ServiceError(
            f"study {spec.name!r} already exists in {mask_url(storage_url)} with a different spec "
            f"(differs at {where}); pick another --name"
        ) from None
    try:
        # The spec goes in before anyone can use the study; a failure removes the half-made study.
        study.set_user_attr(record.SPEC.name, resolved)
        study.set_user_attr(record.SPEC_FINGERPRINT.name, spec.fingerprint())
        copied = warm.warm_start(storage, study, spec, warm_start) if warm_start is not None else 0
    except BaseException:
        with contextlib.suppress(Exception):
            optuna.delete_study(study_name=spec.name, storage=storage)
        raise
    return CreateResult(spec.name, created=True, spec=spec, warnings=tuple(_local_warnings(spec)), warm_started=copied)


def _resolved_again(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored spec with today's defaults filled in: a study made before a new spec key existed
    (e.g. ``checkpoint.keep_best``) still equals the same spec created again."""
    from sweep.spec import SpecError

    try:
        return spec_from_dict(stored).to_dict()
    except SpecError:
        return stored
