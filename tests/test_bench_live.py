"""The live check of the replay: a tiny table really trained by a worker, then methods run for real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweep.service import create_study, run_worker
from sweep_bench.live import run_live_check
from sweep_bench.sweep import load_table

TABLE = """
name = "live-table"
n_trials = 4
epochs = 2
seed = 0

[data]
name = "synthetic"
val_fraction = 0.25
resolution = 16
subset = 120

[model]
weights = "none"

[train]
resolution = 16

[sampler]
type = "grid"

[pruner]
type = "none"

[params.lr]
type = "categorical"
choices = [1e-3, 1e-2]

[params.frozen_layers]
type = "int"
low = 0
high = 4
step = 4
"""


@pytest.mark.slow
@pytest.mark.usefixtures("torch_one_thread")
def test_live_runs_match_the_replay_mechanics(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'table.db'}"
    (tmp_path / "live-table.toml").write_text(TABLE)
    create_study(str(tmp_path / "live-table.toml"), storage_url=url)
    summary = run_worker("live-table", storage_url=url, device="cpu")
    assert summary.states["COMPLETE"] == 4
    table = load_table("live-table", url)
    live_url = f"sqlite:///{tmp_path / 'live.db'}"
    out = tmp_path / "live.json"
    result = run_live_check(
        "live-table",
        storage_url=url,
        live_storage_url=live_url,
        methods=["random", "tpe+hyperband"],
        seed=3,
        budget_epochs=5,
        json_path=out,
    )
    for name in ("random", "tpe+hyperband"):
        entry = result["methods"][name]
        live, replayed = entry["live"], entry["replay"]
        assert live["epochs_used"] == replayed["epochs_used"] == 5  # the same epoch budget, spent exactly
        assert all(table.key(p) in table.rows for p in live["proposals"])
        assert live["abs_gap_to_table_mean"] is not None and 0 <= live["abs_gap_to_table_mean"] <= 1
        assert live["cut"] + live["complete"] + live["pruned"] == live["trials"]
    # Random search ignores results: seeded alike, the live run proposes exactly what the replay did.
    random = result["methods"]["random"]
    assert random["comparison"]["same_proposals_prefix"] == len(random["live"]["proposals"]) == 3
    saved = json.loads(out.read_text())
    assert set(saved["methods"]) == {"random", "tpe+hyperband"}
    assert Path(saved["figures"][0]).stat().st_size > 100_000  # plotly.js inlined


@pytest.mark.slow
@pytest.mark.usefixtures("torch_one_thread")
def test_a_live_check_on_a_table_still_being_built_proposes_only_its_rows(tmp_path: Path) -> None:
    from sweep.service import ServiceError

    url = f"sqlite:///{tmp_path / 'table.db'}"
    (tmp_path / "live-table.toml").write_text(TABLE.replace("n_trials = 4", "n_trials = 3"))  # 3 of 4 points
    create_study(str(tmp_path / "live-table.toml"), storage_url=url)
    run_worker("live-table", storage_url=url, device="cpu")
    with pytest.raises(ServiceError, match="3 of 4 grid points"):
        run_live_check("live-table", storage_url=url, methods=["random"], budget_epochs=4)
    table = load_table("live-table", url, complete=False)
    result = run_live_check(
        "live-table",
        storage_url=url,
        live_storage_url=f"sqlite:///{tmp_path / 'live.db'}",
        methods=["random"],
        seed=1,
        budget_epochs=6,
        partial=True,
    )
    live = result["methods"]["random"]["live"]
    assert result["table_configs"] == 3 and len(live["proposals"]) == 3
    assert all(table.key(p) in table.rows for p in live["proposals"])  # moved onto rows, as in the replay
    assert result["methods"]["random"]["comparison"]["same_proposals_prefix"] == 3
