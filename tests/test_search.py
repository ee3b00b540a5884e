"""Sampler, pruner and suggestions built from the spec."""

from __future__ import annotations

import optuna
import pytest

from sweep.search import build_pruner, build_sampler, distributions, suggest_params
from sweep.spec import parse_spec

SPACE = {
    "lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "batch_size": {"type": "categorical", "choices": [64, 128]},
    "frozen_layers": {"type": "int", "low": 0, "high": 5},
    "aug_strength": {"type": "float", "low": 0.0, "high": 1.0},
}


@pytest.mark.parametrize(
    ("pruner", "cls"),
    [
        ("median", optuna.pruners.MedianPruner),
        ("successive-halving", optuna.pruners.SuccessiveHalvingPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("none", optuna.pruners.NopPruner),
    ],
)
def test_pruners(pruner: str, cls: type) -> None:
    spec = parse_spec({"name": "s", "epochs": 9, "pruner": {"type": pruner}, "params": SPACE})
    assert isinstance(build_pruner(spec), cls)


def test_hyperband_max_resource_is_epochs() -> None:
    spec = parse_spec({"name": "s", "epochs": 9, "pruner": {"type": "hyperband"}})
    pruner = build_pruner(spec)
    assert pruner._max_resource == 9 and pruner._min_resource == 1


def test_sampler_args_pass_through() -> None:
    spec = parse_spec({"name": "s", "sampler": {"type": "tpe", "n_startup_trials": 3}})
    sampler = build_sampler(spec)
    assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._n_startup_trials == 3


def test_suggestions_stay_in_the_space() -> None:
    spec = parse_spec({"name": "s", "sampler": {"type": "random"}, "params": SPACE, "train": {"stem": "cifar"}})
    study = optuna.create_study(sampler=build_sampler(spec), direction="maximize")
    for _ in range(20):
        trial = study.ask()
        p = suggest_params(trial, spec)
        assert 1e-5 <= p["lr"] <= 1e-1 and p["batch_size"] in (64, 128)
        assert 0 <= p["frozen_layers"] <= 5 and isinstance(p["frozen_layers"], int)
        assert p["stem"] == "cifar" and p["weight_decay"] == 0.05  # fixed, from [train]
        study.tell(trial, 0.5)
    assert set(study.trials[0].params) == set(SPACE)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {
            "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
            "resolution": {"type": "int", "low": 32, "high": 64, "step": 16},
            "stem": {"type": "categorical", "choices": ["cifar", "imagenet"]},
            "weight_decay": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
        },
    ],
)
def test_distributions_are_what_suggest_params_asks_for(extra: dict) -> None:
    spec = parse_spec({"name": "s", "params": SPACE | extra})
    study = optuna.create_study()
    trial = study.ask()
    suggest_params(trial, spec)
    assert distributions(spec) == trial.distributions
    assert list(distributions(spec)) == list(SPACE | extra)


def test_grid_sampler_covers_grid() -> None:
    spec = parse_spec(
        {
            "name": "g",
            "n_trials": 4,
            "sampler": {"type": "grid"},
            "params": {
                "batch_size": {"type": "categorical", "choices": [8, 16]},
                "frozen_layers": {"type": "int", "low": 0, "high": 1},
            },
        }
    )
    study = optuna.create_study(sampler=build_sampler(spec), direction="maximize")
    seen = set()
    for _ in range(4):
        trial = study.ask()
        p = suggest_params(trial, spec)
        seen.add((p["batch_size"], p["frozen_layers"]))
        study.tell(trial, 0.1)
    assert seen == {(8, 0), (8, 1), (16, 0), (16, 1)}


def test_tpe_learns_to_avoid_oom_region() -> None:
    # Every trial with batch_size 512 ran out of memory (FAIL + constraint); the others completed.
    spec = parse_spec(
        {
            "name": "s",
            "sampler": {"type": "tpe", "n_startup_trials": 5},
            "params": {
                "batch_size": {"type": "categorical", "choices": [64, 128, 256, 512]},
                "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            },
        }
    )

    def run(sampler: optuna.samplers.BaseSampler) -> int:
        study = optuna.create_study(sampler=sampler, direction="maximize")
        for i in range(40):
            trial = study.ask()
            p = suggest_params(trial, spec)
            if p["batch_size"] == 512:
                trial.set_constraint("oom", 1.0)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                trial.set_constraint("oom", 0.0)
                study.tell(trial, 0.5 + 0.01 * (i % 3))
        return sum(1 for t in study.trials[20:] if t.params["batch_size"] == 512)

    aware = sum(run(build_sampler(spec)) for _ in range(3))
    assert isinstance(build_sampler(spec), optuna.samplers.TPESampler)
    plain = sum(run(optuna.samplers.TPESampler(n_startup_trials=5)) for _ in range(3))
    # Blind to FAIL trials, plain TPE keeps proposing 512 (here: 57-60 of 60); ours mostly stops (9 of 60).
    assert aware < plain / 2, (aware, plain)
