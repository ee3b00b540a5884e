"""``sweep pause``, ``resume``, ``stop`` and ``extend``: a study's state and budget, changed under its budget lock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sweep import control, record
from sweep.control import SweepState
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
        spent, waiting, running = budget_counts(storage, study_id, record.FAILED_TRIAL.name)
    after = control.budget(attrs, spec.n_trials)
    state = control.sweep_state(control.is_paused(attrs), after, spent, waiting + running, control.is_stopped(attrs))
    return ControlResult(study, state, after, before if before != after else None, running)


def pause_study(storage_url: str, name: str | None) -> ControlResult:
    """No worker takes a new trial; running trials hand themselves back after their current epoch."""

    def change(storage: Any, study_id: int, study: str, attrs: dict[str, Any]) -> None:
        if control.is_stopped(attrs):
            raise ServiceError(f"study {study!r} is stopped; reopen it: sweep extend {study} --n-trials N")
        if control.is_paused(attrs):
            raise ServiceError(f"study {study!r} is already paused; resume it: sweep resume {study}")
        storage.set_study_user_attr(study_id, record.CONTROL.name, SweepState.PAUSED.value)

    return _control(storage_url, name, change)


def resume_study(storage_url: str, name: str | None) -> ControlResult:
    """Hand trials out again (handed-back trials first, each resuming from its checkpoint)."""

    def change(storage: Any, study_id: int, study: str, attrs: dict[str, Any]) -> None:
        if control.is_stopped(attrs):
            raise ServiceError(f"study {study!r} is stopped; reopen it: sweep extend {study} --n-trials N")
        if not control.is_paused(attrs):
            raise ServiceError(f"study {study!r} is not paused; nothing to resume")
        storage.set_study_user_attr(study_id, record.CONTROL.name, SweepState.RUNNING.value)

    return _control(storage_url, name, change)


def extend_study(storage_url: str, name: str | None, n_trials: int) -> ControlResult:
    """Set a new trial budget; never below the trials already finished, running or queued."""

    def change(storage: Any, study_id: int, study: str, attrs: dict[str, Any]) -> None:
        spent = budget_counts(storage, study_id, record.FAILED_TRIAL.name)[0]
        if n_trials < spent:
            raise ServiceError(
                f"--n-trials {n_trials}: {spent} trials of {study!r} are already finished, running or queued; "
                f"give at least {spent}"
            )
        storage.set_study_user_attr(study_id, record.N_TRIALS.name, n_trials)
        if control.is_stopped(attrs):  # extend reopens a stopped study; handed-back trials resume first
            storage.set_study_user_attr(study_id, record.CONTROL.name, SweepState.RUNNING.value)

    return _control(storage_url, name, change)


def stop_study(storage_url: str, name: str | None) -> ControlResult:
    """End a sweep early: no new trials, running trials checkpoint after their epoch and go back to the
    queue (nothing is lost), workers exit 0. ``sweep extend`` reopens it; the queued trials resume first."""

    def change(storage: Any, study_id: int, study: str, attrs: dict[str, Any]) -> None:
        if control.is_stopped(attrs):
            raise ServiceError(f"study {study!r} is already stopped")
        storage.set_study_user_attr(study_id, record.CONTROL.name, SweepState.STOPPED.value)

    return _control(storage_url, name, change)


@dataclass(frozen=True)
class DeleteResult:
    """What ``delete_study`` removed."""

    study: str
    trials: int
    artifacts_removed: int  # checkpoint and model files that were still there


def delete_study(storage_url: str, name: str, *, yes: bool, artifacts: str | None = None) -> DeleteResult:
    """Remove a study, its trials and every artifact file they stored (checkpoints, kept models), for good.

    Refused without ``yes``, and while trials run (a worker would lose its study under it): stop the
    study first. Files go before the study, so an interrupted delete is finished by running it again.
    """
    import optuna
    from optuna.artifacts import get_all_artifact_meta
    from optuna.trial import TrialState

    from sweep.objectstore import present
    from sweep.storage import artifact_store

    quiet_optuna()
    storage = open_storage(storage_url, create=False)
    study_name = resolve_study_name(storage, name, storage_url)
    study = optuna.load_study(study_name=study_name, storage=storage)
    optuna.storages.fail_stale_trials(study)  # a dead worker's trial must not block the delete forever
    trials = study.get_trials(deepcopy=False)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    if running:
        raise ServiceError(
            f"{running} trials of {study_name!r} are running; stop the study first "
            f"(sweep stop {study_name}) and delete it once its workers have exited"
        )
    if not yes:
        raise ServiceError(
            f"sweep delete removes study {study_name!r}, its {len(trials)} trials and their "
            "checkpoints and kept models for good; pass --yes"
        )
    store = artifact_store(storage_url, artifacts)
    ids = {m.artifact_id for t in trials for m in get_all_artifact_meta(t, storage=storage)}
    ids |= {m.artifact_id for m in get_all_artifact_meta(study)}
    removed = 0
    for artifact_id in sorted(present(store, ids)):
        try:
            store.remove(artifact_id)
            removed += 1
        except Exception:  # noqa: BLE001 - already gone (removed when its trial ended, or a delete re-run)
            continue
    optuna.delete_study(study_name=study_name, storage=storage)
    return DeleteResult(study_name, len(trials), removed)
