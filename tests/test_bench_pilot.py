"""The anytime rung-value pilot: config choice, its resumable SQLite record, and the analysis."""

from __future__ import annotations

import itertools
import math
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from sweep.spec import parse_spec
from sweep_bench.pilot import (
    PILOT_TRAIN,
    PilotConfig,
    Stop,
    analyse,
    format_analysis,
    open_db,
    pilot_configs,
    pilot_spec,
    run_pilot,
    stored_configs,
)
from sweep_bench.sweep import Row, Table

LRS = [1e-4, 3e-4, 1e-3, 3e-3]
EPOCHS = 4
GRID_SPEC = parse_spec(
    {
        "name": "grid",
        "epochs": EPOCHS,
        "data": {"name": "synthetic"},
        "model": {"weights": "none"},
        "sampler": {"type": "grid"},
        "pruner": {"type": "none"},
        "params": {
            "lr": {"type": "categorical", "choices": LRS},
            "batch_size": {"type": "categorical", "choices": [64, 128]},
            "frozen_layers": {"type": "int", "low": 0, "high": 5},
            "aug_strength": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.5},
        },
    }
)


def synthetic_table() -> Table:
    """96 configs like the fine-tune table's: the top lr finishes best and starts worst."""
    grid = {"lr": LRS, "batch_size": [64, 128], "frozen_layers": list(range(6)), "aug_strength": [0.0, 0.5]}
    table = Table("grid", GRID_SPEC, grid, {}, val_images=1500)
    rows = {}
    for i, values in enumerate(itertools.product(*grid.values())):
        p = dict(zip(grid, values, strict=True))
        final = 0.9 - 0.02 * p["frozen_layers"] - 0.01 * LRS[::-1].index(p["lr"]) + 0.001 * (i % 7)
        start = final - 0.1 * LRS.index(p["lr"]) - 0.001 * (i % 5)
        curve = tuple(start + (final - start) * e / (EPOCHS - 1) for e in range(EPOCHS))
        rows[table.key(p)] = Row(p, curve, final - 0.005)
    return Table("grid", GRID_SPEC, grid, rows, val_images=1500)


def test_pilot_configs_take_the_winners_the_slow_starters_and_a_spread() -> None:
    table = synthetic_table()
    seeds = {key: n for n, key in enumerate(table.rows)}
    configs = pilot_configs(table, seeds, n_slow=7, n_spread=10)
    best, floor = table.best().curve[-1], table.noise_floor() or 0.0
    groups = {g: [c for c in configs if c.group == g] for g in ("winner", "slow", "spread")}
    assert {c.params["lr"] for c in groups["winner"]} and all(
        c.cosine_curve[-1] >= best - floor for c in groups["winner"]
    )
    n_winners = sum(r.curve[-1] >= best - floor for r in table.rows.values())
    assert (len(groups["winner"]), len(groups["slow"]), len(groups["spread"])) == (n_winners, 7, 10)
    assert all(c.params["lr"] == max(LRS) and c.params["frozen_layers"] <= 2 for c in groups["slow"])
    chosen = {table.key(c.params) for c in groups["slow"]}
    pool = [
        (k, r)
        for k, r in table.rows.items()
        if r.params["lr"] == max(LRS) and r.params["frozen_layers"] <= 2 and r.curve[-1] < best - floor
    ]
    assert max(r.curve[0] for k, r in pool if k in chosen) <= min(r.curve[0] for k, r in pool if k not in chosen)
    assert [c.group for c in configs[:3]] == ["winner", "slow", "spread"]  # interleaved
    assert [c.index for c in configs] == list(range(len(configs)))
    assert len({table.key(c.params) for c in configs}) == len(configs)
    assert all(c.seed == seeds[table.key(c.params)] for c in configs)
    spread_finals = [c.cosine_curve[-1] for c in groups["spread"]]
    assert min(spread_finals) == min(r.curve[-1] for r in table.rows.values())  # down to the worst


def config(index: int, final: float) -> PilotConfig:
    return PilotConfig(
        index,
        "winner",
        {"lr": 1e-3, "batch_size": 64, "frozen_layers": index % 6, "aug_strength": 0.5},
        seed=index,
        cosine_curve=(final - 0.2, final - 0.1, final - 0.05, final),
        cosine_test=final,
    )


META: dict[str, Any] = {
    "table": "grid",
    "train": PILOT_TRAIN,
    "epochs": EPOCHS,
    "data_fingerprint": "abc",
    "table_best": 0.9,
    "noise_floor": 0.01,
}


