"""Database faults, caused for real: PostgreSQL stopped mid-trial (pg_ctl), a partition made by a TCP proxy
that stops forwarding without closing, a process killed before its trial's first beat, many processes
opening a fresh database, a stopped lock holder. Each sweep case asserts the supervisor's exit code,
COMPLETE + PRUNED = budget, nothing left RUNNING, no trial counted twice, no traceback in the logs.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from conftest import PG_CLUSTER, _libpq_url, postgres_installed
from helpers import SWEEP, held_worker_env, write_tiny_spec
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from sweep import storage as sweep_storage
from sweep.outage import EX_UNAVAILABLE, Patience
from sweep.storage import budget_lock, open_storage

pytestmark = [pytest.mark.faults, pytest.mark.slow]
FAST_BEATS = {"SWEEP_HEARTBEAT_INTERVAL": "1", "SWEEP_GRACE_PERIOD": "10"}


# --------------------------------------------------------------------------- a PostgreSQL of the tests' own


class Cluster:
    """A PostgreSQL cluster these tests may stop and start (the session's is shared by other tests)."""

    def __init__(self, where: str, url: str) -> None:
        self.where = where
        self.url = url

    def stop(self) -> None:
        data = Path(self.where) / "data"
        bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
        as_pg = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        subprocess.run(
            [*as_pg, str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w"],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        # Started again on its old port (scripts/pg-test-cluster start on a stopped cluster).
        subprocess.run([str(PG_CLUSTER), "start", self.where], check=True, capture_output=True, timeout=180)

    def fresh_database(self) -> str:
        import psycopg

        name = f"sweep_f_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(_libpq_url(self.url), autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return make_url(self.url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if not postgres_installed():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; CI must run these tests", pytrace=False)
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    where = tempfile.mkdtemp(prefix="sweep-faults-pg-")
    env = {**os.environ, "PG_TEST_OPTS": "-c fsync=off -c full_page_writes=off"}
    started = subprocess.run([str(PG_CLUSTER), "start", where], capture_output=True, text=True, timeout=180, env=env)
    if started.returncode != 0:
        pytest.fail(f"scripts/pg-test-cluster start failed: {started.stderr[-2000:]}", pytrace=False)
    try:
        yield Cluster(where, started.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run([str(PG_CLUSTER), "stop", where], capture_output=True, timeout=120)


# --------------------------------------------------------------------------- a proxy that can partition


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of ``target``. ``partition()`` stops forwarding in both directions
    without closing anything (the far end's kernel still acknowledges: only timeouts can tell); ``heal()``
    forwards again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.flowing = threading.Event()
        self.flowing.set()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def partition(self) -> None:
        self.flowing.clear()

    def heal(self) -> None:
        self.flowing.set()

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                self.flowing.wait()
                ready, _, _ = select.select([src], [], [], 0.2)
                if not ready or not self.flowing.is_set():
                    continue
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --------------------------------------------------------------------------- sweeps in real processes


def _env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "SWEEP_STORAGE": url,
        "SWEEP_CACHE_DIR": str(tmp_path / "cache"),
        "SWEEP_ARTIFACTS": str(tmp_path / "artifacts"),
        **extra,
    }


def _create(tmp_path: Path, url: str, **spec: object) -> None:
    write_tiny_spec(tmp_path, **spec)  # type: ignore[arg-type]
    subprocess.run(
        [str(SWEEP), "create", "tiny"],
        cwd=tmp_path,
        env=_env(tmp_path, url),
        check=True,
        capture_output=True,
        timeout=300,
    )


class Output:
    """A process's merged output, read by a thread: the test waits for lines without blocking on it."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.lines.append("")  # EOF
            self.changed.notify_all()

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, count: int = 1, timeout: float = 300) -> float:
        """Wait until ``needle`` appeared on ``count`` lines; return when (time.monotonic())."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while sum(needle in line for line in self.lines) < count:
                if self.lines and self.lines[-1] == "":
                    raise AssertionError(f"{needle!r} never appeared {count}x; the process ended:\n{self.text()}")
                if not self.changed.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise AssertionError(f"{needle!r} never appeared {count}x:\n{self.text()}")
        return time.monotonic()

    def finish(self, timeout: float = 600) -> int:
        code = self.proc.wait(timeout=timeout)
        with self.changed:
            self.changed.wait_for(lambda: bool(self.lines) and self.lines[-1] == "", timeout=30)
        return code


def _supervised(tmp_path: Path, url: str, **extra: str) -> Output:
    proc = subprocess.Popen(
        [str(SWEEP), "worker", "--device", "cpu", "--workers", "2", "--threads", "1"],
        cwd=tmp_path,
        env=_env(tmp_path, url, **extra),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return Output(proc)


def _wait_checkpointed(url: str, n: int) -> None:
    """Wait until ``n`` running trials have stored their epoch checkpoint (just after the epoch's line)."""
    study = optuna.load_study(study_name="tiny", storage=open_storage(url))
    deadline = time.monotonic() + 120
    while sum(bool(t.user_attrs.get("checkpoint")) for t in study.get_trials(deepcopy=False)) < n:
        assert time.monotonic() < deadline, "the epoch checkpoints never appeared"
        time.sleep(0.1)


def _assert_budget_kept(url: str, budget: int, out: str) -> list[optuna.trial.FrozenTrial]:
    """COMPLETE + PRUNED = budget, nothing RUNNING or WAITING, each original number finished once,
    no traceback in the logs."""
    trials = optuna.load_study(study_name="tiny", storage=open_storage(url)).trials
    states = [t.state for t in trials]
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == budget, (states, out)
    assert not any(s in (TrialState.RUNNING, TrialState.WAITING) for s in states), (states, out)
    # A retry carries the number of the trial it replaces: every number ends once, as one trial.
    finished = [t.user_attrs.get("retry_of", t.number) for t in trials if t.state != TrialState.FAIL]
    assert sorted(finished) == sorted(set(finished)) and len(finished) == budget, (finished, out)
    assert "Traceback" not in out, out
    return trials


def _held_sweep(tmp_path: Path, url: str, **extra: str) -> tuple[Output, Path]:
    """A study of 2 trials × 3 epochs and `sweep worker --workers 2` on it, returned once both children
    are in their second epoch, held there (tests/helpers.py) until the returned file is removed, with
    their epoch-1 checkpoints stored."""
    _create(tmp_path, url, n_trials=2, epochs=3)
    held, hold = held_worker_env(tmp_path)
    sweep = _supervised(tmp_path, url, **held, **extra)
    sweep.wait_for("epoch 1/3", count=2)
    _wait_checkpointed(url, 2)
    return sweep, hold


def _pause(seconds: float) -> None:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        time.sleep(0.2)


@pytest.mark.parametrize("down_s", [5, 60])
def test_postgres_stopped_mid_trial_is_waited_out(tmp_path: Path, cluster: Cluster, down_s: int) -> None:
    url = cluster.fresh_database()
    sweep, hold = _held_sweep(tmp_path, url, **FAST_BEATS)
    cluster.stop()
    sweep.wait_for("database unreachable", count=2)  # each child's heartbeat noticed
    _pause(down_s)
    cluster.start()
    hold.unlink()
    sweep.wait_for("database back after", count=2)
    assert sweep.finish() == 0, sweep.text()
    trials = _assert_budget_kept(url, 2, sweep.text())
    # Nothing was retried, not even after 60 s without a heartbeat (6 grace periods): no epoch lost.
    assert all(t.state != TrialState.FAIL for t in trials), sweep.text()


def test_postgres_away_past_the_patience_exits_69_and_is_restarted(tmp_path: Path, cluster: Cluster) -> None:
    url = cluster.fresh_database()
    sweep, hold = _held_sweep(
        tmp_path, url, SWEEP_DB_PATIENCE="3", SWEEP_HEARTBEAT_INTERVAL="1", SWEEP_GRACE_PERIOD="3"
    )
    cluster.stop()
    sweep.wait_for("database unreachable", count=2)
    hold.unlink()  # the epochs end: their reports wait for the database, then give up
    sweep.wait_for(f"exiting with code {EX_UNAVAILABLE}", count=2)
    sweep.wait_for("the database stayed unreachable; restarting it in", count=2)
    cluster.start()
    assert sweep.finish() == 0, sweep.text()
    trials = _assert_budget_kept(url, 2, sweep.text())
    # The children's trials were failed as stale by their restarted successors and resumed from their
    # epoch-1 checkpoints: what was lost is the epoch in progress.
    retried = [t for t in trials if t.user_attrs.get("retry_of") is not None]
    assert len(retried) == 2 and all(t.user_attrs["resumed_from_epoch"] >= 1 for t in retried), sweep.text()


def test_a_partition_is_noticed_in_seconds_and_waited_out(tmp_path: Path, cluster: Cluster) -> None:
    direct = make_url(cluster.fresh_database())
    proxy = Proxy((direct.host or "127.0.0.1", direct.port or 5432))
    url = direct.set(port=proxy.port).render_as_string(hide_password=False)
    sweep, hold = _held_sweep(tmp_path, url, **FAST_BEATS)
    proxy.partition()
    cut = time.monotonic()
    noticed = sweep.wait_for("database unreachable", count=1, timeout=120) - cut
    print(f"\npartition noticed after {noticed:.1f} s")  # the figure the README quotes (-s shows it)
    _pause(60 - (time.monotonic() - cut))
    proxy.heal()
    hold.unlink()
    sweep.wait_for("database back after", count=2)
    assert sweep.finish() == 0, sweep.text()
    _assert_budget_kept(url, 2, sweep.text())


# --------------------------------------------------------------------------- no trial without a heartbeat


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sweep.db'}"
    return str(request.getfixturevalue("pg_fresh_url"))


def test_a_trial_is_created_with_its_first_heartbeat(any_url: str) -> None:
    storage = open_storage(any_url, heartbeat=True)
    study = optuna.create_study(storage=storage, study_name="s")
    trial_id = storage.create_new_trial(study._study_id)
    assert trial_id in _beaten(storage)
    waiting = storage.create_new_trial(
        study._study_id, template_trial=optuna.trial.create_trial(state=TrialState.WAITING)
    )
    assert waiting not in _beaten(storage)
    assert sweep_storage.pop_waiting_trial(study) == waiting  # taken with its first beat too
    assert waiting in _beaten(storage)


def _beaten(storage: optuna.storages.RDBStorage) -> set[int]:
    return set(_beats_of(storage))


def test_a_running_trial_without_a_heartbeat_is_failed_after_the_grace_period(tmp_path: Path, any_url: str) -> None:
    # The state a process killed between creating its trial and beating it left behind before the two
    # were one transaction (and still leaves with Optuna's own storage): RUNNING, no heartbeat row.
    _create(tmp_path, any_url, n_trials=2, epochs=1)
    plain = optuna.storages.RDBStorage(any_url)
    orphan = optuna.load_study(study_name="tiny", storage=plain).ask()
    assert orphan.number == 0 and orphan._trial_id not in _beaten(plain)
    worker = subprocess.run(
        [str(SWEEP), "worker", "--threads", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(tmp_path, any_url, SWEEP_HEARTBEAT_INTERVAL="1", SWEEP_GRACE_PERIOD="2"),
        timeout=600,
    )
    assert worker.returncode == 0, worker.stdout + worker.stderr
    trials = _assert_budget_kept(any_url, 2, worker.stdout + worker.stderr)
    assert trials[0].state == TrialState.FAIL  # failed as stale, and its retry counted in its place
    assert [t.user_attrs.get("retry_of") for t in trials].count(0) == 1


def test_a_heartbeat_is_not_held_up_by_a_stuck_call(pg_fresh_url: str) -> None:
    storage = open_storage(pg_fresh_url, heartbeat=True)
    study = optuna.create_study(storage=storage, study_name="s")
    trial_id = storage.create_new_trial(study._study_id)
    first = _beats_of(storage)[trial_id]
    stuck, release = threading.Event(), threading.Event()

    def stuck_call() -> None:
        with storage._connections.calls:  # what a statement waiting on a dead path holds (until it is cut)
            stuck.set()
            release.wait()

    threading.Thread(target=stuck_call, daemon=True).start()
    stuck.wait()
    try:
        beat = threading.Thread(target=storage.record_heartbeat, args=(trial_id,), daemon=True)
        beat.start()
        beat.join(timeout=120)
        assert not beat.is_alive(), "the beat waited for the stuck call"
        assert _beats_of(storage)[trial_id] > first
    finally:
        release.set()


def _beats_of(storage: optuna.storages.RDBStorage) -> dict[int, object]:
    from optuna.storages._rdb import models

    table = models.TrialHeartbeatModel.__table__
    with storage.engine.connect() as conn:
        return dict(conn.execute(sqlalchemy.select(table.c.trial_id, table.c.heartbeat)).all())


def test_a_trial_end_whose_answer_was_lost_is_not_told_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The connection dies after the COMMIT of a tell reached the server (a partition, a failover): the
    # retry finds the trial finished. It was this call's own commit, not a peer's FAIL: no error.
    storage = open_storage(f"sqlite:///{tmp_path / 'sweep.db'}", heartbeat=True)
    storage.patience = Patience(600, say=lambda _: None)
    study = optuna.create_study(storage=storage, study_name="s")
    trial_id = storage.create_new_trial(study._study_id)
    run, lost = storage._run, []

    def answer_lost(kind: str, op: object) -> object:
        result = run(kind, op)  # type: ignore[arg-type]
        if kind == "durable" and not lost:
            lost.append(kind)
            raise optuna.exceptions.StorageInternalError("lost") from sqlite3.OperationalError("database is locked")
        return result

    monkeypatch.setattr(storage, "_run", answer_lost)
    assert storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5])
    assert lost and storage.get_trial(trial_id).state == TrialState.COMPLETE
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # a second tell is still refused
        storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5])


# --------------------------------------------------------------------------- a fresh database, many openers


def test_four_concurrent_creates_on_a_fresh_database_all_succeed(tmp_path: Path, any_url: str) -> None:
    write_tiny_spec(tmp_path)
    procs = [
        subprocess.Popen(
            [str(SWEEP), "create", "tiny"],
            cwd=tmp_path,
            env=_env(tmp_path, any_url),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(4)
    ]
    outs = [" ".join(p.communicate(timeout=300)[0].split()) for p in procs]  # unwrapped
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert sum("created study" in o for o in outs) == 1, outs
    assert sum("already exists" in o and "with this spec" in o for o in outs) == 3, outs
    assert [s.study_name for s in optuna.get_all_study_summaries(open_storage(any_url))] == ["tiny"]


# --------------------------------------------------------------------------- locks are bounded


HOLDER = """
import os, sys, time
from sweep.storage import budget_lock, open_storage
storage = open_storage(sys.argv[1])
with budget_lock(storage, sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(url: str, study: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url, study], text=True, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _take_in_thread(url: str, study: str, said: list[str]) -> tuple[threading.Thread, threading.Event]:
    storage = open_storage(url)
    got = threading.Event()
    storage.patience = Patience(600, say=said.append)  # where the lock's line goes

    def take() -> None:
        with budget_lock(storage, study):
            got.set()

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return thread, got


def test_a_stopped_lock_holder_is_named_and_the_wait_goes_on(any_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep_storage, "LOCK_SAY_S", 0.5)
    optuna.create_study(storage=open_storage(any_url), study_name="s")
    holder = _holder(any_url, "s")
    os.kill(holder.pid, signal.SIGSTOP)  # a suspended Slurm job, a debugger
    said: list[str] = []
    thread, got = _take_in_thread(any_url, "s", said)
    deadline = time.monotonic() + 60
    while len(said) < 2 and time.monotonic() < deadline:  # said, and said again: the wait goes on
        time.sleep(0.1)
    assert not got.is_set()
    assert len(said) >= 2 and f"pid {holder.pid}" in said[0] and "still waiting" in said[0], said
    if any_url.startswith("sqlite"):
        holder.kill()  # a file lock is released only by its holder: it must resume or die
    thread.join(timeout=300)
    # PostgreSQL: the server ended the stopped holder's open transaction (idle_in_transaction_session_timeout).
    assert got.is_set()
    holder.kill()
    holder.wait()


def test_on_sqlite_each_study_has_a_lock_of_its_own(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    storage = open_storage(url)
    for name in ("a", "b"):
        optuna.create_study(storage=storage, study_name=name)
    holder = _holder(url, "a")
    try:
        said: list[str] = []
        thread, got = _take_in_thread(url, "b", said)
        thread.join(timeout=60)
        assert got.is_set() and not said  # study b's lock is not study a's
        thread, got = _take_in_thread(url, "a:models", said)  # nor is a's kept-models lock
        thread.join(timeout=60)
        assert got.is_set()
    finally:
        holder.kill()
        holder.wait()
