"""The seed-noise benchmark: which configs it retrains, its resumable record, the analysis, the retrain."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch

from sweep.spec import parse_spec
from sweep_bench.noise import (
    SEED_STRIDE,
    Retrain,
    analyse,
    format_analysis,
    load_runs,
    noise_configs,
    retrain_curve,
    run_noise,
    stored_configs,
)
from sweep_bench.sweep import Row, Table

EPOCHS = 3
LRS = [round(0.01 * (i + 1), 2) for i in range(12)]  # config i has lr LRS[i]
SPEC = parse_spec(
    {
        "name": "grid",
        "n_trials": 12,
        "epochs": EPOCHS,
        "data": {"name": "synthetic"},
        "model": {"weights": "none"},
        "sampler": {"type": "grid"},
        "pruner": {"type": "none"},
        "params": {"lr": {"type": "categorical", "choices": LRS}},
    }
)


def table(curves: list[tuple[float, ...]]) -> Table:
    """Config i has lr LRS[i] and curve ``curves[i]``."""
    grid = {"lr": LRS[: len(curves)]}
    empty = Table("grid", SPEC, grid, {}, val_images=1000)
    rows = {empty.key({"lr": LRS[i]}): Row({"lr": LRS[i]}, c, None) for i, c in enumerate(curves)}
    return Table("grid", SPEC, grid, rows, val_images=1000)


# Finals descend with the index; configs 1 and 2 start slowest of the best quarter (0-2).
CURVES = [(0.80, 0.85, 0.90), (0.50, 0.70, 0.89), (0.55, 0.70, 0.88)] + [
    (0.6 - 0.04 * i, 0.65 - 0.04 * i, 0.87 - 0.05 * i) for i in range(9)
]


def test_the_configs_are_the_best_a_spread_and_the_slow_starters_of_the_best_quarter() -> None:
    t = table(CURVES)
    first = noise_configs(t, top=1, spread=3)
    assert [(c.group, LRS.index(c.params["lr"])) for c in first] == [
        ("top", 0),
        ("spread", 1),
        ("spread", 6),
        ("spread", 11),
    ]
    more = noise_configs(t, top=1, spread=3, slow=2)
    assert more[:4] == first  # adding the slow group later keeps what was already trained
    assert [(c.group, LRS.index(c.params["lr"])) for c in more[4:]] == [("slow", 2)]  # 1 is taken; the quarter is 0-2


def test_runs_are_appended_with_fresh_seeds_and_a_rerun_continues(tmp_path: Path) -> None:
    t = table(CURVES)
    configs = noise_configs(t, top=2, spread=0)
    out, calls = tmp_path / "runs.jsonl", []

    def train(params: dict[str, Any], seed: int) -> Retrain:
        calls.append((LRS.index(params["lr"]), seed))
        if len(calls) == 3:
            raise KeyboardInterrupt  # stopped during the third run: nothing of it is written
        return Retrain([0.5, 0.6]) if len(calls) == 1 else Retrain([0.3], diverged=True)

    with pytest.raises(KeyboardInterrupt):
        run_noise(configs, out, train, seeds=2, table_seed=lambda p: LRS.index(p["lr"]) * 10, log=lambda _: None)
    assert calls == [(0, SEED_STRIDE), (0, 2 * SEED_STRIDE), (1, 10 + SEED_STRIDE)]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["curve"], r["diverged"]) for r in lines] == [([0.5, 0.6], False), ([0.3], True)]
    with out.open("a") as f:
        f.write('{"params": {"lr": 0.')  # a crash mid-write: that run is trained again
    calls.clear()
    n = run_noise(configs, out, lambda p, s: calls.append((LRS.index(p["lr"]), s)) or Retrain([0.4]), seeds=2,
                  table_seed=lambda p: LRS.index(p["lr"]) * 10, log=lambda _: None)  # fmt: skip
    assert n == 2 and calls == [(1, 10 + SEED_STRIDE), (1, 10 + 2 * SEED_STRIDE)]
    assert len(load_runs(out)) == 4
    assert [LRS.index(c.params["lr"]) for c in stored_configs(t, out)] == [0, 1]
    assert all(c.group == "top" for c in stored_configs(t, out))


def key(i: int, seed: int) -> str:
    return json.dumps({"params": {"lr": LRS[i]}, "seed": seed}, sort_keys=True)


def test_the_analysis_pools_seeds_by_degrees_of_freedom_and_counts_runs_below_each_bar() -> None:
    t = table(CURVES)
    configs = noise_configs(t, top=1, spread=0, slow=1)  # config 0 (top) and config 1 (slow)
    assert [c.group for c in configs] == ["top", "slow"]
    runs = {key(0, 1): [0.70, 0.86], key(0, 2): [0.76], key(1, 1): [0.40, 0.74], key(1, 2): [0.54, 0.70]}
    result = analyse(t, configs, runs, reduction_factor=3)
    e1, e2 = result["per_epoch"]
    # Epoch 1, retrains alone: config 0 (0.70, 0.76), config 1 (0.40, 0.54), one degree of freedom each.
    v0, v1 = statistics.variance([0.70, 0.76]), statistics.variance([0.40, 0.54])
    assert e1["seed_sd"] == pytest.approx(math.sqrt((v0 + v1) / 2), abs=1e-4)
    w0, w1 = statistics.variance([0.80, 0.70, 0.76]), statistics.variance([0.50, 0.40, 0.54])
    assert e1["seed_sd_with_table"] == pytest.approx(math.sqrt((w0 + w1) / 2), abs=1e-4)
    assert e1["max_spread"] == pytest.approx(0.14, abs=1e-4) and (e1["configs"], e1["runs"]) == (2, 6)
    # Successive halving keeps floor(12 / 3) = 4 at epoch 1: 0.80, 0.60, 0.56, 0.55 → bar 0.55; auto's
    # is one binomial s.e. at the bar lower (0.534).
    se = math.sqrt(0.55 * 0.45 / 1000)
    assert e1["bar"] == pytest.approx(0.55) and e1["binomial_se_at_bar"] == pytest.approx(se, abs=1e-4)
    assert e1["groups"]["top"] == {"runs": 3, "below_bar": 0, "below_auto_bar": 0}
    assert e1["groups"]["slow"] == {"runs": 3, "below_bar": 3, "below_auto_bar": 2}  # 0.54 is inside the margin
    # Epoch 2: config 0 has one retrain value (0.86), so only the with-table figure counts it, with
    # one degree of freedom against config 1's two.
    assert e2["seed_sd"] == pytest.approx(statistics.stdev([0.74, 0.70]), abs=1e-4)
    x0, x1 = statistics.variance([0.85, 0.86]), statistics.variance([0.70, 0.74, 0.70])
    assert e2["seed_sd_with_table"] == pytest.approx(math.sqrt((x0 + 2 * x1) / 3), abs=1e-4)
    assert e2["bar"] == pytest.approx(0.65) and e2["groups"]["slow"]["below_bar"] == 0
    text = format_analysis(result)
    assert "slow 3/2 of 3" in text and len(text.splitlines()) == 4


def test_a_retrain_with_the_tables_seed_repeats_the_first_epochs_of_the_full_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stopping early must not change the values: the first epochs of a longer wsd schedule."""
    from sweep.data import load_data
    from sweep.objective import train_config
    from sweep.train import fit

    spec = parse_spec(
        {
            "name": "tiny",
            "epochs": 3,
            "data": {"name": "synthetic", "subset": 96, "resolution": 8},
            "model": {"weights": "none"},
            "train": {"resolution": 8, "schedule": "wsd", "ema_halflife": 0.5, "rung_value": "ema"},
        }
    )
    data = load_data("synthetic", "", val_fraction=0.25, seed=0, resolution=8, subset=96)
    params = {"lr": 2e-3, "batch_size": 16, "frozen_layers": 0, "aug_strength": 0.0}
    full = fit(train_config(spec, {**spec.fixed_params(), **params}, num_classes=data.num_classes, seed=5), data, "cpu")
    again = retrain_curve(spec, params, data, "cpu", seed=5, epochs=2)
    assert again == Retrain([r.val_accuracy for r in full.history[:2]])
    other = retrain_curve(spec, params, data, "cpu", seed=6, epochs=1)
    assert len(other.curve) == 1 and not other.diverged

    import sweep.train

    monkeypatch.setattr(sweep.train, "normalize", lambda x: torch.full(x.shape, float("nan")))
    assert retrain_curve(spec, params, data, "cpu", seed=5, epochs=3) == Retrain([], diverged=True)  # not a crash
