"""pause / resume / extend through the database: the commands, and real worker processes obeying them."""

from __future__ import annotations

import json
import re
import subprocess
import time
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
    wait_for_beats,
    wait_for_line,
    write_tiny_spec,
)
from optuna.trial import TrialState
from typer.testing import CliRunner

from sweep.cli import app
from sweep.control import SweepState, state_of
from sweep.service import create_study
from sweep.storage import open_storage

runner = CliRunner()


def _cli(url: str, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--storage", url])
    return result.exit_code, result.output.replace("\n", "")


def test_commands_change_state_and_budget_and_refuse_bad_input(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    write_tiny_spec(tmp_path, n_trials=2)
    create_study("tiny", storage_url=url, studies_dir=tmp_path / "studies")
    study = optuna.load_study(study_name="tiny", storage=url)
    assert _cli(url, "resume", "tiny") == (2, "error: study 'tiny' is not paused; nothing to resume")
    code, out = _cli(url, "pause", "tiny")
    assert code == 0 and "now paused" in out
    assert _cli(url, "pause", "tiny") == (2, "error: study 'tiny' is already paused; resume it: sweep resume tiny")
    assert json.loads(_cli(url, "status", "tiny", "--json")[1])["state"] == "paused"
    code, out = _cli(url, "resume", "tiny")
    assert code == 0 and "now running" in out
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5))
    status = json.loads(_cli(url, "status", "tiny", "--json")[1])
    assert status["state"] == "finished" and status["n_trials"] == 2
    code, out = _cli(url, "extend", "tiny", "--n-trials", "1")
    assert code == 2 and "--n-trials 1: 2 trials of 'tiny' are already finished, running or queued" in out
    assert _cli(url, "extend", "tiny", "--n-trials", "0")[0] == 2
    assert _cli(url, "extend", "nope", "--n-trials", "5")[0] == 2
    code, out = _cli(url, "extend", "tiny", "--n-trials", "5")
    assert code == 0 and "budget 2 -> 5" in out
    status = json.loads(_cli(url, "status", "tiny", "--json")[1])
    assert status["state"] == "idle" and status["n_trials"] == 5  # trials left, no worker beating
    code, out = _cli(url, "list")
    assert code == 0 and re.search(r"tiny\s*│\s*idle\s*│\s*5", out)