def write_epochs(
    con: sqlite3.Connection,
    index: int,
    trunk: list[float],
    ema: list[float],
    cooldown: list[float | None],
    *,
    finished: bool = True,
) -> None:
    """Rows as run_pilot writes them: 10 steps an epoch, a branch of 2 steps after each epoch but the last."""
    for e, (t, m, c) in enumerate(zip(trunk, ema, cooldown, strict=True), start=1):
        con.execute(
            "INSERT INTO epochs VALUES (?, ?, 0.5, ?, ?, ?, ?, ?, ?, 10.0, 10, 'now')",
            (index, e, t, t, m, c, 0 if c is None else 2, 0.0 if c is None else 2.0),
        )
    if finished:
        con.execute("UPDATE configs SET finished_at = 'now', test_accuracy = ? WHERE idx = ?", (trunk[-1], index))
    con.commit()


def test_analysis_of_a_synthetic_pilot(tmp_path: Path) -> None:
    """Six finished configs: the cooldown values rank them as they finish, the EMA backwards, the trunk
    by chance; a seventh without its last epoch is left out."""
    finals = [0.80, 0.82, 0.84, 0.86, 0.88, 0.895]
    # The cosine table ranks config 5 best, then 4, ... (its finals), the wsd run in the same order.
    configs = [config(i, f) for i, f in enumerate(finals)] + [config(6, 0.99)]
    con = open_db(tmp_path / "p.db", configs, META)
    for i, f in enumerate(finals):
        trunk = [0.7 + 0.01 * ((i * 3) % 6), 0.7 + 0.01 * ((i * 5) % 6), 0.75, f]
        ema = [0.9 - 0.01 * i, 0.9 - 0.01 * i, 0.8, f - 0.01]
        cooldown: list[float | None] = [f - 0.05, f - 0.03, f - 0.01, None]
        write_epochs(con, i, trunk, ema, cooldown)
    write_epochs(con, 6, [0.9, 0.9], [0.9, 0.9], [0.9, 0.9], finished=False)
    out = analyse(con, top_k=2)
    assert (out["configs_finished"], out["configs_total"], out["top_k"]) == (6, 7, 2)
    v = out["variants"]
    assert v["cooldown"]["spearman"] == (1.0, 1.0, 1.0) and v["cooldown"]["top_recall"] == (1.0, 1.0, 1.0)
    assert v["ema"]["spearman"][:2] == (-1.0, -1.0) and v["ema"]["top_recall"][:2] == (0.0, 0.0)
    assert v["ema"]["top_kept_by_half"][:2] == (0.0, 0.0)
    lo, hi = v["trunk"]["spearman_ci"][0]  # the trunk's epoch 1 ranks by chance: a wide interval around it
    assert -1 <= lo < v["trunk"]["spearman"][0] < hi <= 1 and hi - lo > 0.5
    assert v["cosine"]["spearman"] == (1.0, 1.0, 1.0)  # against the table's own finals
    assert math.isnan(v["trunk"]["spearman"][2])  # a constant epoch ranks nothing
    assert len(v["trunk"]["spearman"]) == EPOCHS - 1
    best = out["best"]
    assert (best["wsd_final"], best["wsd_config"], best["cosine_best_same_configs"]) == (0.895, 5, 0.895)
    assert best["wsd_within_noise_of_table_best"]  # 0.895 >= 0.9 - 0.01
    assert out["final_spearman_wsd_vs_cosine"] == 1.0
    assert out["cosine_all_chosen"]["spearman"] == (1.0, 1.0, 1.0)  # the table's curves of all seven
    # 2 branch steps after 3 of 4 epochs of 10 steps, and after both epochs of the unfinished config
    # (its cost was paid too).
    assert out["cooldown_cost"]["steps_share"] == pytest.approx(round((6 * 3 * 2 + 2 * 2) / (6 * 4 * 10 + 2 * 10), 4))
    text = format_analysis(out)
    assert (
        "| cooldown | 1.00 [1.00, 1.00] | 1.00 [1.00, 1.00] | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 |" in text
        and "within" in text
    )


