"""Optuna's RDB storage with a lean hot path: same schema, same semantics, a fraction of the SQL work.

Stock ``RDBStorage`` runs every call through an ORM session: a trial's ask + 4 suggests + 10 reports +
tell is ~21 transactions and ~73 statements, each with object loading and flushing (40-90 ms of client
CPU per trial on a small machine). ``SweepRDBStorage`` keeps Optuna's tables (so Optuna, the dashboard
and ``optuna.load_study`` read the same database) and overrides only the calls a worker makes per
trial:

- every write is one statement (or a short transaction of two or three), built once and executed with
  bound parameters, guarded in SQL by the trial still being unfinished (``INSERT ... SELECT ...
  WHERE state IN (RUNNING, WAITING)`` with an upsert); only when that touches no row is the trial
  read, to raise what Optuna raises;
- trial reads (``_get_trials``, which Optuna's own cache layer calls) are Core selects that build
  ``FrozenTrial`` objects directly (on SQLite in a deferred read transaction: readers never take the
  write lock);
- a trial this process created is mirrored in memory, write-through: ``get_trial`` on it (Optuna
  calls it when a trial starts and twice in ``tell``) needs no query, nor does re-reading it once
  finished. Only the owner writes a running trial; another process can only fail it as stale, which
  the owner's next write or heartbeat detects in SQL (storage/README.md: the storage contract). A
  mirrored trial is served only while its row is the same (study, number, start): SQLite hands the ids
  of deleted trials out again;
- on PostgreSQL, reads and one-statement writes run in autocommit, only state changes wait for the
  WAL flush (``storage/README.md``: what a database crash can lose), and instead of a pre-ping per
  call a call on a dead connection is retried once (``_run``).

Everything not on the per-trial path (studies, templates from retries, stale-trial detection) is
Optuna's own code; its read-only calls begin without SQLite's write lock. Database errors are Optuna's
``StorageInternalError``. Built on Optuna's internals of the releases in ``sweep.compat.TESTED_OPTUNA``: on any other
Optuna, ``UNSUPPORTED`` says why in one line and sweep.storage opens Optuna's own RDBStorage instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import optuna
import sqlalchemy
import sqlalchemy.orm
from optuna import distributions
from optuna.trial import FrozenTrial, TrialState

from sweep.compat import untested_optuna
from sweep.outage import Patience, transient

_T = TypeVar("_T")
# Indexes sweep adds to Optuna's schema (storage/README.md): what the budget gate reads under its lock
# (the WAITING and RUNNING trials, the next trial number, the retries) is then found by index instead
# of by a scan of every trial of the study (at 100,000 trials: 14 ms of the lock's ~27 ms per take).
INDEXES = (
    ("ix_sweep_trials_study_state", "trials", ("study_id", "state")),
    ("ix_sweep_trials_study_number", "trials", ("study_id", "number")),
    ("ix_sweep_trial_system_attributes_key", "trial_system_attributes", ("key",)),
)
_MIRROR_SIZE = 256  # trials kept in memory; a running trial evicted early is simply read from the database
_log = logging.getLogger("sweep.storage")
_BEAT_WAIT_S = 1.0  # how long a heartbeat waits for the process's connection before taking its own
_HELD_RECYCLE_S = 1800.0  # the held connection is renewed as often as the pool recycles (pool_recycle)
_INHERITED: list[Any] = []  # held connections a forked child inherited: kept alive, never touched
# States in which a mirrored trial is exactly what the database holds, children included (_read_trials).
_MIRROR_EXACT = frozenset({TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL})
# Bound ids per IN list: under SQLite's variable limit (32,766 since 3.32, 999 before) and PostgreSQL's
# 65,535 parameters per statement, with room for the other parameters of the query.
_IN_CHUNK = 30_000 if sqlite3.sqlite_version_info >= (3, 32) else 900

# sweep.compat owns the Optuna releases this module was tested against: it overrides RDBStorage's
# private methods and writes its tables directly, so a new minor may change what it relies on.
# Optuna internals used below, checked at import so that a different Optuna is refused in one line
# (sweep.storage then falls back to Optuna's own RDBStorage) instead of failing in the middle of a sweep.
_RDB_STORAGE_NEEDS = ("_get_trials", "_create_new_trial", "_set_trial_param", "check_trial_is_updatable")
_MODEL_NEEDS = {
    "TrialModel": ("trial_id", "number", "study_id", "state", "datetime_start", "datetime_complete"),
    "StudyModel": ("study_id",),
    "StudyUserAttributeModel": ("study_id", "key", "value_json"),
    "TrialParamModel": ("trial_id", "param_id", "param_name", "param_value", "distribution_json"),
    "TrialValueModel": ("trial_id", "objective", "value", "value_type"),
    "TrialIntermediateValueModel": ("trial_id", "step", "intermediate_value", "intermediate_value_type"),
    "TrialUserAttributeModel": ("trial_id", "key", "value_json"),
    "TrialSystemAttributeModel": ("trial_id", "key", "value_json"),
    "TrialHeartbeatModel": ("trial_id", "heartbeat"),
}


def _unsupported_reason() -> str | None:
    """Why this Optuna cannot run under SweepRDBStorage (None: it can)."""
    untested = untested_optuna()
    if untested is not None:
        return untested
    try:
        from optuna.storages._rdb import models as rdb_models
    except ImportError as exc:
        return f"Optuna {optuna.__version__} has no optuna.storages._rdb.models ({exc})"
    for model, columns in _MODEL_NEEDS.items():
        table = getattr(getattr(rdb_models, model, None), "__table__", None)
        missing = [c for c in columns if table is None or c not in table.c]
        if missing:
            return f"Optuna {optuna.__version__}'s {model} lacks {', '.join(missing)}"
    from optuna.storages._rdb import storage as rdb_storage

    manager = getattr(rdb_storage, "_VersionManager", None)
    if manager is None:
        return f"Optuna {optuna.__version__} has no _VersionManager"
    for owner, names in (
        (optuna.storages.RDBStorage, _RDB_STORAGE_NEEDS),
        (manager, ("check_table_schema_compatibility", "get_current_version")),
        (rdb_models.TrialValueModel, ("value_to_stored_repr", "stored_repr_to_value")),
        (
            rdb_models.TrialIntermediateValueModel,
            ("intermediate_value_to_stored_repr", "stored_repr_to_intermediate_value"),
        ),
    ):
        missing = [n for n in names if not hasattr(owner, n)]
        if missing:
            return f"Optuna {optuna.__version__}'s {owner.__name__} lacks {', '.join(missing)}"
    return None


# None when the lean storage can run; else why not, in one line (sweep.storage falls back on it).
UNSUPPORTED = _unsupported_reason()
if UNSUPPORTED is None:
    from optuna.storages._rdb import models
    from optuna.storages._rdb import storage as _rdb_storage

    _trials = models.TrialModel.__table__
    _studies = models.StudyModel.__table__
    _study_user = models.StudyUserAttributeModel.__table__
    _params = models.TrialParamModel.__table__
    _values = models.TrialValueModel.__table__
    _inter = models.TrialIntermediateValueModel.__table__
    _user = models.TrialUserAttributeModel.__table__
    _system = models.TrialSystemAttributeModel.__table__
    _beats = models.TrialHeartbeatModel.__table__

# Set while an inherited read-only ORM method runs: its SQLite transaction then begins DEFERRED and
# takes no write lock (_begin_immediate). Such a method may hold its session open while it opens a
# second connection (Optuna's check_table_schema_compatibility): with BEGIN IMMEDIATE on both, it
# would wait for itself until the busy timeout.
_READ_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("sweep_rdb_read_only", default=False)


@sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "begin")
def _begin_immediate(conn: Any) -> None:
    # pysqlite opens transactions lazily as DEFERRED; two workers that both read and then want to
    # write fail at once with "database is locked" (the busy timeout does not apply to a lock
    # upgrade). Taking the write lock at BEGIN makes writers queue on the busy timeout instead.
    # Reads (sweep.rdb's own, inherited read-only methods, sweep.storage's budget query) begin
    # DEFERRED: WAL readers never block the writer nor wait for it.
    if getattr(conn.engine, "_sweep_immediate", False):
        read_only = conn.get_execution_options().get("sweep_read_only", False) or _READ_ONLY.get()
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _unfinished() -> Any:
    # Two equalities, not IN (...): an IN list is an "expanding" parameter, re-rendered on every call.
    return sqlalchemy.or_(_trials.c.state == TrialState.RUNNING, _trials.c.state == TrialState.WAITING)


@functools.lru_cache(maxsize=1024)
def _distribution(text: str) -> distributions.BaseDistribution:
    # A study has a handful of distinct distribution JSONs; parsing each once matters at 5,000 trials.
    return distributions.json_to_distribution(text)


_SCALARS = (str, int, float, bool, type(None))


def _own_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes of one's own: nested JSON values deep-copied, scalars (most attributes) as they are."""
    return {k: v if isinstance(v, _SCALARS) else copy.deepcopy(v) for k, v in attrs.items()}


