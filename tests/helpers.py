"""What many tests share: small study specs (synthetic data, tiny images, seconds per trial on a CPU), the
installed console script run on a project folder, and waits that poll for what they wait for."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import optuna
import sqlalchemy

from sweep.storage import open_storage, validate_url

T = TypeVar("T")

SWEEP = Path(sys.executable).with_name("sweep")  # the installed console script
LOCAL_URL = "sqlite:///storage/sweep.db"  # sweep's default storage, relative to the working directory

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
    path.write_text(
        TINY_SPEC.format(
            n_trials=n_trials,
            epochs=epochs,
            sampler=sampler,
            pruner=pruner,
            pruner_args=pruner_args,
            lr_low=lr_low,
            lr_high=lr_high,
        )
    )
    return path


# Loaded through PYTHONPATH by worker processes a test must catch mid-trial (held_worker_env): each
# trains its first epoch, then holds after training its second while the HOLD file exists, so that
# a pause or a kill surely lands in a trial (a tiny trial can otherwise finish all its epochs before
# the test has even read the study).
HOLD_HOOK = """
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
"""


def local_study(name: str = "tiny") -> optuna.Study:
    """Study ``name`` in the default storage of the working directory (LOCAL_URL)."""
    return optuna.load_study(study_name=name, storage=LOCAL_URL)


# A project folder: studies/tiny.toml, the SQLite file sweep.db beside it unless a test wrote another URL
# to the file storage-url (tests run on PostgreSQL), SWEEP_CACHE_DIR under it; ``sweep`` runs in it.


def project_url(folder: Path) -> str:
    """The project's storage: the SQLite file, unless a test wrote another URL (tests run on PostgreSQL)."""
    marker = folder / "storage-url"
    return marker.read_text() if marker.exists() else f"sqlite:///{folder / 'sweep.db'}"


def project_env(folder: Path, **extra: str) -> dict[str, str]:
    """The environment ``sweep`` runs in on the project: its storage and cache, then ``extra``."""
    return {**os.environ, "SWEEP_STORAGE": project_url(folder), "SWEEP_CACHE_DIR": str(folder / "cache"), **extra}


def start_sweep(folder: Path, *args: str, **extra: str) -> subprocess.Popen[str]:
    """``sweep ARGS`` started on the project, its output and errors merged on its stdout."""
    return subprocess.Popen(
        [str(SWEEP), *args],
        cwd=folder,
        env=project_env(folder, **extra),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def tiny_study(folder: Path) -> optuna.Study:
    """The project's study ``tiny``."""
    return optuna.load_study(study_name="tiny", storage=open_storage(project_url(folder)))


def create_tiny(folder: Path, *sets: str, url: str | None = None, **kw: object) -> None:
    """Write studies/tiny.toml (``kw``: write_tiny_spec's) and ``sweep create tiny --set S...`` it, in ``url``
    when given (remembered for the project), else in the project's SQLite file."""
    if url is not None:
        (folder / "storage-url").write_text(url)
    write_tiny_spec(folder, **kw)  # type: ignore[arg-type]
    args = ["create", "tiny"] + [a for s in sets for a in ("--set", s)]
    subprocess.run([str(SWEEP), *args], cwd=folder, env=project_env(folder), check=True, capture_output=True)


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


def poll_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Call ``predicate`` until it returns something true, and return that; fail after ``timeout`` seconds,
    saying ``what`` never happened."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)


def heartbeats(url: str) -> dict[int, object]:
    """The last heartbeat of each trial that has one, as the storage keeps it (the database's clock: whole
    seconds on SQLite)."""
    engine = sqlalchemy.create_engine(validate_url(url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.text("SELECT trial_id, heartbeat FROM trial_heartbeats")).all()
    finally:
        engine.dispose()
    return {trial_id: beat for trial_id, beat in rows}


def wait_for_beats(url: str, trial_ids: Iterable[int], beats: int = 2, timeout: float = 60) -> None:
    """Wait until each trial of ``trial_ids`` has recorded ``beats`` new heartbeats since this call.

    A worker checks its study's control attribute (``sweep pause``, ``sweep stop``) right after each
    heartbeat of its trial, on the same thread: once a trial's heartbeat changed twice after a control
    change, the check that followed the first of those beats has run and seen it. (Beats are at least an
    interval apart, so on SQLite's whole seconds too each beat changes the value; a poll that misses one
    only waits longer.)
    """
    first = heartbeats(url)
    seen = {trial_id: [first.get(trial_id)] for trial_id in trial_ids}
    assert seen, "no trial to wait for"

    def beaten() -> bool:
        now = heartbeats(url)
        for trial_id, values in seen.items():
            if now.get(trial_id) != values[-1]:
                values.append(now.get(trial_id))
        return all(len(values) > beats for values in seen.values())

    poll_until(beaten, timeout, f"{beats} new heartbeats of trials {sorted(seen)}")
