"""Faults caused for real against real worker processes (issue 21, the process side): a circuit breaker on
a repeated error, Ctrl-C at a terminal running a supervised group, a peer failing a live trial, a full disk.

Each case checks the exit code, that the budget is spent exactly (COMPLETE + PRUNED, no trial counted
twice), that no trial is left RUNNING and that no traceback reached the output.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from helpers import (
    SWEEP,
    create_tiny,
    held_worker_env,
    project_env,
    project_url,
    rest_of_output,
    start_sweep,
    tiny_study,
    wait_for_line,
    write_tiny_spec,
)
from optuna.trial import TrialState

import sweep.train
from sweep import record
from sweep.service import WorkerEvents, create_study, run_worker
from sweep.storage import open_storage

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
    trials = tiny_study(tmp_path).trials
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    # A trial is never run twice at once: at most one unfinished retry per original trial.
    live = [
        t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs and not t.state.is_finished()
    ]
    assert len(live) == len(set(live))
    return trials


def _only_kept_models_left(tmp_path: Path) -> None:
    """No artifact file without a trial that needs it: the kept models are all that is left."""
    folder = tmp_path / ("artifacts" if project_url(tmp_path).startswith("sqlite") else "storage/artifacts")
    kept = {k["artifact_id"] for k in tiny_study(tmp_path).user_attrs.get("kept_models", [])}
    assert set(os.listdir(folder)) == kept


def test_the_same_error_three_times_in_a_row_stops_the_worker(tmp_path: Path) -> None:
    create_tiny(tmp_path, n_trials=6, epochs=1)
    proc = start_sweep(tmp_path, "worker", "--threads", "1", **_hooks(tmp_path, BROKEN_INSTALL))
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if "3 trials in a row failed with the same error" in line]
    assert len(lines) == 1 and "cannot open shared object file" in lines[0], out
    trials = _no_running_and_counted_once(tmp_path)
    assert [t.state for t in trials] == [TrialState.FAIL] * 3  # three of the six, not the whole budget


def test_worker_refuses_a_grace_period_under_two_heartbeats(tmp_path: Path) -> None:
    proc = start_sweep(tmp_path, "worker", SWEEP_HEARTBEAT_INTERVAL="10", SWEEP_GRACE_PERIOD="15")
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2, out
    assert out.count("\n") == 1 and "SWEEP_GRACE_PERIOD=15 is less than twice" in out, out


def test_a_trial_failed_by_a_peer_meanwhile_is_let_go_and_its_retry_resumes(tmp_path: Path, storage_url: str) -> None:
    """The owner is held in its second epoch while a second storage client fails its trial as stale, as a
    peer's stale check does after a partition longer than the grace period."""
    create_tiny(tmp_path, "data.subset=400", n_trials=2, epochs=3, url=storage_url)
    held, hold = held_worker_env(tmp_path)
    owner = start_sweep(tmp_path, "worker", "--threads", "1", **held)
    wait_for_line(owner, "epoch 1/3")
    study = tiny_study(tmp_path)
    deadline = time.monotonic() + 120  # the epoch-1 checkpoint is stored just after the line is printed
    while not study.trials[0].user_attrs.get("checkpoint") and time.monotonic() < deadline:
        time.sleep(0.05)
    storage = open_storage(project_url(tmp_path), heartbeat=True)
    victim = study.trials[0]
    assert victim.state == TrialState.RUNNING
    storage.set_trial_state_values(victim._trial_id, TrialState.FAIL)
    storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(victim._trial_id))
    hold.unlink()
    out = rest_of_output(owner, 600)
    assert owner.returncode == 0, out
    assert "Traceback" not in out and "Cannot tell" not in out
    assert len([line for line in out.splitlines() if "failed meanwhile by another worker" in line]) == 1, out
    trials = _no_running_and_counted_once(tmp_path)
    counted = [t for t in trials if "failed_trial" not in t.system_attrs]
    assert len(counted) == 2 and trials[0].state == TrialState.FAIL
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2  # the budget, once
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 0)
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    assert retry.user_attrs["resumed_from_epoch"] == 1  # the checkpoint the owner left, not removed
    assert sorted(retry.intermediate_values) == [1, 2, 3]
    _only_kept_models_left(tmp_path)


