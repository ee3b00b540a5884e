"""The sweep replay bench on a synthetic learning-curve table (optuna only: no torch, no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

import sweep_bench.sweep
from sweep import record
from sweep.search import grid_space
from sweep.service import ServiceError
from sweep.spec import load_spec, parse_spec
from sweep_bench.sweep import (
    TOLERANCE,
    default_methods,
    load_table,
    replay,
    run_replays,
    run_sweep_bench,
    spearman,
)

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 6
LRS = [1e-3, 3e-3, 1e-2, 3e-2]
BATCHES = [32, 64, 128]
RAW_SPEC: dict[str, Any] = {
    "name": "table-synth",
    "n_trials": 108,
    "epochs": EPOCHS,
    "data": {"name": "synthetic", "subset": 200},
    "model": {"weights": "none"},
    "sampler": {"type": "grid"},
    "pruner": {"type": "none"},
    "params": {
        "lr": {"type": "categorical", "choices": LRS},
        "batch_size": {"type": "categorical", "choices": BATCHES},
        "frozen_layers": {"type": "int", "low": 0, "high": 4, "step": 2},
        "aug_strength": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.5},
    },
}
DISTS: dict[str, Any] = {
    "lr": CategoricalDistribution(LRS),
    "batch_size": CategoricalDistribution(BATCHES),
    "frozen_layers": IntDistribution(0, 4, step=2),
    "aug_strength": FloatDistribution(0.0, 1.0, step=0.5),
}


def final_accuracy(p: dict[str, Any]) -> float:
    """A known, smooth landscape: best near lr 3e-3, batch 64, nothing frozen, aug 0.5."""
    acc = 0.80 - 0.08 * (math.log10(p["lr"]) + 2.5) ** 2 - 0.03 * p["frozen_layers"]
    return acc - 0.06 * (p["aug_strength"] - 0.5) ** 2 - 0.01 * abs(math.log2(p["batch_size"] / 64))


def curve(p: dict[str, Any]) -> list[float]:
    """Validation accuracy per epoch: saturating towards the final value, faster with a larger lr."""
    tau = 0.5 + 1e-3 / p["lr"]
    final = final_accuracy(p)
    return [
        round(0.1 + (final - 0.1) * (1 - math.exp(-e / tau)) / (1 - math.exp(-EPOCHS / tau)), 6)
        for e in range(1, EPOCHS + 1)
    ]


def diverges(p: dict[str, Any]) -> bool:
    return p["lr"] == 3e-2 and p["batch_size"] == 32 and p["frozen_layers"] == 0


def make_table(url: str, *, drop: int = 0, attrs: dict[str, Any] | None = None) -> str:
    """Write the synthetic table study the way `sweep create` + grid workers would; its name."""
    spec = parse_spec(RAW_SPEC)
    study = optuna.create_study(storage=url, study_name=spec.name, direction="maximize")
    study.set_user_attr(record.SPEC.name, spec.to_dict())
    study.set_user_attr(record.SPEC_FINGERPRINT.name, spec.fingerprint())
    grid = grid_space(spec)
    trials = []
    points = [dict(zip(grid, values, strict=True)) for values in _product(list(grid.values()))]
    for p in points[drop:]:
        c = curve(p)
        if diverges(p):
            trials.append(
                optuna.trial.create_trial(
                    state=optuna.trial.TrialState.PRUNED,
                    value=c[1],
                    params=p,
                    distributions=DISTS,
                    intermediate_values={1: c[0], 2: c[1]},
                    user_attrs={"fail_reason": "diverged"},
                )
            )
            continue
        trials.append(
            optuna.trial.create_trial(
                value=c[-1],
                params=p,
                distributions=DISTS,
                intermediate_values=dict(enumerate(c, start=1)),
                user_attrs={"test_accuracy": round(c[-1] - 0.01, 6), "epoch_seconds": [1.0] * EPOCHS, **(attrs or {})},
            )
        )
    study.add_trials(trials)
    return spec.name


def _product(lists: list[list[Any]]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = [()]
    for values in lists:
        out = [prefix + (v,) for prefix in out for v in values]
    return out


@pytest.fixture(scope="module")
def table_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('table') / 'table.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    make_table(url)
    return url


@pytest.fixture(scope="module")
def result(table_url: str) -> dict[str, Any]:
    return run_replays(load_table("table-synth", table_url), seeds=2, budget_epochs=60)


def test_table_is_read_with_every_grid_point(table_url: str) -> None:
    table = load_table("table-synth", table_url)
    assert len(table.rows) == 108 and table.total_epochs == 108 * EPOCHS
    assert sum(r.diverged for r in table.rows.values()) == 3
    best = table.best()
    assert best.params == {"lr": 3e-3, "batch_size": 64, "frozen_layers": 0, "aug_strength": 0.5}
    assert best.curve[-1] == pytest.approx(final_accuracy(best.params), abs=1e-5)


def test_every_proposal_is_a_table_row(table_url: str, result: dict[str, Any]) -> None:
    table = load_table("table-synth", table_url)
    assert set(result["methods"]) == {
        "random",
        "tpe",
        "tpe+median",
        "tpe+sha",
        "tpe+hyperband",
        "tpe+median(w3)",
        "tpe+sha(min2)",
        "tpe+hyperband(min2)",
        "tpe+sha(half,rf2)",
        "tpe+hyperband(half,rf2)",
        "tpe+auto",
        "tpe+auto(lr-freeze)",
    }
    for entry in result["methods"].values():
        for run in entry["runs"]:
            assert len(run["proposals"]) == run["trials"] > 0
            for p in run["proposals"]:
                assert table.key(p) in table.rows
                assert all(p[name] in values for name, values in table.grid.items())


def test_budget_is_respected(result: dict[str, Any]) -> None:
    for entry in result["methods"].values():
        for run in entry["runs"]:
            assert run["epochs_used"] <= 60
            assert all(epochs <= 60 for epochs, _ in run["curve"])
            assert run["complete"] + run["pruned"] + run["diverged"] + run["cut"] == run["trials"]
        assert len(entry["anytime"]["mean"]) == 60


def test_pruned_methods_use_fewer_epochs_per_trial(result: dict[str, Any]) -> None:
    methods = result["methods"]
    for name in ("random", "tpe"):
        assert methods[name]["summary"]["mean_epochs_per_trial"] > EPOCHS - 1
        assert all(run["pruned"] == 0 for run in methods[name]["runs"])
    for name in ("tpe+median", "tpe+sha", "tpe+hyperband", "tpe+sha(min2)", "tpe+hyperband(min2)"):
        s = methods[name]["summary"]
        assert s["mean_epochs_per_trial"] < methods["tpe"]["summary"]["mean_epochs_per_trial"], name
        assert s["trials_mean"] > methods["tpe"]["summary"]["trials_mean"], name
        assert sum(run["pruned"] for run in methods[name]["runs"]) > 0, name


def test_figures_are_consistent(result: dict[str, Any]) -> None:
    table = result["table"]
    assert result["target_val_accuracy"] == pytest.approx(table["best_val_accuracy"] - TOLERANCE)
    for entry in result["methods"].values():
        for run in entry["runs"]:
            if run["epochs_to_target"] is not None:
                assert run["best_val_accuracy"] >= result["target_val_accuracy"]
                assert run["epochs_to_target"] <= run["epochs_used"]
            assert run["chosen_test_accuracy"] == pytest.approx(run["best_val_accuracy"] - 0.01)
            values = [v for _, v in run["curve"]]
            assert values == sorted(values) and values[-1] == run["best_val_accuracy"]
    assert result["methods"]["random"]["epochs_ratio_vs_random"] == 1.0
    for key in ("epochs_ratio_vs_random", "best_val", "chosen_test"):
        assert set(result[key]) == set(result["methods"])
    assert result["chosen_test"]["tpe"] == result["methods"]["tpe"]["summary"]["chosen_test_accuracy_mean"]
    assert len(table["configs"]) == 108 and table["validation_images"] is None and table["noise_floor"] is None


def test_target_is_the_noise_floor_when_the_table_says_its_validation_size(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'floor.db'}"
    make_table(url, attrs={"val_images": 400, "weights_sha256": "ab" * 32})
    table = load_table("table-synth", url)
    assert table.val_images == 400 and table.weights_sha256 == "ab" * 32
    p = table.best().curve[-1]
    assert table.noise_floor() == pytest.approx(math.sqrt(p * (1 - p) / 400))
    res = run_replays(table, seeds=1, budget_epochs=30)
    assert res["tolerance"] == pytest.approx(table.noise_floor(), abs=1e-6) and res["tolerance"] > TOLERANCE
    assert res["table"]["weights_sha256"] == "ab" * 32 and res["table"]["validation_images"] == 400
    assert run_replays(table, seeds=1, budget_epochs=30, tolerance=0.001)["tolerance"] == 0.001
    rho = res["table"]["epoch_spearman"]
    assert len(rho) == EPOCHS and rho[-1] == 1.0 and all(-1 <= r <= 1 for r in rho)


def test_a_table_with_cooldown_branches_is_refused_not_undercharged(table_url: str) -> None:
    import dataclasses

    table = load_table("table-synth", table_url)
    train = dataclasses.replace(table.spec.train, schedule="wsd", cooldown_epochs=0.25)
    branched = dataclasses.replace(table, spec=dataclasses.replace(table.spec, train=train))
    with pytest.raises(ServiceError, match="cannot charge"):
        run_replays(branched, seeds=1, budget_epochs=30)


def test_spearman() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # ties share their mean rank
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_replay_is_deterministic_for_a_seed(table_url: str) -> None:
    table = load_table("table-synth", table_url)
    for method in default_methods(EPOCHS):
        assert replay(table, method, 1, 40) == replay(table, method, 1, 40)
    assert replay(table, default_methods(EPOCHS)[1], 0, 40) != replay(table, default_methods(EPOCHS)[1], 1, 40)


def test_run_sweep_bench_writes_json_and_html(table_url: str, tmp_path: Path) -> None:
    from io import StringIO

    from rich.console import Console

    out = StringIO()
    path = tmp_path / "bench" / "sweep.json"
    res = run_sweep_bench(
        "table-synth",
        storage_url=table_url,
        seeds=2,
        budget_epochs=30,
        json_path=path,
        console=Console(file=out, width=200),
    )
    data = json.loads(path.read_text())
    assert data["budget_epochs"] == 30 and data["seeds"] == 2
    assert set(data["table"]) >= {"study", "grid_size", "epochs", "best_val_accuracy", "best_test_accuracy"}
    for entry in data["methods"].values():
        assert {"summary", "anytime", "runs", "epochs_ratio_vs_random"} <= set(entry)
        assert {"mean", "std", "min", "max", "n", "epochs"} <= set(entry["anytime"])
        assert len(entry["runs"]) == 2
        for run in entry["runs"]:
            assert {
                "seed",
                "epochs_used",
                "best_val_accuracy",
                "epochs_to_target",
                "chosen_params",
                "chosen_test_accuracy",
                "curve",
            } <= set(run)
    html = path.with_suffix(".html")
    assert html.is_file() and "plotly" in html.read_text()[:5000].lower()
    assert res["figures"][0] == str(html)
    assert "tpe+hyperband" in out.getvalue()


def test_default_budget_is_a_third_of_the_table(table_url: str) -> None:
    res = run_replays(load_table("table-synth", table_url), seeds=1)
    assert res["budget_epochs"] == 108 * EPOCHS // 3


def test_unfinished_table_is_an_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'partial.db'}"
    make_table(url, drop=5)
    with pytest.raises(ServiceError, match="103 of 108 grid points"):
        load_table("table-synth", url)


def test_a_partial_table_is_replayed_on_its_rows(tmp_path: Path) -> None:
    # A table still being built (or a pilot's subset) lacks grid points: every proposal is moved to a
    # row, and the trial records the row's params, so the sampler learns from what it was given.
    url = f"sqlite:///{tmp_path / 'partial.db'}"
    make_table(url, drop=60)
    table = load_table("table-synth", url, complete=False)
    assert len(table.rows) == 48
    for method in default_methods(EPOCHS):
        if method.name in ("random", "tpe", "tpe+auto", "tpe+hyperband"):
            run = replay(table, method, 1, 90)
            assert run["proposals"] and all(table.key(p) in table.rows for p in run["proposals"]), method.name


def test_bench_sweep_replays_a_partial_table_only_when_asked(tmp_path: Path) -> None:
    """``sweep bench sweep`` on a table still being built: one line and exit 2, unless ``--partial``,
    whose JSON and printed title say how much of the grid the figures stand on."""
    from typer.testing import CliRunner

    from sweep.cli import app

    url = f"sqlite:///{tmp_path / 'partial.db'}"
    make_table(url, drop=60)
    args = ["bench", "sweep", "table-synth", "--storage", url, "--seeds", "1", "--budget-epochs", "30"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "48 of 108 grid points finished" in refused.output
    assert "Traceback" not in refused.output
    out = tmp_path / "partial.json"
    done = CliRunner().invoke(app, [*args, "--partial", "--json", str(out)])
    assert done.exit_code == 0, done.output
    table = json.loads(out.read_text())["table"]
    assert (table["grid_size"], table["grid_points"], table["partial"]) == (48, 108, True)
    assert len(table["configs"]) == 48 and "48 of 108 configs" in done.output
    # Nothing finished yet: one line, exit 2, not a traceback from an empty table.
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    make_table(empty, drop=108)
    nothing = CliRunner().invoke(app, [*args[:3], "--storage", empty, *args[5:], "--partial"])
    assert nothing.exit_code == 2 and "has no config that trained all" in nothing.output, nothing.output


@pytest.mark.parametrize("name", ["table-cpu", "table-gpu", "table-finetune", "table-wide"])
def test_table_specs_are_valid_grids(name: str) -> None:
    spec = load_spec(name, studies_dir=ROOT / "studies")
    assert spec.sampler.type == "grid" and spec.pruner.type == "none"
    assert spec.n_trials == math.prod(len(v) for v in grid_space(spec).values())
    assert set(spec.params) == {"lr", "batch_size", "frozen_layers", "aug_strength"}


@pytest.mark.parametrize(
    ("name", "result_file", "checked"),
    [
        ("table-finetune", "sweep-finetune.json", ("tpe", "tpe+hyperband(half,rf2)")),
        ("table-wide", "sweep-wide.json", ("tpe+sha", "tpe+auto(lr-freeze)")),
    ],
)
def test_the_committed_replay_is_what_the_committed_table_gives(
    name: str, result_file: str, checked: tuple[str, ...], tmp_path: Path
) -> None:
    # benchmarks/results/*.json (BENCHMARKS.md, lr-freeze's defaults) must be reproducible from the
    # committed table by this code: the whole table (not a partial one), same figures, same runs.
    import shutil

    db = tmp_path / f"{name}.db"  # a copy: reading must not touch the committed file
    shutil.copy(ROOT / "benchmarks" / "tables" / f"{name}.db", db)
    committed = json.loads((ROOT / "benchmarks" / "results" / result_file).read_text())
    table = load_table(name, f"sqlite:///{db}")
    assert not committed["table"].get("partial")
    assert committed["table"]["grid_size"] == committed["table"]["grid_points"] == len(table.rows)
    assert committed["table"]["best_val_accuracy"] == table.best().curve[-1]
    assert committed["table"]["weights_sha256"] == table.weights_sha256
    assert committed["table"]["epoch_spearman"] == table.epoch_spearman()
    assert committed["tolerance"] == round(table.noise_floor(), 6)
    assert committed["seeds"] >= 10 and not committed.get("rung_noise")
    for method in default_methods(table.epochs):
        if method.name in checked:
            again = replay(table, method, 0, committed["budget_epochs"], committed["tolerance"])
            assert again == committed["methods"][method.name]["runs"][0], method.name
    assert set(committed["epochs_ratio_vs_random"]) == {m.name for m in default_methods(table.epochs)}


def test_the_replay_measures_lr_freezes_own_pruner() -> None:
    # The service's choice is replayed as shipped: a change to studies/lr-freeze.toml changes the method.
    shipped = load_spec("lr-freeze", studies_dir=ROOT / "studies").pruner
    (method,) = [m for m in default_methods(EPOCHS) if m.name.endswith("(lr-freeze)")]
    assert (method.sampler, method.pruner, dict(method.pruner_args)) == ("tpe", shipped.type, dict(shipped.args))


def test_oracle_is_the_expected_cost_of_a_perfect_classifier(table_url: str) -> None:
    # Drawing without replacement, (misses)/(hits + 1) misses come before the first hit: random pays
    # every epoch of them, the oracle after epoch e pays e of each (a diverged row what it trained).
    table = load_table("table-synth", table_url)
    target = table.best().curve[-1] - 0.05
    hits = [r for r in table.rows.values() if not r.diverged and r.curve[-1] >= target]
    misses = len(table.rows) - len(hits)
    assert 0 < len(hits) < len(table.rows)
    before = misses / (len(hits) + 1)
    diverged = [r for r in table.rows.values() if r.diverged]
    mean_full = (sum(min(EPOCHS, len(r.curve) + 1) for r in diverged) + EPOCHS * (misses - len(diverged))) / misses
    oracle = sweep_bench.sweep.oracle_ratios(table, target)
    assert oracle[1] == pytest.approx((before * 1 + EPOCHS) / (before * mean_full + EPOCHS), abs=1e-4)
    assert list(oracle) == list(range(1, EPOCHS)) and sorted(oracle.values()) == list(oracle.values())


def test_every_ratio_has_a_standard_error(result: dict[str, Any]) -> None:
    assert set(result["epochs_ratio_se"]) == set(result["epochs_ratio_vs_random"])
    assert all(se is None or se >= 0 for se in result["epochs_ratio_se"].values())
    summary = result["methods"]["random"]["summary"]  # its own ratio: 1 with the error of both sides
    relative = summary["epochs_to_target_se"] / summary["epochs_to_target_mean"]
    assert result["epochs_ratio_se"]["random"] == pytest.approx(math.sqrt(2) * relative, abs=1e-3)
    assert set(result["oracle"]) == set(range(1, EPOCHS))
    assert result["table"]["schedule"]["schedule"] == "cosine"


def test_rung_noise_perturbs_only_the_values_a_pruner_reads(table_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seed-like noise moves every value before the last epoch (a fresh draw per trial, the same for a
    replay seed and trial number), never a final value: the target and the chosen config stay the table's."""
    table = load_table("table-synth", table_url)
    methods = default_methods(EPOCHS)  # before the patch: loading lr-freeze's spec dry-runs its pruner
    reported: list[tuple[tuple[Any, ...], int, float]] = []
    real_report = optuna.trial.Trial.report

    def report(self: optuna.trial.Trial, value: float, step: int) -> None:
        reported.append((table.key(self.params), step, value))
        real_report(self, value, step)

    monkeypatch.setattr(optuna.trial.Trial, "report", report)
    sha = next(m for m in methods if m.pruner == "successive-halving")
    noisy = replay(table, sha, 0, 40, rung_noise=(0.05, 0.02))
    assert noisy == replay(table, sha, 0, 40, rung_noise=(0.05, 0.02))  # deterministic
    moved = [abs(v - table.rows[k].curve[e - 1]) for k, e, v in reported if e < EPOCHS]
    finals = [abs(v - table.rows[k].curve[e - 1]) for k, e, v in reported if e == EPOCHS]
    assert moved and all(0 <= v <= 1 for _, _, v in reported)
    assert sum(m > 1e-9 for m in moved) > 0.9 * len(moved) and max(moved) < 0.3
    assert finals and max(finals) == 0.0
    reported.clear()
    assert replay(table, sha, 0, 40) != noisy  # the noise changed what the pruner decided
    assert all(v == table.rows[k].curve[e - 1] for k, e, v in reported)
    random_method = methods[0]
    assert random_method.pruner == "none"  # without a pruner nothing reads the rung values
    assert replay(table, random_method, 0, 40, rung_noise=(0.05,)) == replay(table, random_method, 0, 40)
    with pytest.raises(ValueError, match="rung_noise"):
        run_replays(table, seeds=1, rung_noise=(-0.01,))