def _copy(trial: FrozenTrial, deep: bool = True) -> FrozenTrial:
    """An independent copy of a trial (Optuna mutates the one it is handed); only the attribute values,
    which may be nested JSON, need a deep copy: everything else is immutable scalars. ``deep=False``
    (a ``deepcopy=False`` read, whose caller promises not to mutate) shares those values: the mirror
    replaces an attribute's value on a write, never changes it in place."""
    attrs = _own_attrs if deep else dict
    return FrozenTrial(
        number=trial.number,
        state=trial.state,
        value=None,
        values=list(trial.values) if trial.values is not None else None,
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        params=dict(trial.params),
        distributions=dict(trial.distributions),
        user_attrs=attrs(trial.user_attrs),
        system_attrs=attrs(trial.system_attrs),
        intermediate_values=dict(trial.intermediate_values),
        trial_id=trial._trial_id,
    )


def _utc_now() -> dt.datetime:
    """Now as Optuna's RDB schema stores it: naive UTC."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _local(utc: dt.datetime | None) -> dt.datetime | None:
    """A stored naive-UTC datetime as Optuna hands it out: naive local time."""
    if utc is None:
        return None
    return utc.replace(tzinfo=dt.UTC).astimezone().replace(tzinfo=None)


@dataclasses.dataclass(slots=True)
class _Mirrored:
    """A trial mirrored in memory, and what identifies its row: SQLite reuses the ids of deleted trials
    (and studies), so a trial id alone may name another study's trial since; the start time (naive UTC,
    microseconds) tells them apart."""

    study_id: int
    number: int
    start: dt.datetime | None
    trial: FrozenTrial

    def is_row(self, row: Any) -> bool:
        return (
            row.study_id == self.study_id
            and row.number == self.number
            and row.datetime_start == self.start
            and row.state == self.trial.state
        )


def _fault(exc: sqlalchemy.exc.SQLAlchemyError) -> optuna.exceptions.StorageInternalError:
    """A database error as Optuna's RDBStorage raises it (the one type callers of either storage catch)."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return optuna.exceptions.StorageInternalError(
        f"the database refused a storage call: {reason[0] if reason else type(exc).__name__}"
    )


