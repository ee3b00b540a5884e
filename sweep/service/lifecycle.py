"""``sweep pause``, ``resume`` and ``extend``: a study's state and budget, changed under its budget lock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sweep import control
from sweep.control import RETRY_KEY, SweepState
from sweep.service.common import ServiceError, load_spec_of, quiet_optuna, resolve_study_name
from sweep.storage import budget_counts, budget_lock, open_storage


@dataclass(frozen=True)
class ControlResult:
    """What a control command changed."""

    study: str
    state: SweepState
    n_trials: int
    previous_n_trials: int | None = None  # `extend`: the budget before
    running: int = 0  # trials running when the command was given


def _control(
    storage_url: str, name: str | None, change: Callable[[Any, int, str, dict[str, Any]], None]
) -> ControlResult:
    """Run ``change(storage, study_id, study, attrs)`` under the study's budget lock; say where it stands."""
    quiet_optuna()
    storage = open_storage(storage_url, create=False)
    study = resolve_study_name(storage, name, storage_url)
    spec = load_spec_of(storage, study)
    study_id = storage.get_study_id_from_name(study)
    with budget_lock(storage, study):  # workers decide under it: they see the change whole, or not at all
        attrs = storage.get_study_user_attrs(study_id)
        before = control.budget(attrs, spec.n_trials)
        change(storage, study_id, study, attrs)
        attrs = storage.get_study_user_attrs(study_id)
        spent, waiting, running = budget_counts(storage, study_id, RETRY_KEY)
    after = control.budget(attrs, spec.n_trials)
    state = control.sweep_state(control.is_paused(attrs), after, spent, waiting + running)
    return ControlResult(study, state, after, before if before != after else None, running)


def pause_study(storage_url: str, name: str | None) -> ControlResult:
    """No worker takes a new trial; running trials hand themselves back after their current epoch."""

    def change(storage: Any, study_id: int, study: str, attrs: dict[str, Any]) -> None:
        if control.is_paused(attrs):
            raise ServiceError(f"study {study!r} is already paused; resume it: sweep resume {study}")
        storage.set_study_user_attr(study_id, control.CONTROL_ATTR, SweepState.PAUSED.value)

    return _control(storage_url, name, change)


def resume_study(storage_url: str, name: str | None) -> ControlResult:
    """Hand trials out again (handed-back trials first, each resuming from its checkpoint)."""

    def change(storage: Any, study_id: int, study: str, attrs: dict[str, Any]) -> None:
        if not control.is_paused(attrs):
            raise ServiceError(f"study {study!r} is not paused; nothing to resume")
        storage.set_study_user_attr(study_id, control.CONTROL_ATTR, SweepState.RUNNING.value)

    return _control(storage_url, name, change)


def extend_study(storage_url: str, name: str | None, n_trials: int) -> ControlResult:
    """Set a new trial budget; never below the trials already finished, running or queued."""

    def change(storage: Any, study_id: int, study: str, attrs: dict[str, Any]) -> None:
        spent = budget_counts(storage, study_id, RETRY_KEY)[0]
        if n_trials < spent:
            raise ServiceError(
                f"--n-trials {n_trials}: {spent} trials of {study!r} are already finished, running or queued; "
                f"give at least {spent}"
            )
        storage.set_study_user_attr(study_id, control.BUDGET_ATTR, n_trials)

    return _control(storage_url, name, change)
