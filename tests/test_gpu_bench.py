"""scripts/gpu-bench on the CPU: every run in its order, each under its own timeout, results kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_dry_run_keeps_going_past_a_run_that_times_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "DEVICE": "cpu",
        "DATA": "synthetic",
        "SUBSET": "200",
        "STEPS": "1",
        "SEED_WORKERS": "0",
        "THREADS": "1",
        "BATCH": "16",
        "COMPILE_BACKEND": "eager",
        "PYTHON": sys.executable,
        "SWEEP_CACHE_DIR": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
        "T_CHECKS": "0.1",
    }  # the checks run cannot even start in 0.1 s: the compile run must still follow
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-bench")], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == ["cifar-b512", "imagenet-b128", "checks", "cifar-b512-compile"]
    assert "timed out" in summary[2] and all(": ok" in summary[i] for i in (0, 1, 3)), summary
    for name in ("cifar-b512", "imagenet-b128", "cifar-b512-compile"):
        figures = json.loads((out / f"train-{name}.json").read_text())
        assert figures["device"] == "cpu" and figures["batch_size"] == 16 and figures["engine_images_per_s"] > 0
    assert json.loads((out / "train-cifar-b512-compile.json").read_text())["compile"] is True


def _gpu_table(tmp_path: Path, db: Path, run_s: int, workers: int) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TABLE": "tiny",
        "DB": str(db),
        "DEVICE": "cpu",
        "WORKERS": str(workers),
        "THREADS": "1",
        "RUN_S": str(run_s),
        "PY": sys.executable,
        "OUT": str(tmp_path / "out"),
        "SWEEP_CACHE_DIR": str(tmp_path / "cache"),
    }
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-table")], env=env, capture_output=True, text=True, timeout=600
    )


def _states(db: Path) -> dict[str, int]:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT state, count(*) FROM trials GROUP BY state"))
    finally:
        con.close()


@pytest.mark.parametrize("case", ["finishes", "time-is-up"])
def test_gpu_table_dry_run_returns_a_whole_copy_and_leaves_the_original(tmp_path: Path, case: str) -> None:
    """scripts/gpu-table on the CPU: its workers train the study's trials; when they finish the budget
    they exit, when its time is up they are stopped and hand their trials back; either way a copy of
    the database comes back and the checkout's file is untouched."""
    from helpers import SWEEP, write_tiny_spec

    n_trials, epochs = (2, 1) if case == "finishes" else (200, 3)  # 200: far more than 25 s can train
    write_tiny_spec(tmp_path, n_trials=n_trials, epochs=epochs)
    db = tmp_path / "table.db"
    subprocess.run(
        [str(SWEEP), "create", "tiny", "--storage", f"sqlite:///{db}"], cwd=tmp_path, check=True, capture_output=True
    )
    before = db.read_bytes()
    proc = _gpu_table(tmp_path, db, run_s=300 if case == "finishes" else 25, workers=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    copy = tmp_path / "out" / "table.db"
    states = _states(copy)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    if case == "finishes":
        assert states == {"COMPLETE": 2} and "time is up" not in summary
    else:
        assert "time is up: SIGTERM" in summary and "SIGKILL" not in summary
        # A trial in progress at the SIGTERM failed as stopped with its retry queued (none when the signal
        # fell between trials): nothing left running, nothing lost.
        assert "RUNNING" not in states and states.get("FAIL", 0) == states.get("WAITING", 0), states
        assert 1 <= states.get("COMPLETE", 0) < 200, states
    assert db.read_bytes() == before  # the workers wrote to a copy
