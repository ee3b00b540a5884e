"""Small study specs the tests write: synthetic data, tiny images, seconds per trial on a CPU."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

TINY_SPEC = """
name = "tiny"
n_trials = {n_trials}
epochs = {epochs}
seed = 0

[data]
name = "synthetic"
val_fraction = 0.25
resolution = 16
subset = 160

[model]
arch = "resnet18"
weights = "none"

[train]
resolution = 16

[sampler]
type = "{sampler}"

[pruner]
type = "{pruner}"
{pruner_args}

[params.lr]
type = "float"
low = {lr_low}
high = {lr_high}
log = true

[params.batch_size]
type = "categorical"
choices = [32, 64]

[params.frozen_layers]
type = "int"
low = 0
high = 5

[params.aug_strength]
type = "float"
low = 0.0
high = 1.0
"""


def write_tiny_spec(
    folder: Path,
    *,
    n_trials: int = 3,
    epochs: int = 2,
    sampler: str = "random",
    pruner: str = "none",
    pruner_args: str = "",
    lr_low: float = 1e-3,
    lr_high: float = 1e-2,
) -> Path:
    """Write studies/tiny.toml under ``folder`` and return its path."""
    studies = folder / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    path = studies / "tiny.toml"
    path.write_text(TINY_SPEC.format(n_trials=n_trials, epochs=epochs, sampler=sampler, pruner=pruner,
                                     pruner_args=pruner_args, lr_low=lr_low, lr_high=lr_high))
    return path


# Loaded through PYTHONPATH by worker processes a test must catch mid-trial (held_worker_env): each
# trains its first epoch, then holds after training its second while the HOLD file exists, so that
# a pause or a kill surely lands in a trial (a tiny trial can otherwise finish all its epochs before
# the test has even read the study).
HOLD_HOOK = '''
import os, pathlib, time
import sweep.train

hold, epochs, train = pathlib.Path(os.environ["HOLD"]), [0], sweep.train.train_one_epoch


def train_one_epoch(*args, **kwargs):
    loss = train(*args, **kwargs)
    epochs[0] += 1
    while epochs[0] >= 2 and hold.exists():
        time.sleep(0.05)
    return loss


sweep.train.train_one_epoch = train_one_epoch
'''


def held_worker_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Environment for a worker process held in its second epoch until the returned file is removed."""
    hooks, hold = tmp_path / "hooks", tmp_path / "hold"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(HOLD_HOOK)
    hold.write_text("held")
    return {"PYTHONPATH": f"{hooks}:{Path(__file__).resolve().parents[1]}", "HOLD": str(hold)}, hold


def rest_of_output(proc: subprocess.Popen[str], timeout: float = 600) -> str:
    """The output ``proc`` writes until it exits (killed after ``timeout``), read through the same file
    object as ``wait_for_line``: ``communicate(timeout=...)`` reads the raw pipe and would drop the lines
    that ``readline`` has already buffered."""
    assert proc.stdout is not None
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        out = proc.stdout.read()
        proc.wait()
    finally:
        timer.cancel()
    assert not timer.finished.is_set() or proc.returncode != -9, f"still running after {timeout} s:\n{out}"
    return out


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 300) -> str:
    """Read the process output until ``needle`` appears."""
    seen = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"{needle!r} never appeared:\n{''.join(seen)}")
