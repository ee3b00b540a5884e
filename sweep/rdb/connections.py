"""How SweepRDBStorage reaches its database: which connection each call runs on, and in what transaction.

One ``Connections`` per storage (per process: it is rebuilt after unpickling) hands every unit of work
its connection (``run``): on SQLite a deferred read or a write that takes the write lock at BEGIN
(the ``begin`` listener registered on the storage's engine) behind a Python lock; on PostgreSQL the
process's one held autocommit connection (``calls``: one call at a time), a pool connection for a
transaction, or the connection a thread's lock transaction pinned (``pinned``, ``PinnedSessions`` for
Optuna's ORM sessions). A call on a dead connection is retried once, and waited out as a whole while
the database is away (``patient``, sweep.outage).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import optuna
import sqlalchemy
import sqlalchemy.orm

from sweep.outage import Patience, transient

if TYPE_CHECKING:
    from sweep.rdb.storage import SweepRDBStorage

_T = TypeVar("_T")
_BEAT_WAIT_S = 1.0  # how long a heartbeat waits for the process's connection before taking its own
_HELD_RECYCLE_S = 1800.0  # the held connection is renewed as often as the pool recycles (pool_recycle)
_INHERITED: list[Any] = []  # held connections a forked child inherited: kept alive, never touched

# Set while an inherited read-only ORM method runs: its SQLite transaction then begins DEFERRED and
# takes no write lock (_begin_immediate). Such a method may hold its session open while it opens a
# second connection (Optuna's check_table_schema_compatibility): with BEGIN IMMEDIATE on both, it
# would wait for itself until the busy timeout.
_READ_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("sweep_rdb_read_only", default=False)


def _begin_immediate(conn: Any) -> None:
    # pysqlite opens transactions lazily as DEFERRED; two workers that both read and then want to
    # write fail at once with "database is locked" (the busy timeout does not apply to a lock
    # upgrade). Taking the write lock at BEGIN makes writers queue on the busy timeout instead.
    # Reads (sweep.rdb's own, inherited read-only methods, sweep.storage's budget query) begin
    # DEFERRED: WAL readers never block the writer nor wait for it.
    read_only = conn.get_execution_options().get("sweep_read_only", False) or _READ_ONLY.get()
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def lock_free(name: str, owner: type = optuna.storages.RDBStorage) -> Callable[..., Any]:
    """``owner.name``, run with ``_READ_ONLY`` set: on SQLite its sessions begin DEFERRED (no write lock)."""
    inherited = getattr(owner, name)

    @functools.wraps(inherited)
    def read(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = _READ_ONLY.set(True)
        try:
            return inherited(self, *args, **kwargs)
        finally:
            _READ_ONLY.reset(token)

    return read


def _fault(exc: sqlalchemy.exc.SQLAlchemyError) -> optuna.exceptions.StorageInternalError:
    """A database error as Optuna's RDBStorage raises it (the one type callers of either storage catch)."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return optuna.exceptions.StorageInternalError(
        f"the database refused a storage call: {reason[0] if reason else type(exc).__name__}"
    )


class PinnedSessions:
    """Optuna's ``scoped_session``, except that while a thread holds a pinned connection (a lock's
    transaction, ``SweepRDBStorage.pinned``) its ORM sessions run there, each in a savepoint: Optuna's
    ``session.commit()`` releases the savepoint and the lock's transaction commits everything."""

    def __init__(self, sessions: Any, pins: threading.local, give_back: Callable[[], None]) -> None:
        self._sessions = sessions
        self._pins = pins
        self._give_back = give_back

    def __call__(self) -> Any:
        conn = getattr(self._pins, "conn", None)
        if conn is None:
            # The session checks out from the pool: the process's held connection goes back first,
            # so it is the one checked out (a beat taking it again meanwhile costs a second
            # connection until the next transaction gives the held one back).
            self._give_back()
            return self._sessions()
        return sqlalchemy.orm.Session(bind=conn, join_transaction_mode="create_savepoint")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sessions, name)


