"""deploy/slurm-array.sh on a real, throwaway single-node Slurm (``slurm_conf``: Debian's slurmctld, slurmd
and munge), CPU workers on PostgreSQL: a requeued task and a task at its time limit hand their trials
back and they resume from their checkpoints; a worker that exits 75 gets its task requeued.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from helpers import SWEEP, write_tiny_spec
from optuna.trial import TrialState

from sweep.storage import open_storage

# One throwaway Slurm per machine (one slurmd, node names fixed): under pytest-xdist every test of it
# runs in the same worker (--dist loadgroup).
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "slurm-array.sh"

# Loaded by every worker (PYTHONPATH): in a task's first run (not after a requeue) the worker holds after
# training its second epoch while DIR/hold-<task> exists, so that a requeue or a time-limit signal surely
# lands mid-trial; BROKEN=1 makes the first run's "GPU" fail as a broken CUDA context does.
HOOK = """
import os, pathlib, time
import sweep.train

first_run = os.environ.get("SLURM_RESTART_COUNT", "0") == "0"
task = os.environ.get("SLURM_ARRAY_TASK_ID", "x")
hold = pathlib.Path(os.environ["HOLD_DIR"]) / f"hold-{task}"
epochs, train, fit = [0], sweep.train.train_one_epoch, sweep.train.fit


def train_one_epoch(*args, **kwargs):
    loss = train(*args, **kwargs)
    epochs[0] += 1
    while first_run and epochs[0] >= 2 and hold.exists():
        time.sleep(0.05)
    return loss


def broken_fit(*args, **kwargs):
    raise RuntimeError("CUDA error: device-side assert triggered")


sweep.train.train_one_epoch = train_one_epoch
if first_run and os.environ.get("BROKEN") == "1":
    sweep.train.fit = broken_fit
"""


class Cluster:
    """sbatch/scontrol/squeue against the throwaway Slurm, with a study's environment."""

    def __init__(self, conf: str, work: Path, url: str, **extra: str) -> None:
        hooks = work / "hooks"
        hooks.mkdir()
        (hooks / "sitecustomize.py").write_text(HOOK)
        self.work, self.url = work, url
        self.env = {
            **os.environ,
            "SLURM_CONF": conf,
            "SWEEP_STORAGE": url,
            "SWEEP_ARTIFACTS": str(work / "artifacts"),  # one node: a folder every task sees
            "SWEEP_CACHE_DIR": str(work / "cache"),
            "SWEEP_VENV": str(Path(sys.executable).parents[1]),
            # CPU workers: no GPU requested (Slurm's own variable), the script told the device and threads.
            "SBATCH_GRES": "none",
            "SWEEP_DEVICE": "cpu",
            "SWEEP_THREADS": "1",
            "PYTHONPATH": f"{hooks}:{ROOT}",
            "HOLD_DIR": str(work),
            **extra,
        }

    def run(self, *args: str) -> str:
        done = subprocess.run(list(args), cwd=self.work, env=self.env, text=True, capture_output=True, timeout=60)
        assert done.returncode == 0, f"{' '.join(args)}: {done.stderr}"
        return done.stdout

    def submit(self, array: str, study: str) -> str:
        args = ["--parsable", f"--array={array}", "--cpus-per-task=1", "--mem=600M"]
        out = self.run("sbatch", *args, str(SCRIPT), study)
        return out.strip().split(";")[0]

    def job(self, task_id: str) -> dict[str, str]:
        """``scontrol show job``'s fields of one array task (kept MinJobAge = 600 s after it ends)."""
        return dict(re.findall(r"(\w+)=(\S*)", self.run("scontrol", "show", "job", task_id)))

    def output(self, job: str, task: int) -> str:
        path = self.work / f"sweep-{job}_{task}.out"
        return path.read_text() if path.exists() else ""

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name="tiny", storage=open_storage(self.url))


