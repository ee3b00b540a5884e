"""Database outages waited out: a restart, a failover or a partition must not end a sweep.

A storage call that finds the database away (refused, reset, timed out, shutting down, locked) is tried
again with jittered exponential backoff for up to a patience (SWEEP_DB_PATIENCE, default 10 min). The
process says one line when the database goes away and one when it is back; past the patience the call
raises ``DatabaseUnavailable``, which a worker turns into exit code 69 (EX_UNAVAILABLE) for its
supervisor (or Kubernetes, Slurm) to restart it later. A leaf module: sweep.rdb and sweep.storage use it.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import optuna
import sqlalchemy

from sweep.errors import EX_UNAVAILABLE, Unavailable, env_int

_T = TypeVar("_T")
__all__ = ["EX_UNAVAILABLE", "CallWatchdog", "DatabaseUnavailable", "Patience", "patience_s", "transient"]
DEFAULT_PATIENCE_S = 600
_FIRST_DELAY_S = 0.5
# A statement a worker waits for longer is cut (CallWatchdog): a worker's statements take milliseconds
# (the sampler's first read of a 100,000-trial study: seconds); a dead path may keep one waiting forever.
CALL_TIMEOUT_S = 10.0
_MAX_DELAY_S = 5.0  # a back database is noticed within this (plus the jitter) of coming back
_log = logging.getLogger("sweep.storage")

# SQLSTATE classes and codes of a database that is away or overloaded, not of a wrong request: connection
# exceptions, operator intervention (shutdown, starting up), insufficient resources (too many
# connections), transaction rollbacks (serialization, deadlock), lock_timeout, statement_timeout,
# system errors. Authentication (28...) or a missing database (3D000) are a configuration, said at once.
_TRANSIENT_STATES = ("08", "57P", "53", "40", "55P03", "57014", "58")


class DatabaseUnavailable(optuna.exceptions.StorageInternalError, Unavailable):
    """The database stayed unreachable for the whole patience (one line; the worker exits with 69)."""


def patience_s() -> int:
    """SWEEP_DB_PATIENCE: how long a worker waits out an unreachable database (seconds, default 600)."""
    return env_int("SWEEP_DB_PATIENCE", DEFAULT_PATIENCE_S)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the errors it was raised from, and the driver errors SQLAlchemy wraps."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is away or busy (worth waiting for), not that the call was wrong."""
    for e in _chain(exc):
        if isinstance(e, sqlalchemy.exc.IntegrityError | optuna.exceptions.UpdateFinishedTrialError):
            return False  # a lost race, which callers tell from a fault
        if isinstance(e, DatabaseUnavailable):
            return False  # already waited out by an outer call
        state = getattr(e, "sqlstate", None)
        if isinstance(state, str):
            return state.startswith(_TRANSIENT_STATES)
        if type(e).__module__.startswith("psycopg") and any(
            c.__name__ in ("OperationalError", "InterfaceError") for c in type(e).__mro__
        ):
            return True  # no SQLSTATE: refused, reset, timed out, closed: the server never answered
        if isinstance(e, sqlite3.OperationalError):
            text = str(e)
            return "locked" in text or "busy" in text  # a writer held the file past the busy timeout
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
            return True
    return False


def reason(exc: BaseException) -> str:
    """The first line of the innermost database error behind ``exc``."""
    innermost = exc
    for e in _chain(exc):
        if type(e).__module__.startswith(("psycopg", "sqlite3")) or isinstance(e, sqlite3.Error):
            innermost = e
            break
    lines = str(innermost).strip().splitlines()
    return lines[0] if lines else type(innermost).__name__