class SweepRDBStorage(optuna.storages.RDBStorage):
    """``RDBStorage`` whose per-trial calls are single Core statements (see the module docstring)."""

    def __init__(
        self, url: str, engine_kwargs: dict[str, Any] | None = None, skip_compatibility_check: bool = False,
        **kwargs: Any,
    ) -> None:
        # The schema check runs after _init_process_state, with the version manager that holds one
        # connection at a time (_LockFreeVersionManager).
        super().__init__(url, engine_kwargs, True, **kwargs)
        self.skip_compatibility_check = skip_compatibility_check
        self._init_process_state()
        if not skip_compatibility_check:
            self._version_manager.check_table_schema_compatibility()
        self._ensure_indexes()

    def _ensure_indexes(self) -> None:
        """Create sweep's indexes (``INDEXES``) where missing: looked up first, so a worker start on a
        database that has them takes no table lock. Without them (a role that may not create indexes)
        everything works, the budget gate only slower on big studies: said once, on one line."""
        try:
            with self.engine.connect().execution_options(sweep_read_only=True) as conn:
                inspector = sqlalchemy.inspect(conn)
                have = {i["name"] for table in {t for _, t, _ in INDEXES} for i in inspector.get_indexes(table)}
            for name, table, columns in INDEXES:
                if name in have:
                    continue
                # IF NOT EXISTS: workers starting together race to create it; one wins, one waits.
                with contextlib.suppress(sqlalchemy.exc.IntegrityError), self.engine.begin() as conn:
                    conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({', '.join(columns)})")
        except sqlalchemy.exc.SQLAlchemyError as exc:
            _log.warning("sweep: could not add sweep's indexes (%s); the budget gate reads whole studies",
                         str(getattr(exc, "orig", exc)).strip().splitlines()[0])

    def _init_process_state(self) -> None:
        # SQLite write transactions take the write lock at BEGIN (sweep.storage's begin hook); set only
        # after Optuna's schema set-up in __init__, which runs its own transactions.
        self.engine._sweep_immediate = self.engine.dialect.name == "sqlite"  # type: ignore[attr-defined]
        # Optuna's schema-version checks, which also run outside the storage's own methods (Optuna's
        # tests hold a session open around one), read without the write lock.
        manager = getattr(self, "_version_manager", None)
        if manager is not None and type(manager) is _rdb_storage._VersionManager:
            self._version_manager = _LockFreeVersionManager(self.url, self.engine, self.scoped_session)
        self._mirror: OrderedDict[int, _Mirrored] = OrderedDict()
        self._mirror_lock = threading.Lock()
        self._statements: dict[tuple[Any, ...], Any] = {}
        self._unsure: set[int] = set()  # trials whose end was written when the connection died
        self._write_lock = threading.Lock()
        self.autocommit_engine = self.engine
        # The connection a thread's budget (or kept-models) lock transaction holds (pinned): every call
        # of that thread runs in it until the lock is released (see pinned).
        self._pins = threading.local()
        self._calls = threading.RLock()  # PostgreSQL: one storage call of this process at a time
        # PostgreSQL: the process's one connection, kept checked out between autocommit calls (see
        # _held_connection); None when it is back in the pool.
        self._held: Any = None
        self._held_since = 0.0
        self._held_pid = os.getpid()
        # Set by sweep.storage.open_storage: storage calls then wait out an unreachable database.
        self.patience: Patience | None = None
        if self.engine.dialect.name == "postgresql":
            # Reads and one-statement writes run in autocommit on the connections of the same pool as
            # Optuna's ORM sessions (sweep.storage sizes it: one connection at rest, two at a peak), so
            # a worker process never holds more than its budget, whoever asks for a connection.
            self.autocommit_engine = self.engine.execution_options(isolation_level="AUTOCOMMIT")
            self.scoped_session = _PinnedSessions(self.scoped_session, self._pins, self._give_back_held)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_mirror", None)
        state.pop("_mirror_lock", None)
        state.pop("_statements", None)
        state.pop("_unsure", None)
        state.pop("_write_lock", None)
        state.pop("autocommit_engine", None)
        state.pop("_pins", None)
        state.pop("_calls", None)
        state.pop("_held", None)
        state.pop("patience", None)  # its lines go to this process's display
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._init_process_state()

    # ------------------------------------------------------------------ helpers

    def _insert(self, table: sqlalchemy.Table) -> Any:
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    @contextlib.contextmanager
    def _connection(self, kind: str) -> Iterator[tuple[Any, Any]]:
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
        sqlite = self.engine.dialect.name == "sqlite"
        pinned = None if sqlite else self._pinned()
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
            if self._calls.acquire(timeout=_BEAT_WAIT_S):
                try:
                    yield self._held_connection(), None
                finally:
                    self._calls.release()
            else:
                with self.autocommit_engine.connect() as conn:
                    yield conn, None
        elif kind in ("read", "write"):
            # The process's calls take turns on its one connection (a beat waits for a report's round
            # trip, under a millisecond): overlapping calls would open and close the pool's second
            # connection each time (a connect and an authentication, for the client and the server).
            with self._calls:
                yield self._held_connection(), None
        else:
            with self._calls, self.pool_connection() as conn:
                transaction = conn.begin()
                if kind == "durable":
                    # Connections commit asynchronously by default (sweep.storage). A state change (a
                    # worker taking a WAITING trial, a trial's end) waits for its WAL flush, and with
                    # it for every earlier write of the trial (WAL order): once tell returns, the
                    # whole trial is on disk. A trial lost before that is failed and retried.
                    conn.exec_driver_sql("SET LOCAL synchronous_commit = on")
                yield conn, transaction

    def _pinned(self) -> Any:
        return getattr(self._pins, "conn", None)

    def _held_connection(self) -> Any:
        """The autocommit connection the process's one-statement calls share (PostgreSQL; under _calls).

        Kept checked out between calls: a pool checkout and check-in per statement cost ~2 ms per
        trial (0.30 → 0.25 of stock). It is the same pool connection every other call uses:
        ``pool_connection`` gives it back before checking one out, so a worker still holds one
        connection at rest, two only while a call overlaps a lock's transaction.
        """
        held = self._held
        if held is not None and (held.invalidated or held.closed or self._held_pid != os.getpid()
                                 or time.monotonic() - self._held_since > _HELD_RECYCLE_S):
            self._drop_held()
            held = None
        if held is None:
            held = self._held = self.autocommit_engine.connect()
            self._held_since = time.monotonic()
            self._held_pid = os.getpid()
        return held

    def _drop_held(self) -> None:
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
        with self._calls:
            self._drop_held()

    @contextlib.contextmanager
    def pool_connection(self) -> Iterator[Any]:
        """A connection from the pool for a transaction (PostgreSQL: this process's held connection,
        given back first, so no second one is opened while it sits idle)."""
        with self._calls:
            self._drop_held()
            with self.engine.connect() as conn:
                yield conn

    @contextlib.contextmanager
    def read_only(self) -> Iterator[Any]:
        """A connection for reads outside the storage's own methods (sweep.storage.read_connection)."""
        with self._connection("read") as (conn, _):
            yield conn

    @contextlib.contextmanager
    def pinned(self, conn: Any) -> Iterator[None]:
        """Run every call of this thread (sweep.rdb's and Optuna's ORM sessions) on ``conn``, a connection
        inside a transaction (the budget lock's, sweep.storage), until the block ends.

        A transaction-scoped lock then costs no second connection, and it survives PgBouncer's
        transaction pooling, where a session-level lock could be released on another server connection.
        """
        if self._pinned() is not None:
            raise RuntimeError("a storage lock is already held by this thread")
        self._pins.conn = conn
        try:
            yield
        finally:
            self._pins.conn = None

    def close(self) -> None:
        """Give every database connection back: for a process that opens storages repeatedly
        (``sweep report --watch``); a worker keeps its storage for its lifetime."""
        with self._calls:
            self._drop_held()
        self.engine.dispose()  # the autocommit engine shares its pool

    def _run(self, kind: str, op: Callable[[Any], _T]) -> _T:
        """Run ``op(connection)`` as one unit of work; once more on a fresh connection if the first one
        turns out dead (a database restart, a connection cut while a trial trained for minutes).

        This replaces the pool's pre-ping (a round trip before every call). Retrying is safe: reads and
        one-statement writes (upserts) are idempotent, and a transaction is only retried when it failed
        before its commit, so it cannot have happened.
        """
        for attempt in (1, 2):
            committing = False
            try:
                with self._connection(kind) as (conn, transaction):
                    result = op(conn)
                    if transaction is not None:
                        committing = True
                        transaction.commit()
                    return result
            except sqlalchemy.exc.IntegrityError:
                raise  # as Optuna's sessions do: callers tell a lost race from a fault
            except sqlalchemy.exc.DBAPIError as exc:
                retry = exc.connection_invalidated and self._pinned() is None  # a lock's transaction is lost
                if exc.connection_invalidated or transient(exc):
                    # Also a connection cut under a statement (sweep.outage.CallWatchdog) that the
                    # driver did not report as a disconnect: it is never used again.
                    with self._calls:
                        self._drop_held()
                    if self.patience is not None:
                        self.patience.noticed(exc)
                if attempt == 2 or not retry or (committing and kind != "write"):
                    raise _fault(exc) from exc
            except sqlalchemy.exc.SQLAlchemyError as exc:
                raise _fault(exc) from exc
        raise AssertionError("unreachable")

    def _raise_if_not_updatable(self, conn: Any, trial_id: int) -> None:
        """Raise what Optuna raises for a write to ``trial_id`` that its guard refused."""
        row = conn.execute(
            sqlalchemy.select(_trials.c.study_id, _trials.c.number, _trials.c.state, _trials.c.datetime_start).where(
                _trials.c.trial_id == trial_id
            )
        ).first()
        with self._mirror_lock:
            known = self._mirror.get(trial_id)
        replaced = (
            known is not None
            and row is not None
            and (row.study_id, row.number, row.datetime_start)
            != (
                known.study_id,
                known.number,
                known.start,
            )
        )
        if row is None or replaced:
            # Our trial is gone (its study deleted); its id may already be another study's trial.
            self._forget(trial_id)
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        if row.state.is_finished():
            self._forget(trial_id)
        self.check_trial_is_updatable(trial_id, row.state)

    def _upsert_statement(
        self, table: sqlalchemy.Table, keys: tuple[str, ...], columns: tuple[str, ...], update: bool, mine: bool
    ) -> Any:
        """``INSERT INTO table SELECT :values WHERE the trial is unfinished ON CONFLICT ...``, built once.

        Built once per shape and executed with bound parameters, so SQLAlchemy compiles it once too
        (constructing the statement per call cost more than running it). ``mine``: the trial is
        mirrored, and the guard also matches its start time, so that a write never lands in another
        study's trial that reuses the id of ours after a deletion.
        """
        cache_key = (table.name, keys, columns, update, mine)
        stmt = self._statements.get(cache_key)
        if stmt is None:
            trial_id = sqlalchemy.bindparam("trial_id", type_=_trials.c.trial_id.type)
            guard = [_trials.c.trial_id == trial_id, _unfinished()]
            if mine:
                guard.append(
                    _trials.c.datetime_start == sqlalchemy.bindparam("_start", type_=_trials.c.datetime_start.type)
                )
            source = sqlalchemy.select(
                trial_id, *(sqlalchemy.bindparam(c, type_=table.c[c].type) for c in columns)
            ).where(*guard)
            stmt = self._insert(table).from_select(["trial_id", *columns], source)
            if update:
                stmt = stmt.on_conflict_do_update(
                    index_elements=[table.c[k] for k in keys],
                    set_={c: stmt.excluded[c] for c in columns if c not in keys},
                )
            else:  # Optuna ignores a duplicate (another thread wrote the same key first)
                stmt = stmt.on_conflict_do_nothing(index_elements=[table.c[k] for k in keys])
            # RETURNING, not rowcount: psycopg reports -1 for INSERT ... SELECT ... ON CONFLICT.
            stmt = stmt.returning(table.c.trial_id)
            self._statements[cache_key] = stmt
        return stmt

    def _guarded_upsert(
        self,
        conn: Any,
        table: sqlalchemy.Table,
        keys: tuple[str, ...],
        values: dict[str, Any],
        trial_id: int,
        *,
        update: bool = True,
    ) -> None:
        """Insert (or update on conflict) a child row of an unfinished trial, in one statement."""
        start = self._mirrored_start(trial_id)
        stmt = self._upsert_statement(table, keys, tuple(values), update, start is not None)
        params = (
            {"trial_id": trial_id, **values} if start is None else {"trial_id": trial_id, "_start": start, **values}
        )
        if conn.execute(stmt, params).first() is None:
            self._raise_if_not_updatable(conn, trial_id)

    def _remember(self, study_id: int, start: dt.datetime | None, trial: FrozenTrial) -> None:
        with self._mirror_lock:
            self._mirror[trial._trial_id] = _Mirrored(study_id, trial.number, start, trial)
            self._mirror.move_to_end(trial._trial_id)
            while len(self._mirror) > _MIRROR_SIZE:
                self._mirror.popitem(last=False)

    def _forget(self, trial_id: int) -> None:
        with self._mirror_lock:
            self._mirror.pop(trial_id, None)

    def _mirrored_start(self, trial_id: int) -> dt.datetime | None:
        with self._mirror_lock:
            known = self._mirror.get(trial_id)
            return known.start if known is not None else None

    def _mirrored(self, trial_id: int, update: Any) -> None:
        """Apply ``update(frozen_trial)`` to the mirrored copy of a trial, if there is one."""
        with self._mirror_lock:
            known = self._mirror.get(trial_id)
            if known is not None:
                update(known.trial)

    def delete_study(self, study_id: int) -> None:
        super().delete_study(study_id)
        with self._mirror_lock:  # its trials are gone, and SQLite will hand their ids out again
            for trial_id in [i for i, known in self._mirror.items() if known.study_id == study_id]:
                del self._mirror[trial_id]

    # ------------------------------------------------------------------ trials: create, params

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        if template_trial is not None:  # retries and enqueued trials: Optuna's own path
            return super()._create_new_trial(study_id, template_trial)
        now = _utc_now()

        def create(conn: Any) -> tuple[int, int]:
            # The row lock (PostgreSQL) or the write lock (SQLite, BEGIN IMMEDIATE) makes number unique.
            lock = sqlalchemy.select(_studies.c.study_id).where(_studies.c.study_id == study_id)
            if self.engine.dialect.name == "postgresql":
                lock = lock.with_for_update()
            if conn.execute(lock).scalar() is None:
                raise KeyError(f"No study with study_id {study_id} exists.")
            # number = trials already in the study (numbers are dense: every creator holds the study
            # row), read off the (study_id, number) index and inserted in one statement.
            count = (
                sqlalchemy.select(sqlalchemy.func.coalesce(sqlalchemy.func.max(_trials.c.number) + 1, 0))
                .where(_trials.c.study_id == study_id)
            ).scalar_subquery()
            insert = sqlalchemy.insert(_trials).from_select(
                ["number", "study_id", "state", "datetime_start"],
                sqlalchemy.select(
                    count,
                    sqlalchemy.literal(study_id, _trials.c.study_id.type),
                    sqlalchemy.literal(TrialState.RUNNING, _trials.c.state.type),
                    sqlalchemy.literal(now, _trials.c.datetime_start.type),
                ),
            )
            trial_id, number = conn.execute(insert.returning(_trials.c.trial_id, _trials.c.number)).one()
            self._first_beat(conn, trial_id)
            return number, trial_id

        number, trial_id = self._run("txn", create)
        trial = FrozenTrial(
            number=number,
            state=TrialState.RUNNING,
            value=None,
            values=None,
            datetime_start=_local(now),
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={},
            intermediate_values={},
            trial_id=trial_id,
        )
        self._remember(study_id, now, _copy(trial))
        return trial

    # A trial is created (or a WAITING one taken) with its first heartbeat, in one transaction: killed
    # in between, it would be RUNNING without a heartbeat row, which Optuna's stale check never finds.
    BEATS_WHEN_TAKEN = True

    def _first_beat(self, conn: Any, trial_id: int) -> None:
        if self.heartbeat_interval is None:
            return
        stmt = self._statements.get(("first beat",))
        if stmt is None:
            stmt = self._insert(_beats).values(
                trial_id=sqlalchemy.bindparam("trial_id", type_=_beats.c.trial_id.type), heartbeat=sqlalchemy.func.now()
            )
            stmt = self._statements[("first beat",)] = stmt.on_conflict_do_update(
                index_elements=[_beats.c.trial_id], set_={"heartbeat": sqlalchemy.func.now()}
            )
        conn.execute(stmt, {"trial_id": trial_id})

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # Optuna's, plus the RUNNING trials without a heartbeat row started longer than the grace period
        # ago (Optuna skips those: made by a process killed before its first beat, they would stay
        # RUNNING for ever and the study would wait for them). One select instead of loading every
        # running trial with its heartbeat through the ORM.
        assert self.heartbeat_interval is not None
        grace = dt.timedelta(seconds=self.grace_period or 2 * self.heartbeat_interval)

        def read(conn: Any) -> list[int]:
            # Heartbeats are the database's clock (func.now()), start times the workers' (naive UTC).
            now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
            beat_before = now.replace(tzinfo=None) - grace
            start_before = _utc_now() - grace
            stale = (
                sqlalchemy.select(_trials.c.trial_id)
                .select_from(_trials.outerjoin(_beats, _beats.c.trial_id == _trials.c.trial_id))
                .where(
                    _trials.c.study_id == study_id,
                    _trials.c.state == TrialState.RUNNING,
                    sqlalchemy.or_(
                        _beats.c.heartbeat < beat_before,
                        sqlalchemy.and_(_beats.c.trial_id.is_(None), _trials.c.datetime_start < start_before),
                    ),
                )
                .order_by(_trials.c.trial_id)
            )
            return list(conn.execute(stale).scalars())

        return self._run("read", read)

    def _set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: distributions.BaseDistribution,
        previous_distribution: distributions.BaseDistribution | None,
    ) -> None:
        values = {
            "param_name": param_name,
            "param_value": param_value_internal,
            "distribution_json": distributions.distribution_to_json(distribution),
        }

        def write(conn: Any) -> None:
            previous = previous_distribution
            if previous is None:  # Optuna's cache layer passes it after the first time
                stored = conn.execute(
                    sqlalchemy.select(_params.c.distribution_json)
                    .join(_trials, _trials.c.trial_id == _params.c.trial_id)
                    .where(
                        _params.c.param_name == param_name,
                        _trials.c.study_id
                        == sqlalchemy.select(_trials.c.study_id)
                        .where(_trials.c.trial_id == trial_id)
                        .scalar_subquery(),
                    )
                    .limit(1)
                ).scalar()
                if stored is not None:
                    previous = _distribution(stored)
            if previous is not None:
                try:
                    distributions.check_distribution_compatibility(previous, distribution)
                except ValueError:
                    # Optuna checks the trial first: a finished (or missing) trial is that error.
                    self._raise_if_not_updatable(conn, trial_id)
                    raise
            self._guarded_upsert(conn, _params, ("trial_id", "param_name"), values, trial_id, update=False)

        self._run("write" if previous_distribution is not None else "txn", write)

        def update(trial: FrozenTrial) -> None:
            if param_name not in trial.params:
                trial.params[param_name] = distribution.to_external_repr(param_value_internal)
                trial.distributions[param_name] = distribution

        self._mirrored(trial_id, update)

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: distributions.BaseDistribution,
    ) -> None:
        self._set_trial_param(trial_id, param_name, param_value_internal, distribution, None)

    # ------------------------------------------------------------------ trials: reports, attributes

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(intermediate_value)
        values = {"step": step, "intermediate_value": stored, "intermediate_value_type": kind}
        self._run("write", lambda conn: self._guarded_upsert(conn, _inter, ("trial_id", "step"), values, trial_id))
        self._mirrored(trial_id, lambda t: t.intermediate_values.__setitem__(step, intermediate_value))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        row = {"key": key, "value_json": json.dumps(value)}
        self._run("write", lambda conn: self._guarded_upsert(conn, _user, ("trial_id", "key"), row, trial_id))
        self._mirrored(trial_id, lambda t: t.user_attrs.__setitem__(key, json.loads(json.dumps(value))))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        row = {"key": key, "value_json": json.dumps(value)}
        self._run("write", lambda conn: self._guarded_upsert(conn, _system, ("trial_id", "key"), row, trial_id))
        self._mirrored(trial_id, lambda t: t.system_attrs.__setitem__(key, json.loads(json.dumps(value))))

    # ------------------------------------------------------------------ trials: state

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        if not (state.is_finished() or state == TrialState.RUNNING):
            self._forget(trial_id)
            return super().set_trial_state_values(trial_id, state, values)
        now = _utc_now()
        won: list[int] = []

        def write(conn: Any) -> bool:
            won.clear()  # a retried transaction starts over
            if state == TrialState.RUNNING:  # popping a WAITING trial: exactly one worker may win it
                update = (
                    sqlalchemy.update(_trials)
                    .where(_trials.c.trial_id == trial_id, _trials.c.state == TrialState.WAITING)
                    .values(state=state, datetime_start=now)
                )
            else:
                guard = [_trials.c.trial_id == trial_id, _unfinished()]
                if (start := self._mirrored_start(trial_id)) is not None:
                    guard.append(_trials.c.datetime_start == start)  # ours, not a reused id (_Mirrored)
                update = sqlalchemy.update(_trials).where(*guard).values(state=state, datetime_complete=now)
            popped = conn.execute(update.returning(_trials.c.study_id)).first()
            if popped is None:
                if trial_id in self._unsure and state in (TrialState.COMPLETE, TrialState.PRUNED):
                    done = sqlalchemy.select(_trials.c.state).where(_trials.c.trial_id == trial_id)
                    if conn.execute(done).scalar() == state:
                        return True  # ours: only the owner ends a trial so, and that answer was lost
                self._raise_if_not_updatable(conn, trial_id)
                return False  # RUNNING asked of a trial that is not WAITING (another worker took it)
            won.append(popped.study_id)
            if state == TrialState.RUNNING:
                self._first_beat(conn, trial_id)
            for objective, value in enumerate(values or ()):
                stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                stmt = self._insert(_values).values(
                    trial_id=trial_id, objective=objective, value=stored, value_type=kind
                )
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[_values.c.trial_id, _values.c.objective],
                        set_={"value": stmt.excluded.value, "value_type": stmt.excluded.value_type},
                    )
                )
            return True

        try:
            if not self._run("durable", write):
                return False
        except sqlalchemy.exc.IntegrityError:
            return False
        except optuna.exceptions.StorageInternalError as exc:
            if transient(exc):
                # The connection died, maybe after the commit: a retry (Patience) that finds the trial
                # already in this state finds this call's own commit, not a peer's.
                self._unsure.add(trial_id)
            raise
        self._unsure.discard(trial_id)
        if state == TrialState.RUNNING:  # a popped WAITING trial is now this process's: mirror it
            for trial in self._run("read", lambda conn: self._read_trials(conn, _trials.c.trial_id == trial_id)):
                if trial.state == TrialState.RUNNING:
                    self._remember(won[0], now, trial)
            return True

        def finish(trial: FrozenTrial) -> None:
            trial.state = state
            if values is not None:
                trial.values = list(values)
            trial.datetime_complete = _local(now)

        self._mirrored(trial_id, finish)
        return True

    # ------------------------------------------------------------------ reads

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        # Read by every budget decision, under the study's budget lock (pause, budget): one select
        # instead of an ORM session, which costs several times more there (a savepoint of the lock's
        # transaction, sweep.storage).
        def read(conn: Any) -> dict[str, Any]:
            rows = conn.execute(
                sqlalchemy.select(_study_user.c.key, _study_user.c.value_json).where(
                    _study_user.c.study_id == study_id
                )
            ).all()
            if not rows and conn.execute(
                sqlalchemy.select(_studies.c.study_id).where(_studies.c.study_id == study_id)
            ).first() is None:
                raise KeyError(f"No study with study_id {study_id} exists.")
            return {key: json.loads(text) for key, text in rows}

        return self._run("read", read)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        # This process's running trial, from memory: only its owner writes it (a peer's FAIL shows at
        # the owner's next write or heartbeat, which then drop it from the mirror). Any other trial
        # is read, a mirrored finished one with one select (_read_trials: still the same row?).
        with self._mirror_lock:
            known = self._mirror.get(trial_id)
            if known is not None and known.trial.state == TrialState.RUNNING:
                return _copy(known.trial)
        found = self._run("read", lambda conn: self._read_trials(conn, _trials.c.trial_id == trial_id))
        if not found:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        return found[0]

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
        *,
        deepcopy: bool = False,
    ) -> list[FrozenTrial]:
        # deepcopy: whether trials served from the mirror get their own attribute values. Optuna's
        # cache layer calls this without it: it keeps what it is given (never mutating it) and copies
        # on its own for a deepcopy=True read; the uncached get_all_trials passes its deepcopy.
        # Same contract as Optuna's: trials with id > trial_id_greater_than, plus the included ids
        # (the caller's unfinished trials) that are not above it.
        included = sorted(i for i in included_trial_ids if i <= trial_id_greater_than)
        where = [_trials.c.study_id == study_id]
        if states is not None:
            assert isinstance(states, Iterable)
            where.append(_trials.c.state.in_(list(states)))
        # One select, or (more included ids than one IN list may bind) one per chunk of ids: the
        # chunks are disjoint, so their trials are only merged back into id order.
        selections = [sqlalchemy.and_(*where)]
        if trial_id_greater_than > -1:
            newer = _trials.c.trial_id > trial_id_greater_than
            if len(included) <= _IN_CHUNK:
                selections = [
                    sqlalchemy.and_(
                        *where, sqlalchemy.or_(newer, _trials.c.trial_id.in_(included)) if included else newer
                    )
                ]
            else:
                selections = [sqlalchemy.and_(*where, newer)] + [
                    sqlalchemy.and_(*where, _trials.c.trial_id.in_(included[i : i + _IN_CHUNK]))
                    for i in range(0, len(included), _IN_CHUNK)
                ]

        def read(conn: Any) -> list[FrozenTrial]:
            trials = [t for selection in selections for t in self._read_trials(conn, selection, deep=deepcopy)]
            if len(selections) > 1:
                trials.sort(key=lambda t: t._trial_id)
            # Optuna raises for an unknown study; only an empty answer needs the extra query to tell.
            if not trials and conn.execute(select_study, {"study_id": study_id}).first() is None:
                raise KeyError(f"No study with study_id {study_id} exists.")
            return trials

        select_study = sqlalchemy.select(_studies.c.study_id).where(
            _studies.c.study_id == sqlalchemy.bindparam("study_id")
        )
        return self._run("read", read)

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(study_id, states, set(), -1, deepcopy=deepcopy)

    def _read_trials(self, conn: Any, where: Any, *, deep: bool = True) -> list[FrozenTrial]:
        """Every trial matching ``where`` with its params, values, reports and attributes (1 + 5 selects)."""
        rows = conn.execute(
            sqlalchemy.select(
                _trials.c.trial_id,
                _trials.c.study_id,
                _trials.c.number,
                _trials.c.state,
                _trials.c.datetime_start,
                _trials.c.datetime_complete,
            )
            .where(where)
            .order_by(_trials.c.trial_id)
        ).all()
        if not rows:
            return []
        # A trial this process runs or ran (mirrored, same state) needs no child queries: a finished
        # trial never changes again, and only its own worker writes a running trial's params, values,
        # reports and attributes (a peer can only fail it, which changes the state read here). In a
        # worker's incremental reads these are usually the only trials: its current and previous one.
        trials: dict[int, FrozenTrial] = {}
        built: dict[int, FrozenTrial] = {}
        with self._mirror_lock:
            for r in rows:
                known = self._mirror.get(r.trial_id)
                if known is not None and known.is_row(r) and r.state in _MIRROR_EXACT:
                    trials[r.trial_id] = _copy(known.trial, deep)
                else:
                    trials[r.trial_id] = built[r.trial_id] = FrozenTrial(
                        number=r.number,
                        state=r.state,
                        value=None,
                        values=None,
                        datetime_start=_local(r.datetime_start),
                        datetime_complete=_local(r.datetime_complete),
                        params={},
                        distributions={},
                        user_attrs={},
                        system_attrs={},
                        intermediate_values={},
                        trial_id=r.trial_id,
                    )
        if built:
            self._read_children(conn, where, built, every=len(built) == len(rows))
        return list(trials.values())

    def _read_children(self, conn: Any, where: Any, built: dict[int, FrozenTrial], *, every: bool) -> None:
        """Fill ``built`` (trial id → trial) with its params, values, reports and attributes: 5 selects."""
        if len(built) == 1:  # the common single-trial read
            match: Any = lambda table: table.c.trial_id == next(iter(built))  # noqa: E731
        elif every or len(built) > _IN_CHUNK:
            # Every trial of ``where`` (or more than one IN list may bind: the children of every trial
            # of ``where`` are read, and those of trials not in ``built`` skipped): a subquery.
            ids = sqlalchemy.select(_trials.c.trial_id).where(where).scalar_subquery()
            match = lambda table: table.c.trial_id.in_(ids)  # noqa: E731
        else:
            match = lambda table: table.c.trial_id.in_(list(built))  # noqa: E731

        def children(table: sqlalchemy.Table, *cols: Any, order: Any = None) -> Any:
            stmt = sqlalchemy.select(table.c.trial_id, *cols).where(match(table))
            return conn.execute(stmt.order_by(order) if order is not None else stmt)

        # On PostgreSQL (read committed) a child row of a trial created after the first select can
        # show up: rows of trials not in ``built`` are skipped.
        for tid, name, value, text in children(
            _params, _params.c.param_name, _params.c.param_value, _params.c.distribution_json, order=_params.c.param_id
        ):
            if (trial := built.get(tid)) is not None:
                dist = _distribution(text)
                trial.params[name] = dist.to_external_repr(value)
                trial.distributions[name] = dist
        objectives: dict[int, dict[int, float]] = {}
        for tid, objective, value, kind in children(
            _values, _values.c.objective, _values.c.value, _values.c.value_type
        ):
            objectives.setdefault(tid, {})[objective] = models.TrialValueModel.stored_repr_to_value(value, kind)
        for tid, by_objective in objectives.items():
            if (trial := built.get(tid)) is not None:
                trial.values = [by_objective[i] for i in sorted(by_objective)]
        for tid, step, value, kind in children(
            _inter, _inter.c.step, _inter.c.intermediate_value, _inter.c.intermediate_value_type
        ):
            if (trial := built.get(tid)) is not None:
                trial.intermediate_values[step] = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                    value, kind
                )
        for table, attr in ((_user, "user_attrs"), (_system, "system_attrs")):
            for tid, key, text in children(table, table.c.key, table.c.value_json):
                if (trial := built.get(tid)) is not None:
                    getattr(trial, attr)[key] = json.loads(text)

    # ------------------------------------------------------------------ heartbeat

    def record_heartbeat(self, trial_id: int) -> None:
        # The database's clock, as Optuna's stale check compares against it. Only an unfinished trial
        # beats: a beat that finds the trial finished (a peer failed it as stale) or gone drops it
        # from the mirror, so the owner's next read shows the peer's FAIL (Optuna's own storage would
        # have let this beat through, and its reads were never served from memory).
        stmt = self._statements.get(("heartbeat",))
        if stmt is None:
            trial = sqlalchemy.bindparam("trial_id", type_=_trials.c.trial_id.type)
            source = sqlalchemy.select(trial, sqlalchemy.func.now()).where(_trials.c.trial_id == trial, _unfinished())
            stmt = self._insert(_beats).from_select(["trial_id", "heartbeat"], source)
            stmt = stmt.on_conflict_do_update(
                index_elements=[_beats.c.trial_id], set_={"heartbeat": sqlalchemy.func.now()}
            ).returning(_beats.c.trial_id)
            self._statements[("heartbeat",)] = stmt
        if self._run("beat", lambda conn: conn.execute(stmt, {"trial_id": trial_id}).first()) is None:
            self._forget(trial_id)


