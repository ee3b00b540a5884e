"""Faults caused for real against real worker processes (issue 21, the process side): a circuit breaker on
a repeated error, Ctrl-C at a terminal running a supervised group, a peer failing a live trial, a full disk.

Each case checks the exit code, that the budget is spent exactly (COMPLETE + PRUNED, no trial counted
twice), that no trial is left RUNNING and that no traceback reached the output.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState
from test_workers import _create, _study, _sweep

pytestmark = [pytest.mark.slow, pytest.mark.faults]

# Loaded by a worker process (PYTHONPATH): every trial fails the same way, each time with other digits.
BROKEN_INSTALL = """
import itertools
import sweep.train

_calls = itertools.count()


def fit(*args, **kwargs):
    raise OSError(f"libbroken.so.{next(_calls)}: cannot open shared object file")


sweep.train.fit = fit
"""


def _hooks(tmp_path: Path, code: str) -> dict[str, str]:
    """Environment that loads ``code`` into every sweep process started with it."""
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(code)
    return {"PYTHONPATH": f"{hooks}:{Path(__file__).resolve().parents[1]}"}


def _no_running_and_counted_once(tmp_path: Path) -> list:
    trials = _study(tmp_path).trials
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    originals = [t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs]
    assert len(originals) == len(set(originals))  # a trial retried at most once at a time
    return trials


def test_the_same_error_three_times_in_a_row_stops_the_worker(tmp_path: Path) -> None:
    _create(tmp_path, n_trials=6, epochs=1)
    proc = _sweep(tmp_path, "worker", "--threads", "1", **_hooks(tmp_path, BROKEN_INSTALL))
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if "3 trials in a row failed with the same error" in line]
    assert len(lines) == 1 and "cannot open shared object file" in lines[0], out
    trials = _no_running_and_counted_once(tmp_path)
    assert [t.state for t in trials] == [TrialState.FAIL] * 3  # three of the six, not the whole budget