class Connections:
    """The connections of one storage's engine in this process (see the module docstring)."""

    def __init__(self, engine: sqlalchemy.Engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        if self.sqlite and not sqlalchemy.event.contains(engine, "begin", _begin_immediate):
            # SQLite write transactions take the write lock at BEGIN. On this engine only, and only
            # from here on: the storage builds this after Optuna's schema set-up, which runs its own
            # transactions.
            sqlalchemy.event.listen(engine, "begin", _begin_immediate)
        self._write_lock = threading.Lock()  # SQLite: the process's writes queue here first
        self.autocommit_engine = engine
        # The connection a thread's budget (or kept-models) lock transaction holds (pinned): every call
        # of that thread runs in it until the lock is released (see pinned).
        self._pins = threading.local()
        self.calls = threading.RLock()  # PostgreSQL: one storage call of this process at a time
        # PostgreSQL: the process's one connection, kept checked out between autocommit calls (see
        # _held_connection); None when it is back in the pool.
        self._held: Any = None
        self._held_since = 0.0
        self._held_pid = os.getpid()
        # Set by sweep.storage.open_storage: storage calls then wait out an unreachable database.
        self.patience: Patience | None = None
        if engine.dialect.name == "postgresql":
            # Reads and one-statement writes run in autocommit on the connections of the same pool as
            # Optuna's ORM sessions (sweep.storage sizes it: one connection at rest, two at a peak), so
            # a worker process never holds more than its budget, whoever asks for a connection.
            self.autocommit_engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    def sessions(self, scoped_session: Any) -> Any:
        """Optuna's ``scoped_session`` as the storage's ORM calls should use it: on PostgreSQL, on the
        thread's pinned connection while it has one (``PinnedSessions``)."""
        if self.engine.dialect.name == "postgresql":
            return PinnedSessions(scoped_session, self._pins, self._give_back_held)
        return scoped_session

    @contextlib.contextmanager
    def connection(self, kind: str) -> Iterator[tuple[Any, Any]]:
        """A connection for one unit of work, and the transaction to commit (None: nothing to commit).

        ``kind``: "read" (a snapshot; on SQLite a deferred transaction, never the write lock), "write"
        (one statement), "beat" (a heartbeat: a "write" that on PostgreSQL takes a connection of its
        own rather than wait long for the process's), "txn" (several statements, atomic) or "durable"
        (a "txn" whose commit waits for the disk on PostgreSQL: the trial state changes). On SQLite
        every write takes the write lock at BEGIN, and the threads of one process (a worker and its
        heartbeat) queue on a Python lock first: SQLite's busy handler would sleep in steps of
        milliseconds instead. On PostgreSQL
        a read or a one-statement write runs in autocommit: no BEGIN/COMMIT round trips (under read
        committed, separate statements never shared a snapshot anyway), and its commit does not wait
        for the WAL flush (2.5-4 ms on an ordinary disk, the bulk of a stock Optuna trial's time).
        Every kind takes its connection from the process's one small pool for the call only, and a
        thread holding a lock's transaction (``pinned``) runs every call in it.
        """
        sqlite = self.sqlite
        pinned = None if sqlite else self.pinned_connection()
        if pinned is not None:
            # Inside this thread's lock transaction: its statements are part of it and commit with the
            # lock's release (the budget decision and the trial it hands out are one atomic unit).
            if kind == "durable":
                pinned.exec_driver_sql("SET LOCAL synchronous_commit = on")
            yield pinned, None
        elif sqlite and kind == "read":
            with self.engine.connect().execution_options(sweep_read_only=True) as conn:
                yield conn, None
        elif sqlite:
            with self._write_lock, self.engine.connect() as conn:
                yield conn, conn.begin()
        elif kind == "beat":
            # A beat never waits long behind a stuck call of the trial's thread (a dead path is only
            # dropped after tcp_user_timeout, sweep.storage): past a second it takes a connection of
            # its own (the pool's second), so the trial is not declared stale while its owner lives.
            if self.calls.acquire(timeout=_BEAT_WAIT_S):
                try:
                    yield self._held_connection(), None
                finally:
                    self.calls.release()
            else:
                with self.autocommit_engine.connect() as conn:
                    yield conn, None
        elif kind in ("read", "write"):
            # The process's calls take turns on its one connection (a beat waits for a report's round
            # trip, under a millisecond): overlapping calls would open and close the pool's second
            # connection each time (a connect and an authentication, for the client and the server).
            with self.calls:
                yield self._held_connection(), None
        else:
            with self.calls, self.pool_connection() as conn:
                transaction = conn.begin()
                if kind == "durable":
                    # Connections commit asynchronously by default (sweep.storage). A state change (a
                    # worker taking a WAITING trial, a trial's end) waits for its WAL flush, and with
                    # it for every earlier write of the trial (WAL order): once tell returns, the
                    # whole trial is on disk. A trial lost before that is failed and retried.
                    conn.exec_driver_sql("SET LOCAL synchronous_commit = on")
                yield conn, transaction

    def pinned_connection(self) -> Any:
        """The connection this thread's lock transaction pinned (None: it holds no lock)."""
        return getattr(self._pins, "conn", None)

    def _held_connection(self) -> Any:
        """The autocommit connection the process's one-statement calls share (PostgreSQL; under calls).

        Kept checked out between calls: a pool checkout and check-in per statement cost ~2 ms per
        trial (0.30 → 0.25 of stock). It is the same pool connection every other call uses:
        ``pool_connection`` gives it back before checking one out, so a worker still holds one
        connection at rest, two only while a call overlaps a lock's transaction.
        """
        held = self._held
        if held is not None and (
            held.invalidated
            or held.closed
            or self._held_pid != os.getpid()
            or time.monotonic() - self._held_since > _HELD_RECYCLE_S
        ):
            self._drop_held()
            held = None
        if held is None:
            held = self._held = self.autocommit_engine.connect()
            self._held_since = time.monotonic()
            self._held_pid = os.getpid()
        return held

    def _drop_held(self) -> None:
        """Give the held connection back to the pool (under calls)."""
        held, self._held = self._held, None
        if held is None:
            return
        if self._held_pid != os.getpid():
            # Inherited through fork: its socket is the parent's. Never used, closed or collected here
            # (a collected checkout would be reset and closed on the parent's connection).
            _INHERITED.append(held)
            return
        with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
            held.close()  # back to the pool (or discarded, if it was invalidated)

    def _give_back_held(self) -> None:
        """Give the held connection back to the pool, waiting for a call that uses it."""
        with self.calls:
            self._drop_held()

    @contextlib.contextmanager
    def pool_connection(self) -> Iterator[Any]:
        """A connection from the pool for a transaction (PostgreSQL: this process's held connection,
        given back first, so no second one is opened while it sits idle)."""
        with self.calls:
            self._drop_held()
            with self.engine.connect() as conn:
                yield conn

    @contextlib.contextmanager
    def pinned(self, conn: Any) -> Iterator[None]:
        """Run every call of this thread on ``conn`` (see ``SweepRDBStorage.pinned``) until the block ends."""
        if self.pinned_connection() is not None:
            raise RuntimeError("a storage lock is already held by this thread")
        self._pins.conn = conn
        try:
            yield
        finally:
            self._pins.conn = None

    def close(self) -> None:
        """Give every database connection back."""
        with self.calls:
            self._drop_held()
        self.engine.dispose()  # the autocommit engine shares its pool

    def run(self, kind: str, op: Callable[[Any], _T]) -> _T:
        """Run ``op(connection)`` as one unit of work; once more on a fresh connection if the first one
        turns out dead (a database restart, a connection cut while a trial trained for minutes).

        This replaces the pool's pre-ping (a round trip before every call). Retrying is safe: reads and
        one-statement writes (upserts) are idempotent, and a transaction is only retried when it failed
        before its commit, so it cannot have happened.
        """
        for attempt in (1, 2):
            committing = False
            try:
                with self.connection(kind) as (conn, transaction):
                    result = op(conn)
                    if transaction is not None:
                        committing = True
                        transaction.commit()
                    return result
            except sqlalchemy.exc.IntegrityError:
                raise  # as Optuna's sessions do: callers tell a lost race from a fault
            except sqlalchemy.exc.DBAPIError as exc:
                retry = exc.connection_invalidated and self.pinned_connection() is None  # a lock's txn is lost
                if exc.connection_invalidated or transient(exc):
                    # Also a connection cut under a statement (sweep.outage.CallWatchdog) that the
                    # driver did not report as a disconnect: it is never used again.
                    with self.calls:
                        self._drop_held()
                    if self.patience is not None:
                        self.patience.noticed(exc)
                if attempt == 2 or not retry or (committing and kind != "write"):
                    raise _fault(exc) from exc
            except sqlalchemy.exc.SQLAlchemyError as exc:
                raise _fault(exc) from exc
        raise AssertionError("unreachable")


def patient(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` of a SweepRDBStorage, waited out as a whole while the database is away (its ``patience``)."""

    @functools.wraps(method)
    def call(self: SweepRDBStorage, *args: Any, **kwargs: Any) -> Any:
        patience = getattr(self, "patience", None)
        if patience is None or self._connections.pinned_connection() is not None:
            # Inside a lock's transaction the call fails at once: the transaction is lost with its
            # connection, so the lock's holder redoes the whole block (sweep.storage.patiently).
            return method(self, *args, **kwargs)
        return patience.call(lambda: method(self, *args, **kwargs))

    return call
