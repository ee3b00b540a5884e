"""sweep.outage without a database: which errors are an outage, and what Patience says and raises."""

from __future__ import annotations

import sqlite3

import optuna
import pytest
import sqlalchemy

from sweep import outage
from sweep.outage import DatabaseUnavailable, Patience, transient


def _wrapped(orig: BaseException) -> optuna.exceptions.StorageInternalError:
    """``orig`` as a storage call raises it: SQLAlchemy's wrapper inside Optuna's error."""
    try:
        try:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, orig)  # type: ignore[arg-type]
        except sqlalchemy.exc.OperationalError as exc:
            raise optuna.exceptions.StorageInternalError("the database refused a storage call") from exc
    except optuna.exceptions.StorageInternalError as exc:
        return exc


def test_an_away_or_busy_database_is_an_outage_a_wrong_request_is_not() -> None:
    psycopg = pytest.importorskip("psycopg")
    assert transient(_wrapped(psycopg.OperationalError("connection refused")))  # no SQLSTATE: no answer
    assert transient(_wrapped(psycopg.errors.ConnectionTimeout("connection timeout expired")))
    assert transient(_wrapped(psycopg.errors.AdminShutdown("terminating connection")))  # 57P01
    assert transient(_wrapped(psycopg.errors.QueryCanceled("statement timeout")))  # 57014
    assert transient(_wrapped(psycopg.errors.TooManyConnections("too many clients")))  # 53300
    assert not transient(_wrapped(psycopg.errors.InvalidPassword("password authentication failed")))  # 28P01
    assert not transient(_wrapped(psycopg.errors.InvalidCatalogName("database does not exist")))  # 3D000
    assert not transient(_wrapped(psycopg.errors.UndefinedTable("no such table")))
    assert transient(_wrapped(sqlite3.OperationalError("database is locked")))
    assert not transient(_wrapped(sqlite3.OperationalError("no such table: trials")))
    assert not transient(sqlalchemy.exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE")))
    assert not transient(ValueError("Cannot tell a FAIL trial."))
    assert not transient(DatabaseUnavailable("already waited out"))


class _Clock:
    """time.monotonic and time.sleep for Patience: sleeping advances the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(outage.time, "monotonic", c.monotonic)
    monkeypatch.setattr(outage.time, "sleep", c.sleep)
    return c


def _failing(times: int, clock: _Clock) -> object:
    calls = []

    def call() -> str:
        calls.append(clock.now)
        if len(calls) <= times:
            raise _wrapped(sqlite3.OperationalError("database is locked"))
        return "done"

    return call


def test_an_outage_is_waited_out_with_growing_jittered_delays_and_said_twice(clock: _Clock) -> None:
    said: list[str] = []
    patience = Patience(600, say=said.append)
    assert patience.call(_failing(6, clock)) == "done"  # type: ignore[arg-type]
    assert len(said) == 2
    assert said[0].startswith("database unreachable (database is locked); retrying for up to 600 s")
    assert said[1] == f"database back after {sum(clock.slept):.0f} s"
    # 0.5 s doubling to 5 s, each with ±50 % jitter.
    for delay, nominal in zip(clock.slept, [0.5, 1, 2, 4, 5, 5], strict=True):
        assert 0.5 * nominal <= delay <= 1.5 * nominal
    assert patience.down_within(30) and not patience.down_within(0)  # stale checks wait a grace period


def test_past_the_patience_every_call_fails_at_once_until_one_gets_through(clock: _Clock) -> None:
    said: list[str] = []
    patience = Patience(10, say=said.append)
    with pytest.raises(DatabaseUnavailable, match=r"longer than SWEEP_DB_PATIENCE = 10 s \(database is locked\)"):
        patience.call(_failing(1000, clock))  # type: ignore[arg-type]
    assert sum(clock.slept) == pytest.approx(10)  # the last wait is cut to the patience left
    slept = len(clock.slept)
    with pytest.raises(DatabaseUnavailable):  # a second call (the heartbeat's) does not wait again
        patience.call(_failing(1000, clock))  # type: ignore[arg-type]
    assert len(clock.slept) == slept
    assert patience.call(lambda: "back") == "back"
    assert said[-1].startswith("database back after")
    assert len(said) == 2


def test_calls_inside_a_waited_call_are_not_retried_on_their_own(clock: _Clock) -> None:
    patience = Patience(600, say=lambda _: None)
    inner = _failing(1, clock)

    def unit() -> object:
        return patience.call(inner)  # type: ignore[arg-type]  # e.g. a storage call in a lock's block

    assert patience.call(unit) == "done"  # the unit was redone, the inner call failed through once
    assert len(clock.slept) == 1


def test_a_wrong_request_is_raised_at_once(clock: _Clock) -> None:
    patience = Patience(600, say=lambda _: pytest.fail("no outage to say"))

    def wrong() -> None:
        raise KeyError("No study")

    with pytest.raises(KeyError):
        patience.call(wrong)
    assert clock.slept == []


def test_a_stop_request_ends_the_wait(clock: _Clock) -> None:
    patience = Patience(600, say=lambda _: None)
    call = _failing(1000, clock)

    def stop_on_second_try() -> object:
        if len(clock.slept) == 1:
            patience.stop.set()  # SIGTERM while waiting: nothing can be handed back without the database
        return call()  # type: ignore[operator]

    with pytest.raises(DatabaseUnavailable, match="stopped while waiting for the database"):
        patience.call(stop_on_second_try)
    assert len(clock.slept) == 1
