"""The incremental TPE proposes exactly what Optuna's TPE proposes, trial by trial."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from sweep.search import _FeasibilityAwareTPE
from sweep.tpe import IncrementalTPESampler

SPACE: dict[str, Any] = {
    "lr": FloatDistribution(1e-5, 1e-1, log=True),
    "batch_size": CategoricalDistribution([32, 64, 128, 256]),
    "frozen_layers": IntDistribution(0, 5),
    "aug_strength": FloatDistribution(0.0, 1.0, step=0.25),
}
EXTRA = FloatDistribution(0.0, 1.0)  # a conditional parameter: only some trials have it


class _StockFeasibilityAwareTPE(_FeasibilityAwareTPE):
    """sweep's feasibility-aware view on top of Optuna's own (non-incremental) TPE."""

    _sample = optuna.samplers.TPESampler._sample


MIXES: dict[str, Any] = {  # (kind told every `period`-th trial, period, kinds drawn otherwise); see _outcome
    "all": None,
    "pruned": (4, 12, [0, 1, 1, 1, 2, 2, 3]),
    "infeasible": (1, 30, [2, 2, 2, 2, 2, 3]),
}


def _outcome(study: optuna.Study, trial: optuna.trial.Trial, i: int, rng: Any, mix: str) -> None:
    """Tell a mix of everything TPE sorts: ties, inf, pruned with/without/NaN steps, infeasible FAIL.

    With few complete trials ("pruned", "infeasible"), TPE's "good" group reaches into the pruned
    and the infeasible trials, so their orderings matter too.
    """
    if MIXES[mix] is None:
        kind = i % 7
    else:
        every, period, kinds = MIXES[mix]
        kind = every if i % period == 0 else int(rng.choice(kinds))
    value = round(trial.params["lr"] * 100 + trial.params["frozen_layers"], 1)  # rounding makes ties
    if kind == 0:
        study.tell(trial, state=TrialState.PRUNED)  # no intermediate values
    elif kind == 1:
        for step in range(1 + int(rng.integers(3))):
            trial.report(math.nan if rng.random() < 0.3 else value + step, step)
        study.tell(trial, state=TrialState.PRUNED)
    elif kind == 2:
        trial.set_constraint("oom", 1.0 + int(rng.integers(2)))  # as the worker does on CUDA OOM
        study.tell(trial, state=TrialState.FAIL)
    elif kind == 3:
        study.tell(trial, state=TrialState.FAIL)  # a plain failure: TPE never sees it
    elif kind == 4 and rng.random() < 0.2:
        study.tell(trial, math.inf)
    else:
        study.tell(trial, value)


def _run(
    sampler: optuna.samplers.BaseSampler, direction: str, n: int, conditional: bool, mix: str = "all"
) -> list[dict]:
    """Ask ``n`` trials; each is told two asks later, so two trials are always running (other workers)."""
    import numpy as np

    study = optuna.create_study(direction=direction, sampler=sampler)
    rng = np.random.default_rng(0)
    proposals, pending = [], []
    for i in range(n):
        trial = study.ask(SPACE)
        if conditional and trial.params["batch_size"] >= 128:
            trial.suggest_float("extra", EXTRA.low, EXTRA.high)
        proposals.append(dict(trial.params))
        pending.append((i, trial))
        if len(pending) > 2:
            _outcome(study, pending[0][1], pending[0][0], rng, mix)
            pending.pop(0)
    return proposals


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
@pytest.mark.parametrize("multivariate", [True, False])
@pytest.mark.parametrize("constant_liar", [True, False])
@pytest.mark.parametrize("mix", list(MIXES))
def test_same_proposals_as_optuna_tpe(direction: str, multivariate: bool, constant_liar: bool, mix: str) -> None:
    kw = {"seed": 3, "n_startup_trials": 5, "multivariate": multivariate, "constant_liar": constant_liar}
    ours = _run(_FeasibilityAwareTPE(**kw), direction, 90, conditional=True, mix=mix)
    stock = _run(_StockFeasibilityAwareTPE(**kw), direction, 90, conditional=True, mix=mix)
    assert ours == stock
    assert len({p["lr"] for p in ours}) > 80  # TPE was really sampling, not repeating one point


def test_plain_incremental_matches_plain_tpe_with_group() -> None:
    kw = {"seed": 1, "n_startup_trials": 4, "multivariate": True, "group": True}
    ours = _run(IncrementalTPESampler(**kw), "maximize", 60, conditional=True)
    stock = _run(optuna.samplers.TPESampler(**kw), "maximize", 60, conditional=True)
    assert ours == stock


def test_incremental_path_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"stock": 0}
    original = optuna.samplers.TPESampler._sample

    def counting(self: Any, *args: Any) -> Any:
        calls["stock"] += 1
        return original(self, *args)

    monkeypatch.setattr(optuna.samplers.TPESampler, "_sample", counting)
    for liar in (True, False):
        _run(IncrementalTPESampler(seed=0, n_startup_trials=3, constant_liar=liar), "maximize", 20, conditional=True)
    assert calls["stock"] == 0
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=IncrementalTPESampler(n_startup_trials=3))
    for _ in range(6):
        trial = study.ask(SPACE)
        study.tell(trial, (trial.params["lr"], trial.params["frozen_layers"]))
    assert calls["stock"] > 0  # several objectives: Optuna's own path


def test_new_study_resets_columns() -> None:
    sampler = IncrementalTPESampler(seed=0, n_startup_trials=2)
    _run(sampler, "maximize", 15, conditional=False)
    first = sampler._columns
    _run(sampler, "maximize", 15, conditional=False)
    assert sampler._columns is not first
