"""The study's best models: which trials' final weights stay in the artifact store.

A completed trial uploads its final weights and records them on itself (user attribute
``final_model``) *before* it is told COMPLETE, so a completed trial never lacks its model. Right
after the tell, its worker runs ``reconcile``: under a lock every worker of the study shares (a
PostgreSQL advisory lock, an flock beside a SQLite file) the top K completed trials by validation
accuracy are read from the database and written to the study attribute ``kept_models``; once that is
committed, the model of every other finished trial is removed. Values never change once told, so a trial that falls out
of the top K never comes back: removing its model is final and safe.

With many workers finishing at once each reconcile sees every trial told before it, so after the
last one exactly the top K models exist. A worker killed between its tell and its reconcile leaves
one model too many until the next trial of the study completes (the next reconcile removes it); a
worker killed before its tell leaves a model of a FAIL trial, removed the same way. No torch here:
``sweep status`` and the report read this module.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

from sweep import record
from sweep.storage import budget_lock, read_connection

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class KeptModel:
    """One kept model: the trial, its validation accuracy, where its weights are."""

    trial: int
    value: float
    artifact_id: str
    path: str | None = None  # the file as the worker that stored it saw it

    def to_json(self) -> dict[str, Any]:
        return {"trial": self.trial, "value": self.value, "artifact_id": self.artifact_id, "path": self.path}


@dataclass(frozen=True)
class StoredModel:
    """A trial that recorded final weights (they may have been removed since)."""

    number: int
    state: TrialState
    value: float | None
    artifact_id: str
    path: str | None


@dataclass(frozen=True)
class Reconciled:
    """What one ``reconcile`` decided."""

    kept: tuple[KeptModel, ...]
    removed: tuple[int, ...]  # trial numbers whose model file was removed now


def kept_models(study_attrs: Mapping[str, Any]) -> tuple[KeptModel, ...]:
    """The kept models recorded in a study's user attributes, best first."""
    out = []
    for entry in study_attrs.get(record.KEPT_MODELS.name) or ():
        with contextlib.suppress(KeyError, TypeError, ValueError):
            out.append(
                KeptModel(int(entry["trial"]), float(entry["value"]), str(entry["artifact_id"]), entry.get("path"))
            )
    return tuple(out)


def rank(models: Sequence[StoredModel], keep_best: int) -> tuple[KeptModel, ...]:
    """The top ``keep_best`` completed trials by value (ties: the earlier trial)."""
    done = [m for m in models if m.state == TrialState.COMPLETE and m.value is not None]
    done.sort(key=lambda m: (-(m.value or 0.0), m.number))
    return tuple(KeptModel(m.number, float(m.value or 0.0), m.artifact_id, m.path) for m in done[:keep_best])


def reconcile(
    storage: optuna.storages.BaseStorage, study_id: int, study_name: str, store: Any, keep_best: int
) -> Reconciled:
    """Keep the models of the top ``keep_best`` completed trials, remove every other finished one's.

    Removal is tried for every finished trial that ever stored a model, so whatever a killed worker
    left behind goes with the next completion; for models already gone that is one failing unlink
    each, milliseconds at 10,000 trials.
    """
    # A lock of its own (another key than the budget's on PostgreSQL): asks do not wait on removals.
    with budget_lock(storage, f"{study_name}:models"):
        models = stored_models(storage, study_id)
        kept = rank(models, keep_best)
        if kept != kept_models(storage.get_study_user_attrs(study_id)):
            storage.set_study_user_attr(study_id, record.KEPT_MODELS.name, [k.to_json() for k in kept])
    # Removed only once the new list is committed (on PostgreSQL the lock's transaction commits as
    # the block ends): a reader never sees a kept list naming a file already gone. Outside the lock
    # is safe: a trial out of this top K is out of every later one, and a reconcile that ran earlier
    # saw fewer trials, so it keeps a superset of what it could remove.
    from sweep.objectstore import present

    keep_ids = {k.artifact_id for k in kept}
    stored = present(store, (m.artifact_id for m in models if m.state in _FINISHED and m.artifact_id not in keep_ids))
    removed = []
    for m in models:
        if m.state in _FINISHED and m.artifact_id not in keep_ids and m.artifact_id in stored:
            # Idempotent: most were removed by an earlier reconcile (a failed unlink costs a syscall).
            with contextlib.suppress(Exception):
                store.remove(m.artifact_id)
                removed.append(m.number)
    return Reconciled(kept=kept, removed=tuple(removed))


def stored_models(storage: optuna.storages.BaseStorage, study_id: int) -> list[StoredModel]:
    """Every trial of the study with a ``final_model`` attribute, read fresh from the database."""
    backend = getattr(storage, "_backend", storage)
    engine = getattr(backend, "autocommit_engine", None) or getattr(backend, "engine", None)
    if engine is None:  # in-memory storage (tests, notebooks)
        return [
            m
            for t in storage.get_all_trials(study_id, deepcopy=False)
            if (m := _model(t.number, t.state, t.value if t.values else None, record.final_model(t))) is not None
        ]
    with read_connection(backend, engine) as conn:  # under reconcile's lock: in its transaction
        rows = conn.execute(_models_query(), {"study_id": study_id, "key": record.FINAL_MODEL.name}).all()
    out = []
    for number, state, value, value_json in rows:
        m = _model(int(number), state, value, json.loads(value_json) if value_json else None)
        if m is not None:
            out.append(m)
    return out


def _model(number: int, state: TrialState, value: float | None, attr: Any) -> StoredModel | None:
    if not isinstance(attr, Mapping) or not attr.get("artifact_id"):
        return None
    return StoredModel(number, state, value, str(attr["artifact_id"]), attr.get("path"))


def _models_query() -> Any:
    from optuna.storages._rdb import models

    trials = models.TrialModel.__table__
    attrs = models.TrialUserAttributeModel.__table__
    values = models.TrialValueModel.__table__
    return (
        sqlalchemy.select(trials.c.number, trials.c.state, values.c.value, attrs.c.value_json)
        .select_from(
            trials.join(attrs, attrs.c.trial_id == trials.c.trial_id).outerjoin(
                values, (values.c.trial_id == trials.c.trial_id) & (values.c.objective == 0)
            )
        )
        .where(trials.c.study_id == sqlalchemy.bindparam("study_id"), attrs.c.key == sqlalchemy.bindparam("key"))
    )
