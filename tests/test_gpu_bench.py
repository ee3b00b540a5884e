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
