"""The three commands through typer's CliRunner, and once through the installed console script."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import LOCAL_URL, SWEEP, local_study, write_tiny_spec
from typer.testing import CliRunner

from sweep.cli import app

runner = CliRunner()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with studies/tiny.toml; the default storage lands under it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SWEEP_STORAGE", raising=False)
    monkeypatch.setenv("SWEEP_CACHE_DIR", str(tmp_path / "cache"))
    write_tiny_spec(tmp_path)
    return tmp_path


def test_help_on_every_command() -> None:
    result = runner.invoke(app, [])
    assert "create" in result.output and "worker" in result.output and "report" in result.output
    for command in (["create"], ["worker"], ["report"], ["status"], ["list"], ["bench", "train"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, result.output
        assert "--storage" in result.output or command[0] == "bench"


def test_bench_commands_are_the_one_bench_cli() -> None:
    """Every option the benches' former argparse entries had is on ``sweep bench``; no bench runs as a module."""
    for command, options in {
        "train": ["--seed-workers", "--data-only", "--compile-backend", "--stem", "--compile"],
        "storage": ["--backends", "--pg-url"],
        "live": ["--html", "--device"],
        "gpu-checks": ["--json"],
    }.items():
        result = runner.invoke(app, ["bench", command, "--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        assert all(option in result.output for option in options), (command, result.output)
    result = runner.invoke(app, ["bench", "storage", "--backends", "sqlite,nope"])
    assert result.exit_code == 2 and "unknown backend 'nope'" in result.output
    for name in ("gpu_checks", "live", "report", "scale", "storage", "sweep", "train"):
        assert not hasattr(importlib.import_module(f"sweep_bench.{name}"), "main"), name


def test_the_cli_starts_without_optuna_for_the_gpu_bench() -> None:
    """scripts/gpu-bench runs ``python -m sweep bench train`` where only PyTorch is installed."""
    from sweep import cli
    from sweep.storage import DEFAULT_URL

    assert cli.DEFAULT_URL == DEFAULT_URL
    code = "import sys, sweep.cli; print(sorted({'optuna', 'sqlalchemy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_create_worker_report_with_cli_runner(workdir: Path) -> None:
    result = runner.invoke(app, ["create", "tiny", "--set", "n_trials=2"])
    assert result.exit_code == 0, result.output
    assert "created study tiny" in result.output
    result = runner.invoke(app, ["worker", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "training on the CPU" in result.output
    assert "trial 0 epoch 1/2" in result.output
    study = local_study()
    assert len(study.trials) == 2
    assert all(t.state.is_finished() for t in study.trials)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    for t in done:
        assert 0.0 <= t.value <= 1.0
        assert 0.0 <= t.user_attrs["test_accuracy"] <= 1.0
        assert t.user_attrs["epochs_run"] == 2 and len(t.user_attrs["epoch_seconds"]) == 2
        assert sorted(t.intermediate_values) == [1, 2]
        assert t.value == t.intermediate_values[2]  # the objective is the last validation accuracy
    result = runner.invoke(app, ["report"])
    assert result.exit_code == 0, result.output
    report = workdir / "storage" / "reports" / "tiny.html"
    assert report.is_file() and str(report) in result.output.replace("\n", "")
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0 and "2 finished of 2" in result.output
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0 and "tiny" in result.output
    # Rerunning a trial from scratch on the CPU reproduces its stored curve (same params, same seed).
    from sweep.service import rerun_trial

    first = study.trials[0]
    rerun = rerun_trial("tiny", 0, storage_url=LOCAL_URL, device="cpu")
    assert rerun.params == first.params
    assert rerun.new_curve == pytest.approx(rerun.stored_curve, abs=1e-6)
    assert rerun.stored_precision == rerun.new_precision == "fp32"
    result = runner.invoke(app, ["rerun", "tiny", "0", "--device", "cpu", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert "stored val acc (fp32)" in result.output and "rerun val acc (fp32)" in result.output
    assert runner.invoke(app, ["rerun", "tiny", "7"]).exit_code == 2
    assert runner.invoke(app, ["rerun", "tiny", "0", "--precision", "fp16"]).exit_code == 2


def test_create_is_idempotent_and_conflicts_change_nothing(workdir: Path) -> None:
    assert runner.invoke(app, ["create", "tiny"]).exit_code == 0
    again = runner.invoke(app, ["create", "tiny"])
    assert again.exit_code == 0 and "already exists" in again.output
    before = local_study().user_attrs["spec"]
    conflict = runner.invoke(app, ["create", "tiny", "--set", "epochs=5"])
    assert conflict.exit_code == 2
    assert "different spec" in conflict.output and "epochs" in conflict.output
    assert local_study().user_attrs["spec"] == before
    other = runner.invoke(app, ["create", "tiny", "--set", "epochs=5", "--name", "tiny5"])
    assert other.exit_code == 0
    assert local_study("tiny5").user_attrs["spec"]["epochs"] == 5


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["create", "nope"], "SPEC = 'nope'"),
        (["create", "tiny", "--set", "bogus=1"], "bogus"),
        (["create", "tiny", "--set", "epochs"], "--set"),
        (["create", "tiny", "--set", "data.name=mnist"], "data.name = 'mnist'"),
        (["create", "tiny", "--set", "params.lr.low=1"], "params.lr.low"),
        (["create", "tiny", "--set", "params.batch_size.choices=[]"], "params.batch_size.choices"),
        (["create", "tiny", "--set", "model.arch=vgg"], "model.arch"),
        (["create", "tiny", "--set", "pruner.type=asha"], "pruner.type"),
        (["create", "tiny", "--set", 'sampler.n_startup_trials="x"'], "sampler.n_startup_trials"),
        (["create", "tiny", "--storage", "mysql://u:pw@h/db"], "not supported"),
        (["create", "tiny", "--storage", "not a url"], "malformed"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(workdir: Path, args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert not (workdir / "storage" / "sweep.db").exists()


def test_unknown_study_and_empty_storage(workdir: Path) -> None:
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2 and "no sweep database" in result.output
    assert runner.invoke(app, ["create", "tiny"]).exit_code == 0
    for command in (["worker", "ghost"], ["status", "ghost"], ["report", "ghost"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "'ghost' not found" in result.output and "tiny" in result.output


def test_worker_fails_before_taking_a_trial_when_data_is_missing(workdir: Path) -> None:
    result = runner.invoke(app, ["create", "tiny", "--set", "data.name=imagefolder", "--set", "data.root=nowhere"])
    assert result.exit_code == 0
    assert "warning" in result.output and "nowhere" in result.output
    result = runner.invoke(app, ["worker"])
    assert result.exit_code == 2
    assert "nowhere" in result.output
    assert local_study().trials == []  # no budget burnt


def test_password_is_masked_in_errors(workdir: Path) -> None:
    url = "postgresql+psycopg://sweep:hunter2@127.0.0.1:9/nodb"
    result = runner.invoke(app, ["list", "--storage", url])
    assert result.exit_code == 2
    assert "hunter2" not in result.output and "***" in result.output


def test_storage_from_environment(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEP_STORAGE", "sqlite:///elsewhere/s.db")
    assert runner.invoke(app, ["create", "tiny"]).exit_code == 0
    assert (workdir / "elsewhere" / "s.db").exists()
    assert not (workdir / "storage" / "sweep.db").exists()


@pytest.mark.slow
def test_console_script_end_to_end(workdir: Path) -> None:
    env = {**os.environ, "SWEEP_STORAGE": "sqlite:///storage/cli.db"}

    def sweep(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SWEEP), *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)

    created = sweep("create", "tiny", "--set", "n_trials=1", "--set", "epochs=1")
    assert created.returncode == 0, created.stderr
    ran = sweep("worker", "tiny", "--threads", "1")
    assert ran.returncode == 0, ran.stderr
    assert "trial 0 COMPLETE" in ran.stdout
    report = sweep("report", "tiny", "--output", "out/r.html")
    assert report.returncode == 0, report.stderr
    assert (workdir / "out" / "r.html").stat().st_size > 100_000
    bad = sweep("create", "tiny", "--set", "epochs=0")
    assert bad.returncode == 2 and "epochs = 0" in bad.stderr and "Traceback" not in bad.stderr


def test_report_status_and_list_never_import_torch(workdir: Path) -> None:
    assert runner.invoke(app, ["create", "tiny"]).exit_code == 0
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from sweep.cli import app\n"
        "r = CliRunner()\n"
        "for args in (['status'], ['list'], ['report', '--output', 'r.html']):\n"
        "    res = r.invoke(app, args)\n"
        "    assert res.exit_code == 0, res.output\n"
        "bad = sorted(m for m in ('torch', 'torchvision') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without GPUs")
def test_unknown_gpu_lists_visible_gpus(workdir: Path) -> None:
    assert runner.invoke(app, ["create", "tiny"]).exit_code == 0
    result = runner.invoke(app, ["worker", "--gpu", "3"])
    assert result.exit_code == 2 and "--gpu 3: no such GPU; visible GPUs: none" in result.output
    result = runner.invoke(app, ["worker", "--gpus", "all"])
    assert result.exit_code == 2 and "no CUDA GPU is visible" in result.output
    result = runner.invoke(app, ["worker", "--gpus", "some"])
    assert result.exit_code == 2 and "'some' is not one of 'all'" in result.output


@pytest.mark.slow
def test_a_bad_environment_value_is_one_line_where_it_is_used(workdir: Path) -> None:
    env = {**os.environ, "SWEEP_HEARTBEAT_INTERVAL": "10s"}

    def sweep(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SWEEP), *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)

    assert sweep("create", "tiny").returncode == 0
    written = sweep("report", "tiny", "--plotlyjs", "cdn")  # no heartbeat here: the variable is never read
    assert written.returncode == 0 and "Traceback" not in written.stderr, written.stderr
    listed = sweep("list")  # reads heartbeats (idle or running): the same one line
    assert listed.returncode == 2 and listed.stderr.startswith("error: SWEEP_HEARTBEAT_INTERVAL = '10s'")
    ran = sweep("worker", "tiny", "--threads", "1")
    lines = ran.stderr.strip().splitlines()
    assert ran.returncode == 2 and len(lines) == 1, ran.stderr
    assert "SWEEP_HEARTBEAT_INTERVAL = '10s': a whole number of seconds, at least 1" in lines[0]


# --------------------------------------------------------------------------- one CLI convention


def test_version_and_completion() -> None:
    from sweep import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"sweep {__version__}\n"
    done = subprocess.run(
        [str(SWEEP), "--show-completion", "bash"],
        capture_output=True,
        text=True,
        timeout=120,
        # A minimal environment: in full-suite runs the child inherited something an earlier test left
        # in this process's environment and answered "Shell  not supported." (what Click says when a
        # completion request such as _SWEEP_COMPLETE is set); the console script needs none of it.
        env={k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH", "LANG")}
        | {"SHELL": "/bin/bash"},
    )
    assert done.returncode == 0 and "_sweep_completion" in done.stdout


def test_every_environment_variable_is_in_the_help() -> None:
    from sweep.cli import ENVIRONMENT

    root = Path(__file__).resolve().parents[1]
    used = set()
    for path in [*root.joinpath("sweep").rglob("*.py"), *root.joinpath("sweep_bench").rglob("*.py")]:
        used |= set(re.findall(r"\"(SWEEP_[A-Z_]+)\"", path.read_text()))
    assert used <= set(ENVIRONMENT), used - set(ENVIRONMENT)
    text = runner.invoke(app, ["--help"], terminal_width=200).output
    assert all(name in text for name in ENVIRONMENT)


def test_json_on_every_reporting_command(workdir: Path) -> None:
    def doc(*args: str) -> Any:
        result = runner.invoke(app, [*args, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    created = doc("create", "tiny", "--set", "n_trials=1", "--set", "epochs=1")
    assert created == {
        "study": "tiny",
        "created": True,
        "storage": "sqlite:///storage/sweep.db",
        "n_trials": 1,
        "epochs": 1,
        "params": ["lr", "batch_size", "frozen_layers", "aug_strength"],
        "warnings": [],
        "warm_started": 0,
    }
    assert doc("create", "tiny", "--set", "n_trials=1", "--set", "epochs=1")["created"] is False
    assert doc("pause", "tiny") == {
        "study": "tiny",
        "state": "paused",
        "n_trials": 1,
        "previous_n_trials": None,
        "running": 0,
    }
    assert doc("resume", "tiny")["state"] == "running"
    assert doc("extend", "tiny", "--n-trials", "2")["previous_n_trials"] == 1
    (listed,) = doc("list")
    assert listed == doc("status", "tiny") and listed["n_trials"] == 2 and listed["state"] == "idle"
    assert Path(doc("report", "tiny", "--plotlyjs", "cdn")["path"]).is_file()
    specs = doc("specs")
    assert "tiny" in {s["name"] for s in specs}
