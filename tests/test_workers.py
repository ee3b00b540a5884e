"""Real worker processes on one SQLite file (the shared budget and kill -9 also on PostgreSQL, directly
and through PgBouncer in transaction mode): shared budget, SIGTERM, kill -9."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from helpers import (
    create_tiny,
    held_worker_env,
    project_env,
    rest_of_output,
    start_sweep,
    tiny_study,
    wait_for_line,
)
from optuna.trial import TrialState

pytestmark = pytest.mark.slow


@pytest.mark.pgbouncer
def test_two_worker_processes_finish_a_shared_budget_exactly(tmp_path: Path, storage_url: str) -> None:
    create_tiny(tmp_path, n_trials=5, epochs=1, url=storage_url)
    procs = [start_sweep(tmp_path, "worker", "--threads", "1") for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all("database is locked" not in out for out in outputs)
    trials = tiny_study(tmp_path).trials
    assert len(trials) == 5
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both really worked


def test_supervisor_runs_cpu_workers(tmp_path: Path) -> None:
    create_tiny(tmp_path, n_trials=3, epochs=1)
    proc = start_sweep(tmp_path, "worker", "--device", "cpu", "--workers", "2")
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    assert "[cpu0]" in out and "[cpu1]" in out
    assert len(tiny_study(tmp_path).trials) == 3


def test_sigterm_finishes_the_epoch_and_hands_the_trial_back(tmp_path: Path) -> None:
    create_tiny(tmp_path, "data.subset=400", n_trials=1, epochs=3)
    proc = start_sweep(tmp_path, "worker", "--threads", "1")
    wait_for_line(proc, "epoch 1/3")
    proc.send_signal(signal.SIGTERM)
    out = rest_of_output(proc, 300)
    assert proc.returncode == 0, out
    assert "stopping after the current epoch" in out
    first, retry = tiny_study(tmp_path).trials
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"] == "stopped"
    assert retry.state == TrialState.WAITING and retry.params == first.params
    # The next worker picks the handed-back trial up; the budget of 1 is not spent twice.
    rerun = start_sweep(tmp_path, "worker", "--threads", "1")
    out = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, out
    trials = tiny_study(tmp_path).trials
    assert len(trials) == 2 and trials[1].state == TrialState.COMPLETE
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].params == first.params
    # It resumed from the checkpoint of the epoch the signal let finish (1, or 2 when the signal landed
    # just after epoch 1's check): the epoch counter continues, the curve is continuous.
    done = first.user_attrs["epochs_run"]
    assert done in (1, 2) and sorted(first.intermediate_values) == list(range(1, done + 1))
    assert f"resuming from epoch {done}" in out
    assert trials[1].user_attrs["resumed_from_epoch"] == done
    assert sorted(trials[1].intermediate_values) == [1, 2, 3]
    assert trials[1].intermediate_values[1] == first.intermediate_values[1]
    assert f"trial 1 epoch {done}/3" not in out and f"trial 1 epoch {done + 1}/3" in out
    assert trials[1].user_attrs["fail_reason"] is None and len(trials[1].user_attrs["epoch_seconds"]) == 3
    assert trials[1].user_attrs["checkpoint"] is None  # removed once the trial completed
    # Beside the database: only the completed trial's final model, kept (checkpoint.keep_best = 3).
    kept = tiny_study(tmp_path).user_attrs["kept_models"]
    assert [k["trial"] for k in kept] == [1]
    assert [p.name for p in (tmp_path / "artifacts").iterdir()] == [kept[0]["artifact_id"]]


def test_signal_exit_code_only_when_a_signal_stopped_the_worker(tmp_path: Path) -> None:
    """SWEEP_SIGNAL_EXIT (Kubernetes: 143): a preempted worker must not look done, a finished one must."""
    create_tiny(tmp_path, n_trials=1, epochs=3)
    held, hold = held_worker_env(tmp_path)
    proc = start_sweep(tmp_path, "worker", "--threads", "1", SWEEP_SIGNAL_EXIT="143", **held)
    wait_for_line(proc, "epoch 1/3")
    proc.send_signal(signal.SIGTERM)
    wait_for_line(proc, "stopping after the current epoch")
    hold.unlink()
    out = rest_of_output(proc, 300)
    assert proc.returncode == 143, out
    first, retry = tiny_study(tmp_path).trials
    assert first.user_attrs["fail_reason"] == "stopped" and retry.state == TrialState.WAITING
    done = start_sweep(tmp_path, "worker", "--threads", "1", SWEEP_SIGNAL_EXIT="143")
    out = done.communicate(timeout=600)[0]
    assert done.returncode == 0, out
    assert tiny_study(tmp_path).trials[1].state == TrialState.COMPLETE


def test_signal_exit_code_reaches_supervised_workers(tmp_path: Path) -> None:
    create_tiny(tmp_path, n_trials=2, epochs=3)
    held, hold = held_worker_env(tmp_path)
    proc = start_sweep(tmp_path, "worker", "--device", "cpu", "--workers", "2", "--signal-exit", "143", **held)
    wait_for_line(proc, "epoch 1/3")
    wait_for_line(proc, "epoch 1/3")  # both children are in a trial
    proc.send_signal(signal.SIGTERM)
    wait_for_line(proc, "stopping after the current epoch")
    hold.unlink()
    out = rest_of_output(proc, 300)
    assert proc.returncode == 143, out
    assert sum(t.state == TrialState.WAITING for t in tiny_study(tmp_path).trials) == 2  # both handed back


@pytest.mark.pgbouncer
def test_kill_9_trial_is_failed_retried_and_budget_finished(tmp_path: Path, storage_url: str) -> None:
    fast = {"SWEEP_HEARTBEAT_INTERVAL": "1", "SWEEP_GRACE_PERIOD": "3"}
    create_tiny(tmp_path, "data.subset=800", n_trials=2, epochs=4, url=storage_url)
    # The victim is held in its second epoch, so the kill lands in the trial however slowly a loaded
    # machine lets this test read the study (the survivor runs without the hold).
    held, _ = held_worker_env(tmp_path)
    victim = start_sweep(tmp_path, "worker", "--threads", "1", **held, **fast)
    wait_for_line(victim, "epoch 1/4")
    deadline = time.monotonic() + 60  # the epoch-1 checkpoint is stored just after the line is printed
    while not tiny_study(tmp_path).trials[0].user_attrs.get("checkpoint") and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.kill()
    victim.wait()
    victim_trial = tiny_study(tmp_path).trials[0]
    assert victim_trial.state == TrialState.RUNNING
    left_at = victim_trial.user_attrs["checkpoint"]["epoch"]  # the newest checkpoint the victim stored
    survivor = start_sweep(tmp_path, "worker", "--threads", "1", **fast)
    out = survivor.communicate(timeout=600)[0]
    assert survivor.returncode == 0, out
    trials = tiny_study(tmp_path).trials
    assert trials[0].state == TrialState.FAIL  # declared stale by the survivor's heartbeat check
    retried = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == trials[0].params
    assert retried[0].user_attrs["resumed_from_epoch"] == left_at  # from the checkpoint the victim left
    assert sorted(retried[0].intermediate_values) == [1, 2, 3, 4]
    counted = [t for t in trials if "failed_trial" not in t.system_attrs]
    assert len(counted) == 2 and all(t.state.is_finished() for t in trials)


# Loaded by every child worker of the test below (PYTHONPATH): the first child's "GPU" breaks for good.
BROKEN_GPU = """
import os, pathlib
marker = pathlib.Path(os.environ["BROKEN_ONCE"])
if not marker.exists():
    marker.write_text("broken")
    import sweep.train

    def fit(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")

    sweep.train.fit = fit
"""


def test_supervisor_restarts_a_worker_whose_cuda_context_broke(tmp_path: Path) -> None:
    from sweep.supervisor import Slot, supervise

    create_tiny(tmp_path, n_trials=2, epochs=1)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(BROKEN_GPU)
    root = Path(__file__).resolve().parents[1]
    env = {
        "PYTHONPATH": f"{hooks}:{root}",
        "BROKEN_ONCE": str(tmp_path / "broken"),
        "CUDA_VISIBLE_DEVICES": "",
        **{k: v for k, v in project_env(tmp_path).items() if k.startswith("SWEEP_")},
    }
    logged: list[str] = []
    code = supervise([Slot("gpu0", "cpu", env)], lambda slot: ["worker", "tiny", "--threads", "1"], log=logged.append)
    assert code == 0, logged
    assert len(logged) == 1 and "CUDA context broke" in logged[0] and "restarting (1/3)" in logged[0]
    trials = tiny_study(tmp_path).trials
    # The broken worker took one trial and handed it back; the restarted one ran the budget of two.
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[0].user_attrs["fail_reason"] == "device" and trials[1].user_attrs["retry_of"] == 0
