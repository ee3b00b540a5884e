"""Sweep controls kept in the database: pause, resume, stop and a budget changed after ``sweep create``.

Two study user attributes carry them, so every worker on every machine sees them without any other
channel: ``control`` ("paused", "stopped" or "running") and ``n_trials`` (the budget ``sweep extend`` set;
without it the spec's). Workers read them where they decide anyway: under the budget lock before
taking a trial, and on every heartbeat of a running trial (which then stops after its epoch and
goes back to the queue). No torch here: ``sweep status`` and the report read this module.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from sweep import record


class SweepState(enum.StrEnum):
    """Where a study stands, as ``sweep status`` and the report show it."""

    RUNNING = "running"  # trials left in the budget, or still running / queued
    PAUSED = "paused"  # `sweep pause`: no trial is handed out until `sweep resume`
    STOPPED = "stopped"  # `sweep stop`: no trial is handed out, workers exit; `sweep extend` reopens
    IDLE = "idle"  # trials left, but no worker is running one (none beats): start workers
    FINISHED = "finished"  # budget spent and nothing running or queued


def is_paused(study_attrs: Mapping[str, Any]) -> bool:
    """Whether no trial may be handed out and running ones hand themselves back: ``sweep pause`` or ``stop``."""
    return study_attrs.get(record.CONTROL.name) in (SweepState.PAUSED.value, SweepState.STOPPED.value)


def is_stopped(study_attrs: Mapping[str, Any]) -> bool:
    """Whether ``sweep stop`` is in force (workers exit instead of waiting for a resume)."""
    return study_attrs.get(record.CONTROL.name) == SweepState.STOPPED.value


def budget(study_attrs: Mapping[str, Any], spec_n_trials: int) -> int:
    """The study's trial budget: what ``sweep extend`` set, else the spec's ``n_trials``."""
    value = study_attrs.get(record.N_TRIALS.name)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return spec_n_trials


def sweep_state(paused: bool, budget_n: int, counted: int, active: int, stopped: bool = False) -> SweepState:
    """``counted``: trials that count against the budget; ``active``: trials running or queued."""
    if stopped:
        return SweepState.STOPPED
    if paused:
        return SweepState.PAUSED
    return SweepState.FINISHED if counted >= budget_n and active == 0 else SweepState.RUNNING


def compute_seconds(trials: Iterable[FrozenTrial]) -> float:
    """Seconds of every epoch the study's trials trained, once each: a retry's epochs inherited from the
    trial it resumes (``resumed_from_epoch``) are that trial's, not counted again."""
    total = 0.0
    for t in trials:
        skip = record.resumed_from_epoch(t) if record.FAILED_TRIAL.name in t.system_attrs else 0
        total += sum(float(s) for s in record.epoch_seconds(t)[skip:])
    return total


def hours_spent(max_hours: float | None, trials: Iterable[FrozenTrial]) -> bool:
    """Whether the study's ``max_hours`` of summed trial compute are spent (never without one)."""
    return max_hours is not None and compute_seconds(trials) >= max_hours * 3600


def state_of(
    study_attrs: Mapping[str, Any],
    spec_n_trials: int,
    trials: Iterable[FrozenTrial],
    live: int | None = None,
    max_hours: float | None = None,
) -> SweepState:
    """The state of a study from its attributes and trials (what the report and status read).

    ``live``: running trials whose worker still beats (None: unknown); with 0, a study with work left
    is IDLE, not RUNNING: nobody is working on it.
    """
    trials = list(trials)
    counted = active = 0
    for t in trials:
        counted += record.FAILED_TRIAL.name not in t.system_attrs
        active += t.state in (TrialState.RUNNING, TrialState.WAITING)
    budget_n = budget(study_attrs, spec_n_trials)
    if hours_spent(max_hours, trials):
        budget_n = min(budget_n, counted)  # no new trial: the study finishes with those it has
    state = sweep_state(is_paused(study_attrs), budget_n, counted, active, is_stopped(study_attrs))
    return SweepState.IDLE if state == SweepState.RUNNING and live == 0 else state