def test_a_trial_failed_by_a_peer_after_its_last_epoch_is_let_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process: the peer's FAIL lands after training, before the result is told."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWEEP_CACHE_DIR", str(tmp_path / "cache"))
    url = project_url(tmp_path)
    write_tiny_spec(tmp_path, n_trials=1, epochs=2)
    create_study("tiny", storage_url=url)
    real_fit, peer = sweep.train.fit, open_storage(url, heartbeat=True)

    def fit_then_partition(*args: object, **kwargs: object) -> object:
        result = real_fit(*args, **kwargs)
        if len(tiny_study(tmp_path).trials) == 1:  # the first trial only; its retry completes
            study = optuna.load_study(study_name="tiny", storage=peer)
            trial_id = study.trials[0]._trial_id
            peer.set_trial_state_values(trial_id, TrialState.FAIL)
            peer.get_heartbeat_stale_trial_callback()(study, peer.get_trial(trial_id))
        return result

    monkeypatch.setattr(sweep.train, "fit", fit_then_partition)
    events: list[tuple[int, str, str | None]] = []
    summary = run_worker(
        "tiny",
        storage_url=url,
        device="cpu",
        threads=1,
        events=WorkerEvents(trial_finished=lambda n, state, value, why: events.append((n, state, why))),
    )
    assert summary.lost == 1 and dict(summary.states) == {"COMPLETE": 1}
    assert events[0][:2] == (0, "FAIL") and "failed meanwhile by another worker" in (events[0][2] or "")
    trials = _no_running_and_counted_once(tmp_path)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].user_attrs["resumed_from_epoch"] == 1


# Loaded by a worker process: every write into the artifact folder gets 1000 bytes onto disk, then ENOSPC.
FULL_DISK = """
import errno
import sweep.artifacts


def copyfileobj(src, dst, *args, **kwargs):
    dst.write(src.read(1000))
    raise OSError(errno.ENOSPC, "No space left on device")


sweep.artifacts.shutil.copyfileobj = copyfileobj
"""


@pytest.fixture(params=["tmpfs", "hook"])
def full_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """An artifact folder on a full disk: a 1 MB tmpfs where this machine lets the test mount one (checkpoints
    are ~100 MB), else ENOSPC raised by a hook in the worker process."""
    folder = tmp_path / "full"
    folder.mkdir()
    if request.param == "hook":
        yield folder, _hooks(tmp_path, FULL_DISK)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder, {}
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_artifact_disk_stops_the_worker_without_failing_the_budget(
    tmp_path: Path, full_disk: tuple[Path, dict[str, str]]
) -> None:
    folder, hooks = full_disk
    create_tiny(tmp_path, n_trials=3, epochs=3)
    proc = start_sweep(tmp_path, "worker", "--threads", "1", "--artifacts", str(folder), **hooks)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 73, out  # EX_CANTCREAT: not restarted into the same full disk by a human
    assert "Traceback" not in out
    # The first trial trains on after its checkpoints fail (one warning), records its result without its
    # final model, and the worker, having hit ENOSPC more than once, takes no second trial.
    assert len([line for line in out.splitlines() if "checkpoint after epoch 1 not stored" in line]) == 1, out
    assert "checkpoint after epoch 2" not in out and "trial 0: final model not stored" in out, out
    assert len([line for line in out.splitlines() if f"the disk of {folder} is full" in line]) == 1, out
    trials = _no_running_and_counted_once(tmp_path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] and trials[0].value is not None
    assert record.FINAL_MODEL.name not in trials[0].user_attrs
    assert sorted(os.listdir(folder)) == []  # no partial file, no temporary file
    # Space freed (another folder): the rest of the budget is run, exactly.
    rest = start_sweep(tmp_path, "worker", "--threads", "1", "--artifacts", str(tmp_path / "artifacts"))
    out = rest.communicate(timeout=600)[0]
    assert rest.returncode == 0, out
    trials = _no_running_and_counted_once(tmp_path)
    assert len(trials) == 3 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def test_a_trial_failing_on_a_full_disk_goes_back_to_the_queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: ENOSPC from training itself (not a checkpoint) hands the trial back, not counted."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWEEP_CACHE_DIR", str(tmp_path / "cache"))
    url = project_url(tmp_path)
    write_tiny_spec(tmp_path, n_trials=3, epochs=1)
    create_study("tiny", storage_url=url)

    def fit(*args: object, **kwargs: object) -> object:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sweep.train, "fit", fit)
    summary = run_worker("tiny", storage_url=url, device="cpu", threads=1)
    assert summary.disk_full is not None and dict(summary.states) == {"FAIL": 2}
    trials = _no_running_and_counted_once(tmp_path)
    # Trial 0 failed on the disk and went back; its retry (1) too; the next retry waits for a worker.
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING]
    assert [t.user_attrs.get("fail_reason") for t in trials[:2]] == ["disk_full", "disk_full"]
    assert [t.system_attrs.get("failed_trial") for t in trials] == [None, 0, 0]  # one of the budget is spent