def _until(what: str, check: Callable[[], object], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _handed_back(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Trials a signal stopped (their retries inherit the attribute until they start)."""
    return [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") == "stopped"]


def _create(work: Path, url: str, n_trials: int) -> None:
    write_tiny_spec(work, n_trials=n_trials, epochs=3)
    env = {**os.environ, "SWEEP_STORAGE": url}
    subprocess.run([str(SWEEP), "create", "tiny"], cwd=work, env=env, check=True, capture_output=True, timeout=120)


def test_requeue_and_time_limit_hand_trials_back_and_they_resume(
    slurm_conf: str, pg_fresh_url: str, tmp_path: Path
) -> None:
    _create(tmp_path, pg_fresh_url, n_trials=4)
    slurm = Cluster(slurm_conf, tmp_path, pg_fresh_url)
    for task in range(3):
        (tmp_path / f"hold-{task}").write_text("held")
    job = slurm.submit("0-2", "tiny")

    def held_with_checkpoints() -> bool:
        trials = slurm.study().trials
        running = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("checkpoint")]
        return len(running) == 3

    _until("three tasks each in a trial with a checkpoint", held_with_checkpoints)
    # Task 1 is requeued (a preemption does the same); task 2 is five minutes from its time limit, inside
    # the script's --signal=TERM@300, so Slurm signals it as it would at the end of a long job.
    slurm.run("scontrol", "requeue", f"{job}_1")
    slurm.run("scontrol", "update", f"JobId={job}_2", "TimeLimit=5")
    for task in (1, 2):
        _until(
            f"task {task}'s worker to be told to stop",
            lambda t=task: "stopping after the current epoch" in slurm.output(job, t),
            timeout=120,
        )
        (tmp_path / f"hold-{task}").unlink()  # its epoch ends: checkpoint, hand back
    _until("tasks 1 and 2 to hand their trials back", lambda: len(_handed_back(slurm.study().trials)) == 2)
    (tmp_path / "hold-0").unlink()
    _until("the array job to end", lambda: not slurm.run("squeue", "-h", "-j", job).strip(), timeout=600)

    trials = slurm.study().trials
    logs = "\n".join(slurm.output(job, t) for t in range(3))
    assert all(t.state.is_finished() for t in trials), logs  # none RUNNING or WAITING left
    counted = [t for t in trials if "failed_trial" not in t.system_attrs]
    assert len(counted) == 4, logs  # the budget, exactly
    stopped = _handed_back(trials)
    assert len(stopped) == 2
    for first in stopped:
        (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == first.number]
        assert retry.state == TrialState.COMPLETE, logs
        assert retry.user_attrs["resumed_from_epoch"] == first.user_attrs["epochs_run"] >= 1
        assert sorted(retry.intermediate_values) == [1, 2, 3]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    # Task 1 ran again after its requeue; task 2 ended at its signal, handed back, not requeued.
    requeued, timed = slurm.job(f"{job}_1"), slurm.job(f"{job}_2")
    assert requeued["Restarts"] == "1" and requeued["JobState"] == "COMPLETED", requeued
    assert timed["Restarts"] == "0" and timed["JobState"] == "COMPLETED", timed
    assert "Traceback" not in logs


def test_a_worker_that_lost_its_device_gets_its_task_requeued(
    slurm_conf: str, pg_fresh_url: str, tmp_path: Path
) -> None:
    _create(tmp_path, pg_fresh_url, n_trials=1)
    slurm = Cluster(slurm_conf, tmp_path, pg_fresh_url, BROKEN="1")
    job = slurm.submit("0", "tiny")
    _until("the array job to end", lambda: not slurm.run("squeue", "-h", "-j", job).strip(), timeout=600)
    log = slurm.output(job, 0)
    assert "the worker exited 75; requeueing task" in log, log
    task = slurm.job(f"{job}_0")
    assert task["Restarts"] == "1" and task["JobState"] == "COMPLETED", task
    trials = slurm.study().trials
    assert trials[0].user_attrs["fail_reason"] == "device"  # handed back, not counted
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["retry_of"] == 0