def test_the_database_keeps_its_configs_and_refuses_other_settings(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    open_db(path, [config(0, 0.8), config(1, 0.9)], META).close()
    again = open_db(path, [config(0, 0.5)], META)  # a rerun keeps the pilot it started
    assert [(c.index, c.cosine_test, done) for c, done in stored_configs(again)] == [(0, 0.8, False), (1, 0.9, False)]
    again.close()
    with pytest.raises(ValueError, match="train"):
        open_db(path, [], META | {"train": PILOT_TRAIN | {"ema_halflife": 1.0}})
    assert analyse(sqlite3.connect(path))["configs_finished"] == 0


def test_run_stops_after_an_epoch_and_a_rerun_continues(tmp_path: Path) -> None:
    """SIGTERM's event stops after the epoch it came in (written and checkpointed); the rerun resumes."""
    from sweep.data import load_data

    spec = pilot_spec(
        parse_spec(
            {
                "name": "tiny",
                "epochs": 2,
                "data": {"name": "synthetic", "subset": 96, "resolution": 8},
                "model": {"weights": "none"},
                "train": {"resolution": 8, "batch_size": 16, "eval_batch_size": 64},
            }
        )
    )
    assert (spec.train.schedule, spec.train.cooldown_epochs) == ("wsd", 0.25)
    data = load_data("synthetic", "", val_fraction=0.25, seed=0, resolution=8, subset=96)
    configs = [
        PilotConfig(
            i,
            "spread",
            {"lr": 2e-3, "batch_size": 16, "frozen_layers": k, "aug_strength": 0.0},
            seed=i,
            cosine_curve=(0.2, 0.3),
            cosine_test=0.3,
        )
        for i, k in enumerate((0, 5))
    ]
    con = open_db(tmp_path / "p.db", configs, META | {"epochs": 2})
    stop, lines = threading.Event(), []

    def log(line: str) -> None:
        lines.append(line)
        if "epoch 1/2" in line:
            stop.set()  # as the signal handler would, during config 0's first epoch

    ckpt_dir = tmp_path / "ckpt"
    with pytest.raises(Stop, match="after epoch 1 of config 0"):
        run_pilot(con, spec, data, ckpt_dir=ckpt_dir, stop=stop, log=log)
    assert (ckpt_dir / "config0.pt").is_file()
    first = con.execute("SELECT trunk, ema, cooldown, cooldown_steps FROM epochs").fetchall()
    assert len(first) == 1 and first[0][3] == 1 and all(x is not None for x in first[0])
    assert run_pilot(con, spec, data, ckpt_dir=ckpt_dir, log=lines.append) == 2
    assert any("resuming after epoch 1" in line for line in lines)
    rows = con.execute("SELECT idx, epoch, cooldown FROM epochs ORDER BY idx, epoch").fetchall()
    assert [(i, e) for i, e, _ in rows] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert [c is None for _, e, c in rows] == [False, True, False, True]  # no branch after the last epoch
    assert all(done for _, done in stored_configs(con)) and not list(ckpt_dir.iterdir())
    assert run_pilot(con, spec, data, ckpt_dir=ckpt_dir) == 0  # nothing left


def test_the_committed_pilot_replay_is_what_the_committed_databases_give(tmp_path: Path) -> None:
    """benchmarks/results/sweep-pilot.json (BENCHMARKS.md) must come from the committed pilot and table
    databases by this code: the subset's rows, their schedule, the same seed-0 runs."""
    import json
    import shutil

    from sweep_bench.pilot import pilot_table
    from sweep_bench.sweep import default_methods, load_table, replay, run_replays

    root = Path(__file__).resolve().parent.parent
    for name in ("table-finetune.db", "table-pilot-wsd.db"):  # copies: reading must not touch the committed files
        shutil.copy(root / "benchmarks" / "tables" / name, tmp_path / name)
    committed = json.loads((root / "benchmarks" / "results" / "sweep-pilot.json").read_text())
    base = load_table("table-finetune", f"sqlite:///{tmp_path / 'table-finetune.db'}")
    table = pilot_table(sqlite3.connect(tmp_path / "table-pilot-wsd.db"), base, "ema")
    assert (committed["table"]["grid_size"], committed["table"]["grid_points"]) == (len(table.rows), 96) == (24, 96)
    assert committed["table"]["schedule"]["schedule"] == "wsd" and committed["table"]["schedule"]["rung_value"] == "ema"
    assert committed["table"]["epoch_spearman"] == table.epoch_spearman()
    for method in default_methods(table.epochs):
        if method.name in ("random", "tpe+sha"):
            again = replay(table, method, 0, committed["budget_epochs"], committed["tolerance"])
            assert again == committed["methods"][method.name]["runs"][0], method.name
    # The headline: SHA from epoch 1 against random over every seed, on the EMA and the cosine rows.
    sha = [m for m in default_methods(table.epochs) if m.name in ("random", "tpe+sha")]
    cosine = pilot_table(sqlite3.connect(tmp_path / "table-pilot-wsd.db"), base, "cosine")
    for rows, figures in ((table, committed), (cosine, committed["same_configs_cosine"])):
        again = run_replays(rows, seeds=committed["seeds"], budget_epochs=committed["budget_epochs"], methods=sha)
        assert again["epochs_ratio_vs_random"]["tpe+sha"] == figures["epochs_ratio_vs_random"]["tpe+sha"]
    assert committed["same_configs_cosine"]["table_epoch_spearman"] == cosine.epoch_spearman()