def test_help_of_the_new_commands() -> None:
    for command in ("pause", "resume", "extend", "export", "predict", "stop", "delete", "enqueue", "specs"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, result.output
    assert "--wait" in runner.invoke(app, ["worker", "--help"]).output


def test_state_of_counts_retries_once_and_running_or_queued_trials() -> None:
    def t(state: TrialState, **system: object) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(
            state=state, value=0.1 if state == TrialState.COMPLETE else None, system_attrs=system
        )

    done = [t(TrialState.COMPLETE), t(TrialState.FAIL)]
    assert state_of({}, 2, done) == SweepState.FINISHED
    assert state_of({}, 2, [*done, t(TrialState.WAITING, failed_trial=1)]) == SweepState.RUNNING
    assert state_of({"n_trials": 3}, 2, done) == SweepState.RUNNING
    assert state_of({"control": "paused"}, 2, done) == SweepState.PAUSED


@pytest.mark.slow
def test_pause_two_training_workers_then_extend_and_resume(tmp_path: Path) -> None:
    fast = {"SWEEP_HEARTBEAT_INTERVAL": "1"}
    create_tiny(tmp_path, "data.subset=800", n_trials=3, epochs=6)
    held, hold = held_worker_env(tmp_path)
    workers = [start_sweep(tmp_path, "worker", "--threads", "1", **held, **fast) for _ in range(2)]
    outputs = [wait_for_line(w, "epoch 1/6") for w in workers]  # both are training, held in epoch 2
    paused = subprocess.run(
        [str(SWEEP), "pause", "tiny"], cwd=tmp_path, env=project_env(tmp_path), text=True, capture_output=True
    )
    assert paused.returncode == 0, paused.stderr
    running = [t._trial_id for t in tiny_study(tmp_path).trials if t.state == TrialState.RUNNING]
    wait_for_beats(project_url(tmp_path), running)  # each worker's pause check after a beat has seen the pause
    hold.unlink()
    for i, w in enumerate(workers):
        outputs[i] += rest_of_output(w, 300)
        assert w.returncode == 0, outputs[i]
        assert "study paused: no new trials until `sweep resume`; exiting" in outputs[i]
    trials = tiny_study(tmp_path).trials
    # Both trials went back to the queue after the epoch in flight, each with its checkpoint.
    handed_back = [t for t in trials if t.state == TrialState.FAIL]
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert len(handed_back) == 2 and len(queued) == 2 and not [t for t in trials if t.state.name == "RUNNING"]
    assert all(t.user_attrs["fail_reason"] == "stopped" for t in handed_back)
    assert all(t.user_attrs["checkpoint"]["epoch"] == t.user_attrs["epochs_run"] for t in queued)

    # A worker that waits while paused; the budget grows by one; resume: it finishes the study.
    waiter = start_sweep(tmp_path, "worker", "--threads", "1", "--wait", **fast)
    outputs.append(wait_for_line(waiter, "waiting for `sweep resume`"))
    for command in (["extend", "tiny", "--n-trials", "4"], ["resume", "tiny"]):
        done = subprocess.run(
            [str(SWEEP), *command], cwd=tmp_path, env=project_env(tmp_path), text=True, capture_output=True
        )
        assert done.returncode == 0, done.stderr
    outputs[-1] += rest_of_output(waiter, 600)
    assert waiter.returncode == 0, outputs[-1]

    trials = tiny_study(tmp_path).trials
    counted = [t for t in trials if "failed_trial" not in t.system_attrs]
    assert len(counted) == 4  # the budget, exactly: hand-backs are not counted twice
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and all(sorted(t.intermediate_values) == list(range(1, 7)) for t in complete)
    by_number = {t.number: t for t in trials}
    for t in complete:
        if "retry_of" in t.user_attrs:
            before = by_number[t.user_attrs["retry_of"]]
            assert t.user_attrs["resumed_from_epoch"] == before.user_attrs["epochs_run"] >= 1
    # No epoch was trained twice: 4 trials × 6 epochs, counted over every worker's output.
    epochs = re.findall(r"trial \d+ epoch \d/6", "".join(outputs))
    assert len(epochs) == 4 * 6, epochs
    status = json.loads(
        subprocess.run(
            [str(SWEEP), "status", "tiny", "--json"],
            cwd=tmp_path,
            env=project_env(tmp_path),
            text=True,
            capture_output=True,
            check=True,
        ).stdout
    )
    assert status["state"] == "finished" and status["n_trials"] == 4


def test_stop_and_delete_refuse_bad_input(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    write_tiny_spec(tmp_path, n_trials=2)
    create_study("tiny", storage_url=url, studies_dir=tmp_path / "studies")
    code, out = _cli(url, "stop", "tiny")
    assert code == 0 and "now stopped" in out
    assert _cli(url, "stop", "tiny") == (2, "error: study 'tiny' is already stopped")
    reopen = "error: study 'tiny' is stopped; reopen it: sweep extend tiny --n-trials N"
    assert _cli(url, "resume", "tiny") == (2, reopen)
    assert _cli(url, "pause", "tiny")[0] == 2
    assert json.loads(_cli(url, "status", "tiny", "--json")[1])["state"] == "stopped"
    code, out = _cli(url, "extend", "tiny", "--n-trials", "3")
    assert code == 0 and "now running" in out
    assert _cli(url, "delete", "tiny") == (
        2,
        "error: sweep delete removes study 'tiny', its 0 trials and their checkpoints and kept models for "
        "good; pass --yes",
    )
    assert _cli(url, "delete", "nope", "--yes")[0] == 2
    assert optuna.get_all_study_names(url) == ["tiny"]


@pytest.mark.slow
def test_stop_a_training_worker_then_extend_resumes_and_delete_removes_every_file(tmp_path: Path) -> None:
    fast = {"SWEEP_HEARTBEAT_INTERVAL": "1"}
    create_tiny(tmp_path, "data.subset=800", "checkpoint.keep_best=1", n_trials=2, epochs=4)
    held, hold = held_worker_env(tmp_path)
    worker = start_sweep(tmp_path, "worker", "--threads", "1", "--wait", **held, **fast)
    output = wait_for_line(worker, "epoch 1/4")  # training, held in epoch 2
    url = project_url(tmp_path)
    code, out = _cli(url, "stop", "tiny")
    assert code == 0 and "now stopped" in out
    deadline = time.monotonic() + 60
    while not tiny_study(tmp_path).user_attrs.get("control") == "stopped" and time.monotonic() < deadline:
        time.sleep(0.1)
    running = [t._trial_id for t in tiny_study(tmp_path).trials if t.state == TrialState.RUNNING]
    wait_for_beats(url, running)  # the worker's pause check after a beat has seen the stop
    hold.unlink()
    output += rest_of_output(worker, 300)
    assert worker.returncode == 0, output  # even with --wait: a stopped study has nothing to wait for
    assert "study stopped (sweep stop): no new trials; exiting" in output
    trials = tiny_study(tmp_path).trials
    (queued,) = [t for t in trials if t.state == TrialState.WAITING]
    assert queued.user_attrs["checkpoint"]["epoch"] == queued.user_attrs["epochs_run"] >= 2  # nothing lost
    assert not [t for t in trials if t.state == TrialState.RUNNING]

    assert _cli(url, "extend", "tiny", "--n-trials", "2")[0] == 0  # reopens the stopped study
    done = start_sweep(tmp_path, "worker", "--threads", "1", **fast)
    output = done.communicate(timeout=600)[0]
    assert done.returncode == 0, output
    trials = tiny_study(tmp_path).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2 and any(t.user_attrs.get("resumed_from_epoch", 0) >= 2 for t in complete)
    artifacts = tmp_path / "artifacts"  # beside the SQLite file
    assert any(artifacts.iterdir())  # the kept model
    code, out = _cli(url, "delete", "tiny", "--yes")
    assert code == 0 and out.startswith("deleted study tiny: ") and " 1 artifact files" in out, out
    assert optuna.get_all_study_names(url) == [] and not any(artifacts.iterdir())


def test_status_tells_running_from_idle_by_live_heartbeats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    monkeypatch.setenv("SWEEP_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("SWEEP_GRACE_PERIOD", "2")
    write_tiny_spec(tmp_path, n_trials=2)
    create_study("tiny", storage_url=url, studies_dir=tmp_path / "studies")
    assert json.loads(_cli(url, "status", "tiny", "--json")[1])["state"] == "idle"  # no worker yet
    storage = open_storage(url, heartbeat=True)
    trial_id = storage.create_new_trial(storage.get_study_id_from_name("tiny"))
    storage.record_heartbeat(trial_id)  # a worker beating now
    status = json.loads(_cli(url, "status", "tiny", "--json")[1])
    assert status["state"] == "running"
    assert status["running"] == [{"number": 0, "host": "?", "device": "?", "epoch": 0, "last_acc": None}]
    code, out = _cli(url, "status", "tiny")
    assert code == 0 and re.search(r"running.*trial.*host.*device.*epoch", out) and "│ 0 " in out
    deadline = time.monotonic() + 30
    while json.loads(_cli(url, "status", "tiny", "--json")[1])["state"] != "idle":  # its beats stopped
        assert time.monotonic() < deadline, "a trial without heartbeats for the grace period still counts as live"
        time.sleep(0.2)
    storage.record_heartbeat(trial_id)
    assert json.loads(_cli(url, "status", "tiny", "--json")[1])["state"] == "running"


def test_max_hours_stops_new_trials_once_the_compute_is_spent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    write_tiny_spec(tmp_path, n_trials=10, epochs=1)
    # A budget of 0.36 ms: any trial's first epoch spends it, so one worker runs exactly one trial.
    create_study("tiny", storage_url=url, studies_dir=tmp_path / "studies", overrides=["max_hours=1e-7"])
    from sweep.service import run_worker

    summary = run_worker("tiny", storage_url=url, device="cpu", threads=1)
    study = optuna.load_study(study_name="tiny", storage=url)
    spent = sum(sum(t.user_attrs["epoch_seconds"]) for t in study.trials)
    assert len(study.trials) == 1 and sum(summary.states.values()) == 1 and spent > 1e-7 * 3600
    status = json.loads(_cli(url, "status", "tiny", "--json")[1])
    assert status["state"] == "finished" and status["max_hours"] == 1e-7 and status["n_trials"] == 10
    assert status["compute_hours"] == pytest.approx(spent / 3600, abs=1e-6)


def test_compute_seconds_counts_a_resumed_retry_once() -> None:
    from sweep.control import compute_seconds

    first = optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"epoch_seconds": [1.0, 2.0]})
    retry = optuna.trial.create_trial(
        state=TrialState.COMPLETE,
        value=0.5,
        system_attrs={"failed_trial": 0},
        user_attrs={"epoch_seconds": [1.0, 2.0, 4.0], "resumed_from_epoch": 2},
    )
    assert compute_seconds([first, retry]) == 7.0
