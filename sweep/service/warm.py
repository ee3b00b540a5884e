"""Prior evidence for a study: ``sweep enqueue`` (configs a user believes in) and ``sweep create
--warm-start OLD`` (an earlier study's finished trials, for TPE to start from).

Enqueued configs are ordinary trials of the budget: a worker takes them before sampling new ones.
Warm-start trials are copies of OLD's finished trials, restricted to the params both studies search
and to values inside the new study's space; they raise the new study's budget by their number, so
the new study still runs ``n_trials`` trials of its own. They carry ``warm_start_from`` ("OLD#12"),
which the report shows, and have no kept model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from sweep import control, record
from sweep.search import distributions
from sweep.service.common import ServiceError, load_spec_of, quiet_optuna, resolve_study_name
from sweep.spec import SpecError, StudySpec, check_param_value, parse_override
from sweep.storage import budget_counts, budget_lock, open_storage


@dataclass(frozen=True)
class EnqueueResult:
    """What ``enqueue_trial`` queued."""

    study: str
    params: dict[str, Any]  # the given params; the others are sampled when a worker takes the trial
    queued: int  # trials now waiting (this one included)
    n_trials: int  # the study's budget


def parse_params(texts: Sequence[str], spec: StudySpec) -> dict[str, Any]:
    """``--param name=value`` (value as TOML) → {name: value}, each checked against ``spec``'s space."""
    out: dict[str, Any] = {}
    for text in texts:
        try:
            path, value = parse_override(text)
        except SpecError as exc:
            raise SpecError("--param", text, "expected NAME=VALUE, e.g. --param lr=3e-4") from exc
        name = ".".join(path)
        if name in out:
            raise SpecError(f"--param {name}", value, "given twice")
        out[name] = check_param_value(spec, name, value, f"--param {name}")
    if not out:
        raise SpecError("--param", None, "give at least one, e.g. --param lr=3e-4 --param frozen_layers=2")
    return out


def enqueue_trial(storage_url: str, name: str | None, params: Sequence[str]) -> EnqueueResult:
    """Queue one config of the study's space; a worker runs it before sampling new ones.

    It counts against the budget: refused (one line) when the budget is spent, so budgets stay exact.
    """
    quiet_optuna()
    storage = open_storage(storage_url, create=False)
    study_name = resolve_study_name(storage, name, storage_url)
    spec = load_spec_of(storage, study_name)
    given = parse_params(params, spec)
    study = optuna.load_study(study_name=study_name, storage=storage)
    with budget_lock(storage, study_name):  # the gate decides under it: the budget check and the queue agree
        attrs = storage.get_study_user_attrs(study._study_id)
        budget = control.budget(attrs, spec.n_trials)
        spent, waiting, _running = budget_counts(storage, study._study_id, record.FAILED_TRIAL.name)
        if spent >= budget:
            raise ServiceError(
                f"study {study_name!r}: its budget of {budget} trials is spent ({spent} finished, running or "
                f"queued); raise it first: sweep extend {study_name} --n-trials {spent + 1}"
            )
        study.enqueue_trial(given, user_attrs={record.ENQUEUED.name: True}, skip_if_exists=False)
    return EnqueueResult(study_name, given, waiting + 1, budget)


def copy_finished_trials(source: optuna.Study, target: optuna.Study, spec: StudySpec) -> int:
    """Add ``source``'s COMPLETE and PRUNED trials to ``target`` where ``spec``'s space allows; return how many.

    A trial is copied with the params both spaces search and whose value ``spec`` accepts; a trial
    with none of them, or with a value outside the new space, is left out (TPE would reject it).
    """
    space = distributions(spec)
    copies = []
    for t in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        params = {k: v for k, v in t.params.items() if k in space}
        if not params or not _inside(spec, params) or (t.state == TrialState.COMPLETE and t.value is None):
            continue
        origin = {record.WARM_START_FROM.name: f"{source.study_name}#{t.number}"}
        copies.append(
            optuna.trial.create_trial(
                state=t.state,
                value=t.value if t.state == TrialState.COMPLETE else None,
                params=params,
                distributions={k: space[k] for k in params},
                intermediate_values=dict(t.intermediate_values),
                user_attrs={**_kept_attrs(t.user_attrs), **origin},
            )
        )
    target.add_trials(copies)
    return len(copies)


def _inside(spec: StudySpec, params: Mapping[str, Any]) -> bool:
    try:
        for k, v in params.items():
            check_param_value(spec, k, v, k)
    except SpecError:
        return False
    return True


def _kept_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What a copy keeps of the original's record: its measurements, not where it ran or its files."""
    keep = (record.TEST_ACCURACY, record.EPOCHS_RUN, record.EPOCH_SECONDS, record.FAIL_REASON)
    return {a.name: attrs[a.name] for a in keep if a.name in attrs}


def warm_start(storage: Any, target: optuna.Study, spec: StudySpec, source: str) -> int:
    """Copy study ``source``'s finished trials into the new study ``target`` and raise its budget by as
    many, so that it still runs ``spec.n_trials`` trials of its own; return how many were copied."""
    n = copy_finished_trials(optuna.load_study(study_name=source, storage=storage), target, spec)
    target.set_user_attr(record.N_TRIALS.name, spec.n_trials + n)
    return n