def test_bench_sweep_rung_noise_is_checked_and_recorded(table_url: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sweep.cli import app

    args = ["bench", "sweep", "table-synth", "--storage", table_url, "--seeds", "1", "--budget-epochs", "30"]
    bad = CliRunner().invoke(app, [*args, "--rung-noise", "4,-1"])
    assert bad.exit_code == 2 and "--rung-noise '4,-1': '-1' is not a standard deviation" in bad.output
    assert "Traceback" not in bad.output
    out = tmp_path / "noisy.json"
    ok = CliRunner().invoke(app, [*args, "--rung-noise", "4, 2", "--json", str(out)])
    assert ok.exit_code == 0, ok.output
    assert json.loads(out.read_text())["rung_noise"] == [0.04, 0.02] and "s.d. 4.0, 2.0 points" in " ".join(
        ok.output.split()
    )


def test_rung_noise_draws_are_per_epoch_and_shared_by_methods_that_propose_a_config() -> None:
    from sweep_bench.sweep import _Replay

    run = _Replay(100, target=0.9, rung_noise=(0.05, 0.0), seed=3)
    key = (1e-3, 32, 0, 0.0)
    run.seen[key] = 1
    first = run.noise(key, 4)
    assert first[0] != 0.0 and first[1:] == [0.0, 0.0, 0.0]  # epoch 2 on: the last s.d. given, 0
    other_method = _Replay(50, target=0.5, rung_noise=(0.05, 0.0), seed=3)
    other_method.seen[key] = 1
    assert other_method.noise(key, 4) == first  # the same config's first proposal: the same luck
    run.seen[key] = 2
    assert run.noise(key, 4) != first  # proposed again: another seed's draw
    assert _Replay(100, target=0.9, seed=3).noise(key, 4) == [0.0] * 4