@dataclass
class Patience:
    """How long this process's storage calls wait out an unreachable database, and the lines that say so.

    One per process (shared by the worker's threads): the outage is said once, however many threads
    wait in it, and timed from its first failed call. The outermost call retries; calls made inside it
    (a storage method calling another, a lock's block) fail at once, so that the whole unit is redone.
    Once the patience is spent every call raises at once, until one gets through again.
    """

    seconds: float
    say: Callable[[str], None] = _log.warning
    mask: Callable[[str], str] = lambda text: text  # removes the URL's password from a driver message
    # Set by a stop request (SIGTERM, Ctrl-C): the wait ends, nothing can be handed back without the database.
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _down_since: float | None = field(default=None, repr=False)
    _given_up: bool = field(default=False, repr=False)
    _back_at: float = field(default=float("-inf"), repr=False)
    _depth: threading.local = field(default_factory=threading.local, repr=False)

    def call(self, fn: Callable[[], _T]) -> _T:
        """``fn()``, tried again while the database is away, for up to the patience."""
        depth = getattr(self._depth, "n", 0)
        if depth:
            return fn()
        delay = _FIRST_DELAY_S
        while True:
            self._depth.n = 1
            try:
                result = fn()
            except Exception as exc:
                if not transient(exc):
                    raise
                left = self._failed(exc)
                # Jitter: a hundred workers that lost the database together do not come back in step.
                self._sleep(min(delay * (0.5 + random.random()), left))
                delay = min(delay * 2, _MAX_DELAY_S)
            else:
                self._back()
                return result
            finally:
                self._depth.n = 0

    def _sleep(self, seconds: float) -> None:
        if self.stop.is_set():
            raise DatabaseUnavailable("stopped while waiting for the database") from None
        time.sleep(seconds)  # a stop is seen by the next retry, ≤ 7.5 s later

    def down_within(self, window_s: float) -> bool:
        """Whether the database is away, or came back less than ``window_s`` ago: every heartbeat of the
        study is that old, so no trial can be told stale yet (its owner is beating again by then)."""
        return self._down_since is not None or time.monotonic() - self._back_at < window_s

    def noticed(self, exc: BaseException) -> None:
        """Say the outage at a call's first failure, before the call tries a fresh connection (which,
        on a dead path, costs a whole connect timeout)."""
        if self._down_since is None and transient(exc):
            why = self.mask(reason(exc))
            with self._lock:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    self.say(f"database unreachable ({why}); retrying for up to {self.seconds:.0f} s")

    def _failed(self, exc: Exception) -> float:
        """Record a failed call; the seconds of patience left, or DatabaseUnavailable when none are."""
        why = self.mask(reason(exc))
        self.noticed(exc)
        with self._lock:
            now = time.monotonic()
            waited = now - (now if self._down_since is None else self._down_since)
            left = self.seconds - waited
            if left <= 0 or self._given_up:
                self._given_up = True
                raise DatabaseUnavailable(
                    f"database unreachable for {waited:.0f} s, longer than SWEEP_DB_PATIENCE = "
                    f"{self.seconds:.0f} s ({why})"
                ) from None
        return left

    def _back(self) -> None:
        if self._down_since is None:  # the common case: no lock taken
            return
        with self._lock:
            if self._down_since is not None:
                self.say(f"database back after {time.monotonic() - self._down_since:.0f} s")
            self._down_since = None
            self._given_up = False
            self._back_at = time.monotonic()


class CallWatchdog:
    """Cuts the connection of a PostgreSQL statement that waits past ``timeout_s`` for its answer.

    TCP keepalives and tcp_user_timeout (sweep.storage) notice a path that drops packets, but not one
    whose far end still acknowledges them and never answers (a proxy or load balancer that stopped
    forwarding, a half-dead middlebox): a statement would wait there for ever, holding the process's
    storage lock. The socket is shut down under it, so the statement fails like any lost connection
    and is retried (Patience). A thread per process, which wakes once a second.
    """

    def __init__(self, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._calls: dict[int, tuple[float, int]] = {}  # thread → (deadline, socket of its statement)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, engine: sqlalchemy.Engine) -> None:
        """Time every statement of ``engine`` (and of the engines derived from it)."""
        sqlalchemy.event.listen(engine, "before_cursor_execute", self._before)
        sqlalchemy.event.listen(engine, "after_cursor_execute", self._after)
        sqlalchemy.event.listen(engine, "handle_error", self._failed)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sweep-call-watchdog", daemon=True)
            self._thread.start()

    def _before(self, conn: sqlalchemy.Connection, *_: object) -> None:
        fd = getattr(getattr(conn.connection.dbapi_connection, "pgconn", None), "socket", None)
        if isinstance(fd, int) and fd >= 0:
            with self._lock:
                self._calls[threading.get_ident()] = (time.monotonic() + self.timeout_s, fd)

    def _after(self, *_: object) -> None:
        with self._lock:
            self._calls.pop(threading.get_ident(), None)

    def _failed(self, _context: object) -> None:
        self._after()

    def _run(self) -> None:
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            with self._lock:  # a call still listed has its socket open: the fd is still its own
                for thread, (deadline, fd) in list(self._calls.items()):
                    if now >= deadline:
                        del self._calls[thread]
                        _cut(fd)


def _cut(fd: int) -> None:
    """Shut the socket behind ``fd`` down (its owner's blocked read then fails), leaving ``fd`` open."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: the statement has failed on its own
