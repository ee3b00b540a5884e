"""The benchmarks' synthetic search space and studies: one owner for what every bench suggests.

The storage, scale and report benchmarks time the bookkeeping and the drawing around trials, not
training, so they all use this one search space, shaped like a real fine-tuning study (lr-freeze's
four hyperparameters and ranges, batch sizes one step smaller): its spec ``[params]``, the Optuna distributions the
spec gives (``sweep.search.distributions``), a random draw from it, and in-memory studies of realistic
synthetic trials (learning curves, pruned / failed / running, the user attrs a worker writes) for the
report benchmark and the report tests.
"""

from __future__ import annotations

import math
import random
from typing import Any

import optuna
from optuna.trial import TrialState

from sweep import record
from sweep.search import distributions, suggest_params
from sweep.spec import StudySpec, parse_spec

EPOCHS = 12
BATCH_SIZES = [32, 64, 128, 256]
PARAMS: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "batch_size": {"type": "categorical", "choices": BATCH_SIZES},
    "frozen_layers": {"type": "int", "low": 0, "high": 5},
    "aug_strength": {"type": "float", "low": 0.0, "high": 1.0},
}
FAIL_REASONS = (record.Reason.OOM, record.Reason.DIVERGED, record.Reason.ERROR)


def synthetic_spec(
    name: str, n_trials: int = 10_000_000, *, epochs: int = EPOCHS, sampler: str = "random", pruner: str = "none"
) -> StudySpec:
    """A study over the synthetic space (synthetic data, so no file is ever needed)."""
    return parse_spec(
        {
            "name": name,
            "n_trials": n_trials,
            "epochs": epochs,
            "data": {"name": "synthetic"},
            "sampler": {"type": sampler},
            "pruner": {"type": pruner},
            "params": PARAMS,
        }
    )


SPEC = synthetic_spec("synthetic")
DISTRIBUTIONS = distributions(SPEC)


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """The four suggests a worker makes for one trial of the synthetic space."""
    return suggest_params(trial, SPEC)


def random_params(rng: random.Random) -> dict[str, Any]:
    """One point of the space drawn with ``rng`` (lr log-uniform), without a sampler."""
    return {
        "lr": 10 ** rng.uniform(-5, -1),
        "batch_size": rng.choice(BATCH_SIZES),
        "frozen_layers": rng.randint(0, 5),
        "aug_strength": rng.random(),
    }


def _final_accuracy(rng: random.Random, p: dict[str, Any]) -> float:
    lr_pen = 0.06 * (math.log10(p["lr"]) + 3.3) ** 2
    acc = 0.93 - lr_pen - 0.025 * p["frozen_layers"] - 0.05 * (p["aug_strength"] - 0.4) ** 2
    acc += 0.01 * math.log2(p["batch_size"] / 32) * (1 if p["lr"] > 1e-3 else -1) + rng.gauss(0, 0.01)
    return min(max(acc, 0.1), 0.99)


def _random_state(rng: random.Random) -> TrialState:
    u = rng.random()
    return (
        TrialState.PRUNED
        if u < 0.30
        else TrialState.FAIL
        if u < 0.33
        else TrialState.RUNNING
        if u < 0.34
        else TrialState.COMPLETE
    )


def synthetic_trial(
    rng: random.Random, number: int, *, epochs: int = EPOCHS, state: TrialState | None = None
) -> optuna.trial.FrozenTrial:
    """One realistic fine-tuning trial (state drawn at random unless given)."""
    state = _random_state(rng) if state is None else state
    params = random_params(rng)
    final = _final_accuracy(rng, params)
    ran = {
        TrialState.PRUNED: rng.randint(1, epochs - 1),
        TrialState.FAIL: rng.randint(0, epochs - 1),
        TrialState.RUNNING: rng.randint(0, epochs - 1),
    }.get(state, epochs)
    speed = 3.0 * (1 - 0.12 * params["frozen_layers"]) * (0.7 + 0.3 * 128 / params["batch_size"])
    epoch_seconds = [round(speed * rng.uniform(0.9, 1.1), 3) for _ in range(ran)]
    curve = {e: round(final * (1 - math.exp(-e / 2.5)) + rng.gauss(0, 0.008), 5) for e in range(1, ran + 1)}
    attrs: dict[str, Any] = {
        record.EPOCHS_RUN.name: ran,
        record.EPOCH_SECONDS.name: epoch_seconds,
        record.HOST.name: f"gpu-node-{number % 4:02d}",
        record.PID.name: 1000 + number,
        record.DEVICE.name: f"cuda:{number % 2}",
        record.GPU_NAME.name: "NVIDIA H100",
    }
    value = None
    if state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        attrs[record.DURATION_S.name] = round(sum(epoch_seconds) + rng.uniform(2, 6), 3)
    if state == TrialState.COMPLETE:
        value = curve[epochs]
        attrs[record.TEST_ACCURACY.name] = round(value - abs(rng.gauss(0.005, 0.005)), 5)
    elif state == TrialState.PRUNED:
        value = curve[ran]
    elif state == TrialState.FAIL:
        reason = rng.choice(FAIL_REASONS)
        attrs[record.FAIL_REASON.name] = reason.value
        attrs[record.TRACEBACK.name] = f"Traceback (most recent call last):\n  ...\nRuntimeError: {reason}\n"
    return optuna.trial.create_trial(
        state=state,
        value=value,
        params=params,
        distributions=DISTRIBUTIONS,
        user_attrs=attrs,
        intermediate_values=curve,
    )


def stored_spec(name: str, n_trials: int, epochs: int = EPOCHS) -> dict[str, Any]:
    """The resolved spec ``sweep create`` would store for a TPE + Hyperband study of this space.

    ``name`` is stored as given, unchecked: the report tests name studies with markup on purpose.
    """
    spec = synthetic_spec("synthetic", n_trials, epochs=epochs, sampler="tpe", pruner="hyperband")
    return spec.to_dict() | {"name": name}


def synthetic_study(n_trials: int, *, name: str = "synthetic-resnet", seed: int = 0) -> optuna.Study:
    """An in-memory study of ``n_trials`` synthetic trials (maximize validation accuracy)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, direction="maximize")
    study.set_user_attr(record.SPEC.name, stored_spec(name, n_trials))
    rng = random.Random(seed)
    study.add_trials([synthetic_trial(rng, i) for i in range(n_trials)])
    return study
