"""The incremental TPE proposes exactly what Optuna's TPE proposes, trial by trial."""

from __future__ import annotations

import math
import pickle
import sys
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from sweep.search import FeasibilityAwareTPE
from sweep.tpe import IncrementalTPESampler

TPE = optuna.samplers.TPESampler

SPACE: dict[str, Any] = {
    "lr": FloatDistribution(1e-5, 1e-1, log=True),
    "batch_size": CategoricalDistribution([32, 64, 128, 256]),
    "frozen_layers": IntDistribution(0, 5),
    "aug_strength": FloatDistribution(0.0, 1.0, step=0.25),
}
EXTRA = FloatDistribution(0.0, 1.0)  # a conditional parameter: only some trials have it


class _StockFeasibilityAwareTPE(FeasibilityAwareTPE):
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
    ours = _run(FeasibilityAwareTPE(**kw), direction, 90, conditional=True, mix=mix)
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


def test_sampler_reused_on_a_second_study_matches() -> None:
    """Columns belong to one study: a sampler moved to another study (same trial numbers) starts afresh."""
    ours, stock = (
        IncrementalTPESampler(seed=0, n_startup_trials=2),
        optuna.samplers.TPESampler(seed=0, n_startup_trials=2),
    )
    for direction in ("maximize", "minimize"):
        assert _run(ours, direction, 25, conditional=False) == _run(stock, direction, 25, conditional=False)


def test_no_startup_trials_samples_from_the_prior_like_tpe() -> None:
    for kw in ({"constant_liar": True}, {"constant_liar": False}):
        ours = _run(IncrementalTPESampler(seed=2, n_startup_trials=0, **kw), "maximize", 12, conditional=True)
        stock = _run(optuna.samplers.TPESampler(seed=2, n_startup_trials=0, **kw), "maximize", 12, conditional=True)
        assert ours == stock


def test_values_tpe_rejects() -> None:
    """A stored value outside today's choices: skipped like TPE where the trial lacks another param,
    TPE's own error where it would be used."""
    space = {"batch_size": CategoricalDistribution([32, 64]), "lr": FloatDistribution(1e-5, 1e-1, log=True)}
    old = CategoricalDistribution([32, 64, 512])

    def study_with(trials: list[FrozenTrial], sampler: optuna.samplers.BaseSampler) -> optuna.Study:
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.add_trials(trials)
        return study

    base = [
        optuna.trial.create_trial(params={"batch_size": b, "lr": 10.0**-k}, distributions=space, value=float(k))
        for k, b in zip(range(1, 5), [32, 64, 32, 64], strict=True)
    ]
    lacking = optuna.trial.create_trial(params={"batch_size": 512}, distributions={"batch_size": old}, value=9.0)
    full = optuna.trial.create_trial(
        params={"batch_size": 512, "lr": 0.01}, distributions={"batch_size": old, "lr": space["lr"]}, value=9.0
    )

    def sample(trials: list[FrozenTrial], sampler: TPE) -> dict[str, Any]:
        # A two-parameter space straight to _sample: where a trial lacking one of them is skipped.
        study = study_with(trials, sampler)
        trial = study._storage.get_trial(study.ask()._trial_id)
        return sampler._sample(study, trial, space)

    kw = {"seed": 0, "n_startup_trials": 2}
    ours = sample([*base, lacking], IncrementalTPESampler(**kw))
    assert ours == sample([*base, lacking], optuna.samplers.TPESampler(**kw))
    for sampler in (IncrementalTPESampler(**kw), optuna.samplers.TPESampler(**kw)):
        with pytest.raises(ValueError, match="512"):
            sample([*base, full], sampler)


def test_threads_share_one_sampler() -> None:
    """study.optimize(n_jobs=N) samples from N threads with one sampler: no trial may fail for it."""
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible to expose races
    try:
        study = optuna.create_study(sampler=IncrementalTPESampler(seed=0, n_startup_trials=5))
        study.optimize(lambda t: t.suggest_float("x", -3, 3) ** 2 + t.suggest_int("k", 0, 4), n_trials=300, n_jobs=8)
    finally:
        sys.setswitchinterval(switch)
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 300


def test_pickled_sampler_leaves_its_columns_behind() -> None:
    sampler = IncrementalTPESampler(seed=0, n_startup_trials=2)
    _run(sampler, "maximize", 30, conditional=False)
    assert sampler._columns is not None
    copy = pickle.loads(pickle.dumps(sampler))
    assert copy._columns is None
    _run(copy, "maximize", 10, conditional=False)  # and it still samples
