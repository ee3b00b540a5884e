"""sweep.storage on both backends: URLs and masking, the cross-process budget lock, heartbeats, concurrency.

Worker processes are forked (no torch, no re-import), each opening its own storage as a real worker does.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import signal
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from sweep import record
from sweep.heartbeat import beating
from sweep.service import BudgetGate, load_spec_of
from sweep.storage import (
    StorageError,
    behind_pgbouncer,
    budget_counts,
    budget_lock,
    mask_text,
    mask_url,
    open_storage,
    pop_waiting_trial,
    read_connection,
    retry_on_locked,
    storage_engine_kwargs,
    study_names,
    validate_url,
)

CTX = multiprocessing.get_context("fork")
SECRET = "s3cr3t-Pa55"

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings(
    "ignore::optuna.exceptions.ExperimentalWarning", "ignore:Heartbeat of storage is supposed:UserWarning"
)


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_main(fn: Callable[..., Any], args: tuple[Any, ...], result: Path) -> None:
    try:
        out: dict[str, Any] = {"ok": fn(*args)}
    except BaseException:  # noqa: B036 - report everything, the parent asserts on it
        out = {"error": traceback.format_exc()}
    result.write_text(json.dumps(out))


def _run_processes(fn: Callable[..., Any], args: Sequence[tuple[Any, ...]], tmp: Path, timeout: float) -> list[Any]:
    """Run ``fn(*a)`` in one forked process per ``a``, concurrently; return their results or fail."""
    gc.collect()  # no half-dead engines of earlier tests to be finalised in a child
    results = [tmp / f"result-{i}.json" for i in range(len(args))]
    procs = [CTX.Process(target=_child_main, args=(fn, a, r)) for a, r in zip(args, results, strict=True)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    hung = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"worker processes {hung} still running after {timeout} s"
    outs = [json.loads(r.read_text()) if r.exists() else {"error": "no result"} for r in results]
    errors = [o["error"] for o in outs if "error" in o]
    assert not errors, "a worker process failed:\n" + "\n".join(errors)
    return [o["ok"] for o in outs]


def _wait_for(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)
    return path.read_text()


SPEC_RAW: dict[str, Any] = {
    "name": "orchestration",
    "n_trials": 40,
    "epochs": 10,
    "data": {"name": "synthetic"},
    "model": {"weights": "none"},
    "sampler": {"type": "tpe"},
    "pruner": {"type": "median"},
    "params": {
        "lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
        "batch_size": {"type": "categorical", "choices": [32, 64, 128]},
        "frozen_layers": {"type": "int", "low": 0, "high": 5},
        "aug_strength": {"type": "float", "low": 0.0, "high": 1.0},
    },
}


def _create_study(url: str, raw: dict[str, Any]) -> None:
    """What ``sweep create`` leaves in the storage: the study and its resolved spec."""
    from sweep.spec import parse_spec

    spec = parse_spec(raw)
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name=spec.name, direction="maximize")
    study.set_user_attr(record.SPEC.name, spec.to_dict())
    storage.engine.dispose()


# --------------------------------------------------------------------------- URLs and masking


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("not a url", "malformed"),
        ("", "malformed"),
        ("sqlite//storage/sweep.db", "malformed"),
        (f"postgresql://sweep:{SECRET}@db:notaport/sweep", "malformed"),
        (f"mysql://sweep:{SECRET}@db/sweep", "not supported"),
        (f"postgresql+psycopg2://sweep:{SECRET}@db/sweep", "not supported"),
        ("sqlite://", "no database file"),
        ("sqlite:///:memory:", "no database file"),
        (f"postgresql://sweep:{SECRET}@db", "needs a host and a database"),
        (f"postgresql+psycopg://sweep:{SECRET}@/sweep", "needs a host and a database"),
        (f"postgresql://sweep:{SECRET}@db/sweep?pgbouncer=maybe", "pgbouncer='maybe' is not allowed"),
    ],
)
def test_validate_url_rejects_with_one_masked_line(url: str, expect: str) -> None:
    with pytest.raises(StorageError) as info:
        validate_url(url)
    message = str(info.value)
    assert expect in message
    assert SECRET not in message
    assert "\n" not in message


def test_validate_url_normalises_postgresql_to_psycopg3() -> None:
    assert validate_url("postgresql://u:p@h:5432/db") == "postgresql+psycopg://u:p@h:5432/db"
    assert validate_url("postgresql+psycopg://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert validate_url("sqlite:///storage/sweep.db") == "sqlite:///storage/sweep.db"


def test_pgbouncer_option_is_sweeps_not_the_drivers() -> None:
    url = "postgresql://u:p@h/db?sslmode=require&pgbouncer=TRUE"
    assert validate_url(url) == "postgresql+psycopg://u:p@h/db?sslmode=require"  # libpq never sees it
    assert behind_pgbouncer(url) and not behind_pgbouncer("postgresql://u:p@h/db?pgbouncer=0")
    assert not behind_pgbouncer("postgresql://u:p@h/db")
    direct = storage_engine_kwargs(validate_url(url))["connect_args"]
    pooled = storage_engine_kwargs(validate_url(url), pgbouncer=True)["connect_args"]
    assert "prepare_threshold" not in direct and pooled["prepare_threshold"] is None


@pytest.mark.pgbouncer
def test_prepared_statements_directly_never_through_pgbouncer(storage_url: str, backend: str) -> None:
    """Directly, the per-trial statements are prepared on the server once (psycopg's threshold); through
    PgBouncer in transaction mode none is (the next one could run on another server connection)."""
    if backend == "sqlite":
        pytest.skip("PostgreSQL's prepared statements")
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="prepared", storage=storage)
    for _ in range(8):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.report(0.5, 1)
        study.tell(trial, 0.5)
    with read_connection(storage, storage.engine) as conn:  # the worker's held one, which ran them
        prepared = conn.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar()
    assert (prepared == 0) == behind_pgbouncer(storage_url), prepared
    storage.engine.dispose()


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://sweep:{SECRET}@db.example:5432/sweep",
        f"postgresql://sweep:{SECRET}@10.0.0.7/sweep?sslmode=require",
        "postgresql://sweep:p%40ss%3Aw%2Frd@db/sweep",
    ],
)
def test_mask_url_and_mask_text_hide_the_password(url: str) -> None:
    from sqlalchemy.engine import make_url

    password = make_url(url).password
    assert password
    masked = mask_url(url)
    assert "***" in masked and password not in masked and url.split(":")[2].split("@")[0] not in masked
    # Drivers quote the decoded password, or the whole URL, in their errors.
    text = f'FATAL: password "{password}" rejected for {url} (retry {url})'
    cleaned = mask_text(text, url)
    assert password not in cleaned and url not in cleaned
    assert cleaned.count("***") >= 3


def test_mask_url_leaves_urls_without_password_alone() -> None:
    assert mask_url("sqlite:///storage/sweep.db") == "sqlite:///storage/sweep.db"
    assert mask_url("postgresql://sweep@db/sweep") == "postgresql://sweep@db/sweep"


def test_unreachable_postgresql_is_one_masked_line() -> None:
    url = f"postgresql+psycopg://sweep:{SECRET}@127.0.0.1:{_free_port()}/sweep"
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        open_storage(url, wait_s=0.5)
    message = str(info.value)
    assert time.monotonic() - started < 15
    assert message.startswith("cannot reach storage postgresql+psycopg://sweep:***@127.0.0.1:")
    assert SECRET not in message and "\n" not in message


def test_an_unreachable_database_is_retried_with_backoff_until_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from sweep import storage as storage_module
    from sweep.storage import _until_reachable

    now: list[float] = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(storage_module, "time", types.SimpleNamespace(monotonic=lambda: now[0], sleep=sleep))
    url = f"postgresql+psycopg://sweep:{SECRET}@db/sweep"
    attempts: list[int] = []

    def refused(times: int) -> Callable[[], Any]:
        def connect() -> Any:
            attempts.append(1)
            if len(attempts) <= times:
                raise sqlalchemy.exc.OperationalError("connect", {}, Exception("connection refused\nat db:5432"))
            return "storage"

        return connect

    assert _until_reachable(refused(2), url=url, sa_url=url, wait_s=20) == "storage" and slept == [0.5, 1.0]
    now[0], attempts[:], slept[:] = 0.0, [], []
    with pytest.raises(StorageError) as info:
        _until_reachable(refused(99), url=url, sa_url=url, wait_s=20)
    assert slept == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 2.5]  # doubling, at most 5 s, never past the deadline
    assert str(info.value) == (
        "cannot reach storage postgresql+psycopg://sweep:***@db/sweep: connection refused (retried for 20 s)"
    )


def test_wrong_password_is_masked(pg_url: str) -> None:
    from sqlalchemy.engine import make_url

    wrong = make_url(pg_url).set(password=SECRET).render_as_string(hide_password=False)
    with pytest.raises(StorageError) as info:
        open_storage(wrong)
    message = str(info.value)
    assert "password authentication failed" in message
    assert SECRET not in message and str(make_url(pg_url).password) not in message and "\n" not in message


def test_retry_on_locked_retries_only_lock_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda s: None)
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise sqlalchemy.exc.OperationalError("BEGIN", {}, Exception("database is locked"))
        return "ok"

    assert retry_on_locked(flaky) == "ok" and len(calls) == 3

    def broken() -> None:
        raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("no such table: trials"))

    with pytest.raises(sqlalchemy.exc.OperationalError):
        retry_on_locked(broken)


# --------------------------------------------------------------------------- open / create


def test_open_storage_creates_and_is_shared(storage_url: str) -> None:
    storage = open_storage(storage_url)
    assert study_names(storage) == []
    study = optuna.create_study(storage=storage, study_name="shared", direction="maximize")
    study.set_user_attr("k", {"nested": [1, 2]})
    other = open_storage(storage_url)  # a second worker, its own engine
    assert study_names(other) == ["shared"]
    loaded = optuna.load_study(study_name="shared", storage=other)
    assert loaded.user_attrs["k"] == {"nested": [1, 2]}
    assert open_storage(storage_url, create=False) is not None  # exists now: read-only commands work


def test_sqlite_file_is_created_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "sweep.db"
    open_storage(f"sqlite:///{path}")
    assert path.exists()
    import sqlite3

    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


def test_read_only_open_never_creates_a_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(StorageError, match="no sweep database"):
        open_storage(f"sqlite:///{path}", create=False)
    assert not path.exists()


def test_plain_postgresql_url_uses_psycopg3(pg_fresh_url: str) -> None:
    storage = open_storage(pg_fresh_url.replace("postgresql+psycopg://", "postgresql://", 1))
    assert storage.engine.dialect.driver == "psycopg"
    assert study_names(storage) == []


# --------------------------------------------------------------------------- budget lock


def _lock_child(url: str, log: str, rounds: int, barrier: Any) -> int:
    storage = open_storage(url)
    barrier.wait(timeout=60)
    for _ in range(rounds):
        with budget_lock(storage, "locked-study"):
            with open(log, "a") as fh:
                fh.write(f"{os.getpid()} in\n")
            time.sleep(0.005)
            with open(log, "a") as fh:
                fh.write(f"{os.getpid()} out\n")
    return rounds


def _can_take_lock(url: str, timeout: float = 15) -> bool:
    """Whether another worker (a new storage: its own connection / file handle) gets the lock in time."""
    import threading

    acquired = threading.Event()

    def take() -> None:
        with budget_lock(open_storage(url), "locked-study"):
            acquired.set()

    threading.Thread(target=take, daemon=True).start()
    return acquired.wait(timeout)


@pytest.mark.pgbouncer
def test_budget_lock_is_exclusive_across_processes(storage_url: str, tmp_path: Path) -> None:
    open_storage(storage_url).engine.dispose()  # create the database before the race
    log = tmp_path / "lock.log"
    n, rounds = 4, 10
    barrier = CTX.Barrier(n)
    _run_processes(_lock_child, [(storage_url, str(log), rounds, barrier)] * n, tmp_path, timeout=120)
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * n * rounds
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):
        pid, what = enter.split()
        assert what == "in" and leave == f"{pid} out", f"interleaved critical sections: {enter!r} then {leave!r}"
    assert len({line.split()[0] for line in lines}) == n


def _hold_lock_child(url: str, ready: str) -> None:
    storage = open_storage(url)
    with budget_lock(storage, "locked-study"):
        Path(ready).write_text("held")
        time.sleep(600)


@pytest.mark.pgbouncer
def test_budget_lock_of_a_killed_worker_is_released(storage_url: str, tmp_path: Path) -> None:
    open_storage(storage_url).engine.dispose()
    ready = tmp_path / "ready"
    proc = CTX.Process(target=_hold_lock_child, args=(storage_url, str(ready)))
    proc.start()
    try:
        _wait_for(ready)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(10)
    assert _can_take_lock(storage_url), "the lock of a worker killed with -9 was never released"


@pytest.mark.pgbouncer
def test_budget_lock_is_released_on_error(storage_url: str) -> None:
    storage = open_storage(storage_url)
    with pytest.raises(ZeroDivisionError), budget_lock(storage, "locked-study"):
        _ = 1 / 0
    assert _can_take_lock(storage_url), "budget_lock leaked after an exception in its block"


# --------------------------------------------------------------------------- heartbeat


def _doomed_worker(url: str, name: str, ready: str) -> None:
    """A worker that takes a trial, beats, and is then killed with -9 by the test."""
    storage = open_storage(url, heartbeat=True, heartbeat_interval=1, grace_period=3)
    study = optuna.load_study(study_name=name, storage=storage)
    trial = study.ask()
    trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    trial.suggest_int("frozen_layers", 0, 5)
    trial.suggest_categorical("batch_size", [32, 64, 128])
    trial.report(0.42, 1)
    with beating(storage, trial._trial_id):
        Path(ready).write_text(str(trial.number))
        time.sleep(600)


@pytest.mark.pgbouncer
@pytest.mark.slow
def test_killed_worker_trial_fails_and_is_requeued(storage_url: str, tmp_path: Path) -> None:
    raw = {**SPEC_RAW, "name": "heartbeat", "n_trials": 1}
    _create_study(storage_url, raw)
    ready = tmp_path / "ready"
    proc = CTX.Process(target=_doomed_worker, args=(storage_url, "heartbeat", str(ready)))
    proc.start()
    try:
        number = int(_wait_for(ready))
        storage = open_storage(storage_url, heartbeat=True, heartbeat_interval=1, grace_period=3)
        study = optuna.load_study(study_name="heartbeat", storage=storage)
        # Alive and beating: longer than the grace period, yet never declared stale. A duration by design,
        # not a wait for an event: past the grace period (3 s) and a second of SQLite's whole-second
        # heartbeat clock, a trial whose worker had stopped beating after its first beat would be stale.
        time.sleep(4.5)
        optuna.storages.fail_stale_trials(study)
        assert study.trials[number].state == TrialState.RUNNING
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    original = study.trials[number]
    deadline = time.monotonic() + 20
    while True:
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        if trials[number].state == TrialState.FAIL:
            break
        assert time.monotonic() < deadline, "the dead worker's trial never became FAIL"
        time.sleep(0.5)
    assert len(trials) == 2
    retry = trials[1]
    assert retry.state == TrialState.WAITING
    assert retry.system_attrs[record.FAILED_TRIAL.name] == number
    # Another peer calling fail_stale_trials again must not queue a second retry.
    optuna.storages.fail_stale_trials(study)
    assert len(study.get_trials(deepcopy=False)) == 2

    # The worker's loop hands the retry out although the budget (1) is spent, with the same params.
    spec = load_spec_of(storage, "heartbeat")
    with budget_lock(storage, "heartbeat"):
        decision, trial = BudgetGate(study, spec).next_trial()
    assert decision == "run" and trial is not None and trial.number == retry.number
    params = {
        "lr": trial.suggest_float("lr", 1e-5, 1e-1, log=True),
        "frozen_layers": trial.suggest_int("frozen_layers", 0, 5),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
    }
    assert params == original.params
    study.tell(trial, 0.5)
    with budget_lock(storage, "heartbeat"):
        assert BudgetGate(study, spec).next_trial() == ("done", None)


def test_a_trial_taken_but_never_started_is_failed_and_requeued(storage_url: str) -> None:
    """The gate beats for the trial it hands out: a worker that dies between taking a trial and
    starting its heartbeat thread (in the sampler, say) leaves a trial the stale check finds."""
    raw = {**SPEC_RAW, "name": "orphan", "n_trials": 1}
    _create_study(storage_url, raw)
    storage = open_storage(storage_url, heartbeat=True, heartbeat_interval=1, grace_period=1)
    study = optuna.load_study(study_name="orphan", storage=storage)
    decision, trial = BudgetGate(study, load_spec_of(storage, "orphan")).take()
    assert decision == "run" and trial is not None  # ... and the worker dies here
    deadline = time.monotonic() + 20
    while study.get_trials(deepcopy=False)[trial.number].state != TrialState.FAIL:
        assert time.monotonic() < deadline, "the orphaned trial was never failed as stale"
        time.sleep(0.5)
        optuna.storages.fail_stale_trials(study)
    assert study.get_trials(deepcopy=False)[-1].state == TrialState.WAITING  # re-queued


# --------------------------------------------------------------------------- concurrency


def _orchestration_worker(url: str, name: str, barrier: Any) -> dict[str, int]:
    """The worker loop of sweep.service.run_worker without torch: budget lock, ask, suggest, report, tell."""
    from sweep.search import build_pruner, build_sampler, suggest_params

    storage = open_storage(url, heartbeat=True)
    spec = load_spec_of(storage, name)
    study = optuna.load_study(study_name=name, storage=storage, sampler=build_sampler(spec), pruner=build_pruner(spec))
    study.sampler.reseed_rng()
    barrier.wait(timeout=60)
    ran = waits = 0
    while True:
        with budget_lock(storage, name):
            decision, trial = retry_on_locked(lambda: BudgetGate(study, spec).next_trial())
        if decision == "done":
            break
        if decision == "wait":
            waits += 1
            time.sleep(0.05)
            continue
        assert trial is not None
        with beating(storage, trial._trial_id):
            params = suggest_params(trial, spec)
            value = 0.5 + 0.1 * params["aug_strength"]
            for epoch in range(1, 11):
                trial.report(value * epoch / 10, epoch)
            retry_on_locked(lambda t=trial, v=value: study.tell(t, v))
        ran += 1
    return {"ran": ran, "waits": waits}


@pytest.mark.pgbouncer
@pytest.mark.slow
def test_workers_share_the_budget_exactly(storage_url: str, backend: str, tmp_path: Path) -> None:
    budget = 40
    n = 4 if backend == "sqlite" else 8
    _create_study(storage_url, {**SPEC_RAW, "n_trials": budget})
    barrier = CTX.Barrier(n)
    results = _run_processes(
        _orchestration_worker, [(storage_url, "orchestration", barrier)] * n, tmp_path, timeout=240
    )
    assert sum(r["ran"] for r in results) == budget
    study = optuna.load_study(study_name="orchestration", storage=open_storage(storage_url))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == budget
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert all(len(t.params) == 4 and len(t.intermediate_values) == 10 for t in trials)
    assert sorted(t.number for t in trials) == list(range(budget))


# --------------------------------------------------------------------------- the gate's reads stay O(active)


def _mixed_study(storage: Any) -> optuna.Study:
    """3 complete, 1 failed, 1 running, 2 enqueued and 1 retry (WAITING, carrying failed_trial)."""
    study = optuna.create_study(study_name="mixed", storage=storage)
    for value in (0.1, 0.2, 0.3):
        study.tell(study.ask(), value)
    study.tell(study.ask(), state=TrialState.FAIL)
    study.ask()
    study.enqueue_trial({"x": 0.5})
    study.enqueue_trial({"x": 0.6})
    # A retry as RetryHeartbeatStaleTrialCallback makes it: a WAITING copy carrying the failed number.
    template = optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={record.FAILED_TRIAL.name: 3})
    storage.create_new_trial(study._study_id, template_trial=template)
    return study


@pytest.mark.parametrize("kind", ["memory", "rdb"])
def test_budget_counts_equal_a_count_over_every_trial(kind: str, storage_url: str) -> None:
    storage = optuna.storages.InMemoryStorage() if kind == "memory" else open_storage(storage_url)
    study = _mixed_study(storage)
    trials = study.get_trials(deepcopy=False)
    expected = (
        sum(1 for t in trials if record.FAILED_TRIAL.name not in t.system_attrs),
        sum(1 for t in trials if t.state == TrialState.WAITING),
        sum(1 for t in trials if t.state == TrialState.RUNNING),
    )
    assert expected == (7, 3, 1)
    assert budget_counts(study._storage, study._study_id, record.FAILED_TRIAL.name) == expected


def test_pop_waiting_trial_takes_the_oldest_left_without_reading_the_study(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage(storage_url)
    study = _mixed_study(storage)
    waiting = [t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]
    peer = open_storage(storage_url)
    assert peer.set_trial_state_values(waiting[0], TrialState.RUNNING)  # a peer took the oldest
    fresh = optuna.load_study(study_name="mixed", storage=storage)

    def whole_study(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("read the whole study")

    monkeypatch.setattr(type(storage), "_get_trials", whole_study)
    assert pop_waiting_trial(fresh) == waiting[1]
    assert pop_waiting_trial(fresh) == waiting[2]
    assert pop_waiting_trial(fresh) is None
    monkeypatch.undo()
    assert storage.get_trial(waiting[1]).state == TrialState.RUNNING


def test_sweeps_indexes_are_added_once(storage_url: str) -> None:
    from sweep.rdb import INDEXES

    open_storage(storage_url)
    storage = open_storage(storage_url)  # a second open finds them and creates nothing
    inspector = sqlalchemy.inspect(storage.engine)
    have = {
        i["name"]: tuple(i["column_names"])
        for t in ("trials", "trial_system_attributes")
        for i in inspector.get_indexes(t)
    }
    assert all(have.get(name) == columns for name, _, columns in INDEXES), have


@pytest.mark.parametrize("value", ["10s", "0", "-1", "ten"])
def test_heartbeat_settings_from_the_environment_are_checked_when_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    from sweep.errors import EnvError

    url = f"sqlite:///{tmp_path / 'hb.db'}"
    monkeypatch.setenv("SWEEP_GRACE_PERIOD", value)
    open_storage(url)  # no heartbeat: not read
    with pytest.raises(EnvError, match=rf"^SWEEP_GRACE_PERIOD = '{value}': a whole number of seconds"):
        open_storage(url, heartbeat=True)
    monkeypatch.setenv("SWEEP_GRACE_PERIOD", "7")
    monkeypatch.setenv("SWEEP_HEARTBEAT_INTERVAL", "2")
    storage = open_storage(url, heartbeat=True)
    assert storage.get_heartbeat_interval() == 2 and storage.grace_period == 7  # type: ignore[attr-defined]