def _supervised_group(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``sweep worker --workers 2`` in a process group of its own, as a terminal's foreground job is."""
    return subprocess.Popen(
        [str(SWEEP), "worker", "--device", "cpu", "--workers", "2", "--threads", "1"],
        cwd=tmp_path,
        env=project_env(tmp_path, **env),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _until_both_in_epoch_2(proc: subprocess.Popen[str], tmp_path: Path) -> str:
    """Read the group's output until both children have reported epoch 1, then wait for both epoch-1
    checkpoints: stored after the epoch's stop check, so a stop from now on ends epoch 2 (held)."""
    seen = ""
    while not ("[cpu0] trial" in seen and "[cpu1] trial" in seen and seen.count("epoch 1/3") >= 2):
        seen += wait_for_line(proc, "epoch 1/3")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        trials = tiny_study(tmp_path).trials
        if len(trials) == 2 and all(t.user_attrs.get("checkpoint") for t in trials):
            break
        time.sleep(0.05)
    return seen


def test_one_ctrl_c_is_one_graceful_stop_of_a_supervised_group(tmp_path: Path) -> None:
    create_tiny(tmp_path, "data.subset=400", n_trials=2, epochs=3)
    held, hold = held_worker_env(tmp_path)
    group = _supervised_group(tmp_path, held)
    seen = _until_both_in_epoch_2(group, tmp_path)
    os.killpg(group.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
    seen += wait_for_line(group, "stopping workers")
    hold.unlink()
    out = seen + rest_of_output(group, 600)
    assert group.returncode == 0, out
    assert "Traceback" not in out and "second signal" not in out and "stopping workers now" not in out, out
    assert out.count("stopping after the current epoch") == 2, out  # one stop per child
    trials = _no_running_and_counted_once(tmp_path)
    # Each child finished its epoch, checkpointed and handed its trial back.
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert len(stopped) == 2 and all(t.user_attrs["fail_reason"] == "stopped" for t in stopped)
    assert all(t.user_attrs["checkpoint"]["epoch"] == 2 for t in stopped)
    assert sorted(t.state for t in trials if t not in stopped) == [TrialState.WAITING] * 2
    rest = start_sweep(tmp_path, "worker", "--threads", "1")
    out = rest.communicate(timeout=600)[0]
    assert rest.returncode == 0, out
    assert out.count("resuming from epoch 2") == 2, out
    trials = _no_running_and_counted_once(tmp_path)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2
    assert len([t for t in trials if "failed_trial" not in t.system_attrs]) == 2
    _only_kept_models_left(tmp_path)


def test_a_second_ctrl_c_stops_the_group_at_once(tmp_path: Path) -> None:
    create_tiny(tmp_path, "data.subset=400", n_trials=2, epochs=3)
    held, _hold = held_worker_env(tmp_path)  # held for good: only the second Ctrl-C ends the epoch
    group = _supervised_group(tmp_path, held)
    seen = _until_both_in_epoch_2(group, tmp_path)
    os.killpg(group.pid, signal.SIGINT)
    seen += wait_for_line(group, "stopping workers")
    os.killpg(group.pid, signal.SIGINT)
    out = seen + rest_of_output(group, 120)
    assert group.returncode == 128 + signal.SIGINT, out
    assert "stopping workers now" in out and "Traceback" not in out, out
    # Killed in their epochs: the trials are RUNNING until a peer's stale check hands them on, from their
    # epoch-1 checkpoints.
    assert sorted(t.state for t in tiny_study(tmp_path).trials) == [TrialState.RUNNING] * 2
    fast = {"SWEEP_HEARTBEAT_INTERVAL": "1", "SWEEP_GRACE_PERIOD": "2"}
    rest = start_sweep(tmp_path, "worker", "--threads", "1", **fast)
    out = rest.communicate(timeout=600)[0]
    assert rest.returncode == 0, out
    trials = _no_running_and_counted_once(tmp_path)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2
    assert len([t for t in trials if "failed_trial" not in t.system_attrs]) == 2
    _only_kept_models_left(tmp_path)
