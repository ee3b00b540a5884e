"""The trained models: ``sweep export`` (a kept model), ``sweep predict`` (with an export) and ``sweep rerun``
(a trial trained again from scratch, optionally exported).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep import provenance, record
from sweep.kept import KeptModel, kept_models
from sweep.objective import Retrained, retrain, set_threads, trial_seed
from sweep.service.common import (
    ServiceError,
    load_spec_data,
    load_spec_of,
    open_read_only,
    resolve_device,
    resolve_study_name,
)
from sweep.storage import artifact_store

if TYPE_CHECKING:
    from sweep.train import FitResult

# --------------------------------------------------------------------------- export / predict


@dataclass(frozen=True)
class ExportResult:
    """What ``sweep export`` wrote."""

    study: str
    number: int
    value: float
    files: tuple[Path, ...]


def _trial_to_export(study: optuna.Study, number: int | None) -> FrozenTrial:
    trials = study.get_trials(deepcopy=False)
    if number is None:
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        if not complete:
            raise ServiceError(f"study {study.study_name!r} has no completed trial yet; nothing to export")
        return max(complete, key=lambda t: (t.value, -t.number))
    by_number = {t.number: t for t in trials}
    if number not in by_number:
        raise ServiceError(f"--trial {number}: study {study.study_name!r} has trials 0..{len(trials) - 1}")
    trial = by_number[number]
    if trial.state != TrialState.COMPLETE:
        raise ServiceError(
            f"--trial {number}: it did not complete (state {trial.state.name.lower()}); only completed "
            "trials have final weights"
        )
    return trial


def export_trial(
    study_name: str | None,
    number: int | None,
    output: str | Path,
    *,
    storage_url: str,
    artifacts: str | None = None,
    force: bool = False,
) -> ExportResult:
    """Write a kept model (default: the best trial's) as model.pt2, state_dict.pt and model.json."""
    from sweep.export import write_export

    out = Path(output)
    if out.exists() and not force:  # before any work: nothing is read or written
        raise ServiceError(f"--output {out}: already exists; choose a new folder or pass --force")
    storage = open_read_only(storage_url)
    name = resolve_study_name(storage, study_name, storage_url)
    study = optuna.load_study(study_name=name, storage=storage)
    trial = _trial_to_export(study, number)
    kept = {k.trial: k for k in kept_models(study.user_attrs)}
    if trial.number not in kept:
        shown = ", ".join(map(str, sorted(kept))) or "none yet"
        raise ServiceError(
            f"trial {trial.number} has no kept model (the study keeps its best "
            f"{load_spec_of(storage, name).checkpoint.keep_best}: trials {shown}); train it again and export "
            f"that: sweep rerun {name} {trial.number} --export {out}"
        )
    payload = _download_model(artifact_store(storage_url, artifacts), kept[trial.number])
    files = write_export(payload, _card(name, trial), out, force=force)
    return ExportResult(name, trial.number, float(trial.value or 0.0), tuple(files))


def _download_model(store: Any, kept: KeptModel) -> dict[str, Any]:
    from optuna.artifacts import download_artifact

    from sweep.export import read_payload
    from sweep.objectstore import describe

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.pt")
        try:
            download_artifact(artifact_store=store, file_path=path, artifact_id=kept.artifact_id)
        except Exception:  # noqa: BLE001 - not found, unreadable: the same advice
            raise ServiceError(
                f"the kept model of trial {kept.trial} ({kept.artifact_id}) is not in {describe(store)}; pass the "
                "location the workers stored it in: --artifacts DIR or s3://bucket/prefix (or SWEEP_ARTIFACTS)"
            ) from None
        return read_payload(path)


def _card(study: str, trial: FrozenTrial | None, **extra: Any) -> dict[str, Any]:
    """The trial's record in model.json (the model's own facts come from its file)."""
    if trial is None:
        return {"study": study, **extra}
    env = record.environment(trial)
    return {
        "study": study,
        "trial": trial.number,
        "params": dict(trial.params),
        "val_accuracy": trial.value,
        "test_accuracy": record.test_accuracy(trial),
        "trained_precision": record.precision(trial),  # bf16: the export runs in fp32
        "environment": env,  # library versions and git commit of the worker that trained it
        "git_commit": env.get("git_commit"),
        **extra,
    }


def predict(folder: str | Path, inputs: Sequence[str], *, k: int = 5, threads: int | None = None) -> list[Any]:
    """Top-``k`` classes of every image under ``inputs`` with an export (sweep.export.Prediction /
    Unreadable per input file, in order)."""
    from sweep.export import predict_files

    if threads:
        set_threads(threads)
    return predict_files(Path(folder), inputs, k=k)


# --------------------------------------------------------------------------- rerun


@dataclass(frozen=True)
class RerunResult:
    """A trial's stored figures next to a fresh run of the same params and seed."""

    study: str
    number: int
    params: dict[str, Any]
    stored_curve: tuple[float, ...]
    new_curve: tuple[float, ...]
    stored_test: float | None
    new_test: float
    stored_precision: str | None = None  # what the trial trained in ("bf16"/"fp32"; None before it was recorded)
    new_precision: str = "fp32"


def rerun_trial(
    study_name: str | None,
    number: int,
    *,
    storage_url: str,
    device: str = "auto",
    threads: int | None = None,
    on_epoch: Callable[[int, int, float], None] = lambda epoch, epochs, acc: None,
    precision: str | None = None,
    export: str | Path | None = None,
    force: bool = False,
) -> RerunResult:
    """Train one trial's params again from scratch (same seed) without touching the study.

    ``precision`` ("auto", "bf16", "fp32") overrides the study's ``train.precision``: the same trial
    in both precisions shows what bf16 costs in accuracy. ``export``: a folder to write the
    retrained model to, as ``sweep export`` does.
    """

    if export is not None and Path(export).exists() and not force:
        raise ServiceError(f"--export {export}: already exists; choose a new folder or pass --force")
    storage = open_read_only(storage_url)
    name = resolve_study_name(storage, study_name, storage_url)
    spec = load_spec_of(storage, name)
    trial = _trial_to_rerun(storage, name, number)
    device = resolve_device(device)
    if threads:
        set_threads(threads)
    params = {**spec.fixed_params(), **trial.params}
    original = trial.system_attrs.get(record.FAILED_TRIAL.name, trial.number)
    data = load_spec_data(spec, storage_url)
    retrained = retrain(
        spec,
        params,
        data,
        device,
        seed=trial_seed(spec, original),
        precision=precision,
        keep_final=export is not None,
        on_epoch=on_epoch,
    )
    if retrained.payload is not None and export is not None:
        _export_retrained(name, trial, retrained, Path(export), force=force)
    return _rerun_result(name, trial, retrained.result)


def _trial_to_rerun(storage: optuna.storages.BaseStorage, name: str, number: int) -> FrozenTrial:
    """Trial ``number`` of study ``name``, which must have params to train."""
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    if number not in by_number:
        raise ServiceError(f"TRIAL = {number}: study {name!r} has trials 0..{len(trials) - 1}")
    trial = by_number[number]
    if not trial.params:
        raise ServiceError(f"TRIAL = {number}: it has no params yet (state {trial.state.name})")
    return trial


def _export_retrained(name: str, trial: FrozenTrial, retrained: Retrained, folder: Path, *, force: bool) -> None:
    """Write a retrained model as ``sweep export`` does, its card saying it was trained again."""
    from sweep.export import write_export

    assert retrained.payload is not None
    result = retrained.result
    card = _card(
        name,
        trial,
        val_accuracy=result.val_accuracy,
        test_accuracy=result.test_accuracy,
        environment=provenance.environment(),
        retrained=True,
    )
    card["git_commit"] = card["environment"].get("git_commit")
    write_export(retrained.payload, card, folder, force=force)


def _rerun_result(name: str, trial: FrozenTrial, result: FitResult) -> RerunResult:
    """The trial's stored curve, test accuracy and precision next to the fresh run's."""
    stored = tuple(trial.intermediate_values[k] for k in sorted(trial.intermediate_values))
    return RerunResult(
        name,
        trial.number,
        dict(trial.params),
        stored,
        tuple(h.val_accuracy for h in result.history),
        record.test_accuracy(trial),
        result.test_accuracy,
        record.precision(trial),
        result.precision,
    )