class _PinnedSessions:
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


# Optuna's read-only ORM methods, inherited as they are, but run with _READ_ONLY set: on SQLite their
# sessions begin DEFERRED (no write lock). Every other inherited method writes, or may, and begins
# IMMEDIATE.
_ORM_READS = (
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "get_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_best_trial",
    "_get_best_trial_id",
    "_get_stale_trial_ids",
)


def _lock_free(name: str, owner: type = optuna.storages.RDBStorage) -> Callable[..., Any]:
    inherited = getattr(owner, name)

    @functools.wraps(inherited)
    def read(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = _READ_ONLY.set(True)
        try:
            return inherited(self, *args, **kwargs)
        finally:
            _READ_ONLY.reset(token)

    return read


if UNSUPPORTED is None:

    class _LockFreeVersionManager(_rdb_storage._VersionManager):
        """Optuna's schema-version manager whose read-only checks begin DEFERRED on SQLite, and whose
        compatibility check holds one connection at a time."""

        def _check_one_at_a_time(self) -> None:
            # Optuna's check holds its session (a connection in a transaction) while get_current_version
            # opens a second one. Behind PgBouncer, as many workers starting at once as its pool has
            # server connections can each hold one and wait for a second: none gets it (query_wait_timeout
            # after 120 s; seen with 256 workers on a pool of 20). The same checks, one after the other.
            with _rdb_storage._create_scoped_session(self.scoped_session) as session:
                version_info = models.VersionInfoModel.find(session)
            if version_info is None:  # written with the schema: a database someone emptied by hand
                raise RuntimeError("the database has Optuna's tables but no version_info row")
            if self.get_current_version() != self.get_head_version():
                super().check_table_schema_compatibility()  # the mismatch, in Optuna's own words

    _LockFreeVersionManager.check_table_schema_compatibility = _lock_free(  # type: ignore[method-assign]
        "_check_one_at_a_time", _LockFreeVersionManager
    )
    _LockFreeVersionManager.get_current_version = _lock_free(  # type: ignore[method-assign]
        "get_current_version", _rdb_storage._VersionManager
    )

for _name in _ORM_READS:
    if _name not in vars(SweepRDBStorage) and hasattr(optuna.storages.RDBStorage, _name):  # never wrap ours
        setattr(SweepRDBStorage, _name, _lock_free(_name))


# The storage's calls, each waited out as a whole while the database is away (Patience): a read or a
# guarded write is idempotent, and a transaction is retried only when it failed before its commit
# (_run). record_heartbeat is one: a beat that waits does not add a line, and the outage is timed once.
_PATIENT = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "get_all_trials",
    "_get_trials",
    "get_best_trial",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "record_heartbeat",
    "_get_stale_trial_ids",
)


def _patient(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: SweepRDBStorage, *args: Any, **kwargs: Any) -> Any:
        patience = getattr(self, "patience", None)
        if patience is None or self._pinned() is not None:
            # Inside a lock's transaction the call fails at once: the transaction is lost with its
            # connection, so the lock's holder redoes the whole block (sweep.storage.patiently).
            return method(self, *args, **kwargs)
        return patience.call(lambda: method(self, *args, **kwargs))

    return call


for _name in _PATIENT:
    setattr(SweepRDBStorage, _name, _patient(getattr(SweepRDBStorage, _name)))
