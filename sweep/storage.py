"""Storage URL → Optuna storage: SQLite tuned for several local workers, PostgreSQL for many machines.

The database is the only coordinator, so this module also owns the one cross-process primitive the
workers need: ``budget_lock``, which serialises "is there budget left? then ask a trial" so the
study-wide ``n_trials`` is never overshot, however many workers race for the last trial.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import random
import re
import socket
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from sweep import rdb
from sweep.errors import StorageError, env_int
from sweep.outage import CallWatchdog, DatabaseUnavailable, Patience
from sweep.rdb import SweepRDBStorage

if TYPE_CHECKING:  # optuna.artifacts imports boto3 when installed: only commands that store files pay
    from sweep.objectstore import ArtifactStore

_T = TypeVar("_T")
DEFAULT_URL = "sqlite:///storage/sweep.db"
SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")
PGBOUNCER_OPTION = "pgbouncer"  # a storage URL option of sweep's (behind_pgbouncer), not libpq's
_BOOLEAN = {"true": True, "1": True, "false": False, "0": False}
# A dead worker's trial is declared stale after GRACE_PERIOD seconds without a heartbeat.
# Environment overrides (SWEEP_HEARTBEAT_INTERVAL, SWEEP_GRACE_PERIOD, read by open_storage) exist for
# tests and for clusters with slow or flaky networks.
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 30
TCP_USER_TIMEOUT_MS = 10_000
# A lock waited for this long is said, with its holder where the backend can tell, and waited for again.
LOCK_SAY_S = 30.0


# The places a database URL carries a password: its userinfo (``//user:pw@host``) and libpq's query keys
# (``?password=pw``, ``&sslpassword=pw``: the client certificate key's passphrase).
_USERINFO_PASSWORD = re.compile(r"(://[^:/@?#]*:)([^@]*)(@)")
_QUERY_PASSWORD = re.compile(r"([?&](?:ssl)?password=)([^&#\s'\"]*)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Hide every password in a database URL (``postgresql://u:***@host/db?sslpassword=***``)."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1***\3", url))


def mask_text(text: str, url: str) -> str:
    """Remove the passwords of ``url`` from any text (driver errors quote them sometimes)."""
    text = text.replace(url, mask_url(url))
    secrets = [m.group(2) for m in _QUERY_PASSWORD.finditer(url)]
    with contextlib.suppress(ArgumentError, ValueError):
        secrets.append(str(make_url(url).password or ""))
    # Quoted as in the URL and decoded as the driver saw it; longest first, so no part of one is left.
    for secret in sorted({v for s in secrets for v in (s, unquote(s)) if v}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return mask_url(text)


def validate_url(url: str) -> str:
    """Check the URL is one sweep supports; return the SQLAlchemy URL (postgresql → psycopg 3)."""
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - a non-numeric port only fails when read
    except (ArgumentError, ValueError):
        raise StorageError(
            f"storage URL {mask_url(url)!r} is malformed; expected sqlite:///path/to.db or "
            "postgresql+psycopg://user:password@host:5432/db"
        ) from None
    if parsed.drivername not in SCHEMES:
        raise StorageError(
            f"storage URL scheme {parsed.drivername!r} is not supported; use one of {', '.join(SCHEMES)}"
        )
    if parsed.drivername == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise StorageError(
                f"storage URL {url!r} has no database file; a sweep shares a file: sqlite:///storage/sweep.db"
            )
        return url
    if not parsed.host or not parsed.database:
        raise StorageError(f"storage URL {mask_url(url)!r} needs a host and a database name")
    if "@" in parsed.host:
        raise StorageError(
            "storage URL has a raw '@' in its password or host; percent-encode it in the password as %40"
        )
    behind_pgbouncer(url)  # a bad pgbouncer= value is refused here, with the URL
    # Plain postgresql:// means psycopg2 to SQLAlchemy; sweep ships psycopg 3. sweep's own option is
    # not the driver's: libpq would refuse it.
    parsed = parsed.difference_update_query([PGBOUNCER_OPTION])
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def behind_pgbouncer(url: str) -> bool:
    """Whether a PostgreSQL URL says it goes through a pooler that cannot keep prepared statements
    (``?pgbouncer=true``: PgBouncer before 1.21, or with ``max_prepared_statements = 0``, in
    transaction pooling mode), as Prisma's URLs do. Refuses any value but true/false/1/0."""
    value = make_url(url).query.get(PGBOUNCER_OPTION)
    if value is None:
        return False
    if isinstance(value, tuple) or value.lower() not in _BOOLEAN:
        raise StorageError(
            f"storage URL option {PGBOUNCER_OPTION}={value!r} is not allowed; use {PGBOUNCER_OPTION}=true "
            "(a pooler in transaction mode without prepared statements) or false"
        )
    return _BOOLEAN[value.lower()]


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, None for other backends."""
    parsed = make_url(url)
    return Path(parsed.database) if parsed.drivername == "sqlite" and parsed.database else None


class _SQLiteConnect:
    """The engine's connection factory (a class, not a closure, so that a storage pickles)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __eq__(self, other: object) -> bool:
        # Equal for the same file: a pickled storage's engine_kwargs equal the original's, as Optuna's do.
        return isinstance(other, _SQLiteConnect) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __call__(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA busy_timeout = 60000")
        con.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; fsync at checkpoints only
        return con


def _sqlite_engine_kwargs(path: Path) -> dict[str, Any]:
    return {"creator": _SQLiteConnect(path)}


def _prepare_sqlite(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # WAL lets readers (report, status) run beside a writer; the mode is stored in the file.
    con = sqlite3.connect(path, timeout=60)
    try:
        con.execute("PRAGMA journal_mode = WAL")
    finally:
        con.close()


def storage_engine_kwargs(sa_url: str, *, pgbouncer: bool = False) -> dict[str, Any]:
    """The SQLAlchemy engine arguments sweep opens ``sa_url`` (a validated URL) with; a SQLite file is
    created in WAL mode first. ``pgbouncer``: the URL's ``behind_pgbouncer``. Exposed so that Optuna's
    conformance tests build the storage sweep runs."""
    path = sqlite_path(sa_url)
    if path is not None:
        _prepare_sqlite(path)
        return _sqlite_engine_kwargs(path)
    return {
        # No pool_pre_ping (a round trip before every call): sweep.rdb retries a call once on a
        # connection found dead (database restart, connection cut by a proxy), and TCP keepalives
        # notice a vanished server while a trial trains for minutes without a query.
        # The connection budget of a worker process (storage/README.md): one connection at rest,
        # shared by its trial writes, its heartbeat thread and Optuna's ORM calls; a second one only
        # while two of them overlap (a beat during a report, the calls under the budget lock). Never
        # more: a third caller waits for one to come back. Per call, not held: a connection kept by the
        # worker's thread across a trial would make the heartbeat open a second one.
        "pool_size": 1,
        "max_overflow": 1,
        "pool_timeout": 60,
        "pool_recycle": 1800,
        "connect_args": {
            "connect_timeout": 10,
            # psycopg prepares a statement on the server from its 5th run on a connection: every
            # per-trial statement is one of a dozen, and planning each afresh is a measurable share
            # of a trial's storage time (BENCHMARKS.md, "Storage"). Not behind PgBouncer in
            # transaction pooling mode before 1.21:
            # the next statement may run on another server connection, which lacks them.
            **({"prepare_threshold": None} if pgbouncer else {}),
            # Writes commit without waiting for the WAL flush, except a trial's state changes
            # (sweep.rdb), which flush everything before them with them. A PostgreSQL crash (not a
            # worker crash) can lose the last ~0.6 s of writes to running trials, never a result.
            # Bounds on every call, so that none holds the process's storage lock (and with it the
            # heartbeat) for long: a statement runs ≤ 60 s, waits for a row lock ≤ 10 s (a stopped
            # peer's transaction), and a transaction left open by a stopped process (SIGSTOP, a
            # suspended Slurm job) is ended by the server after 60 s, releasing the budget lock it held.
            "options": "-c synchronous_commit=off -c statement_timeout=60s -c lock_timeout=10s "
            "-c idle_in_transaction_session_timeout=60s",
            # A dead network path (a partition, a blackholed server) is noticed in seconds, not after the
            # kernel's ~15 min of retransmissions: data unacknowledged for 10 s (tcp_user_timeout), or a
            # silent connection probed after 5 s, every 2 s, 3 times (11 s) drops the connection, and
            # the call is retried (sweep.outage). Also what notices a server gone while a trial trains.
            "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            # Who holds a lock, as a waiter's line says it (pg_stat_activity).
            "application_name": f"sweep {socket.gethostname()[:40]} pid {os.getpid()}",
        },
    }


def _stock_storage(sa_url: str, heartbeat: dict[str, Any]) -> optuna.storages.RDBStorage:
    """Optuna's own RDBStorage, with Optuna's engine defaults, for an Optuna sweep.rdb was not built on:
    slower, but every call is Optuna's. Said once per process, on one line."""
    global _fallback_said
    if not _fallback_said:
        _fallback_said = True
        _log.warning("sweep: using Optuna's own RDBStorage (slower): sweep.rdb cannot run: %s", rdb.UNSUPPORTED)
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if sqlite_path(sa_url) else {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(sa_url, engine_kwargs=kwargs, **heartbeat)


_log = logging.getLogger("sweep.storage")
_fallback_said = False


def open_storage(
    url: str,
    *,
    heartbeat: bool = False,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = 3,
    wait_s: float = 0.0,
    create: bool = True,
    patience: Patience | None = None,
) -> optuna.storages.RDBStorage:
    """Open (and create when missing) the Optuna RDB storage behind ``url``.

    ``heartbeat`` turns on Optuna's trial heartbeat: a worker that dies stops beating, its trial is
    failed after ``grace_period`` s (default: SWEEP_GRACE_PERIOD, else 30; the interval:
    SWEEP_HEARTBEAT_INTERVAL, else 10) and re-queued (same params) by RetryHeartbeatStaleTrialCallback.
    ``wait_s`` retries an unreachable database (a worker started before its PostgreSQL) that long.
    ``patience`` (a worker's): opening and every later storage call wait out an unreachable database
    for that long instead (sweep.outage), then raise DatabaseUnavailable.
    ``create=False`` refuses to create a missing SQLite file (read-only commands).
    """
    sa_url = validate_url(url)
    path = sqlite_path(sa_url)
    if path is not None and not path.exists() and not create:
        raise StorageError(f"no sweep database at {path}; create a study first: sweep create SPEC")
    engine_kwargs = storage_engine_kwargs(sa_url, pgbouncer=behind_pgbouncer(url))
    hb = _heartbeat_kwargs(heartbeat_interval, grace_period, max_retry) if heartbeat else {}
    connect = functools.partial(_connect, url, sa_url, engine_kwargs, hb)
    if patience is None:
        return _until_reachable(connect, url=url, sa_url=sa_url, wait_s=wait_s)
    patience.mask = functools.partial(mask_text, url=sa_url)
    try:
        storage = patience.call(connect)
    except DatabaseUnavailable:
        raise
    except _UNREACHABLE as exc:  # not an outage: a wrong password, a database that does not exist
        raise StorageError(f"cannot open storage {mask_url(url)}: {_first_line(exc, sa_url)}") from None
    if isinstance(storage, SweepRDBStorage):
        storage.patience = patience
        if path is None:
            CallWatchdog().watch(storage.engine)
    return storage


def patiently(storage: optuna.storages.BaseStorage, fn: Callable[[], _T]) -> _T:
    """``fn()``, a unit of storage calls (a lock's block), redone as a whole while the database is away,
    for as long as the storage's patience (sweep.outage); once when the storage has none."""
    patience = getattr(getattr(storage, "_backend", storage), "patience", None)
    return fn() if patience is None else patience.call(fn)


def _first_line(exc: BaseException, sa_url: str) -> str:
    return mask_text(str(getattr(exc, "orig", exc)).strip().splitlines()[0], sa_url)


def _heartbeat_kwargs(interval: int | None, grace_period: int | None, max_retry: int | None) -> dict[str, Any]:
    """RDBStorage's heartbeat arguments: the interval and grace period (given, else from the
    environment, else the defaults) and the callback that re-queues a dead worker's trial."""
    hb: dict[str, Any] = {
        "heartbeat_interval": interval
        if interval is not None
        else env_int("SWEEP_HEARTBEAT_INTERVAL", HEARTBEAT_INTERVAL),
        "grace_period": grace_period if grace_period is not None else env_int("SWEEP_GRACE_PERIOD", GRACE_PERIOD),
    }
    with warnings.catch_warnings():  # experimental since 2.8, the supported way in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # The retry keeps the curve so far: it resumes from the trial's last epoch checkpoint.
        hb["heartbeat_stale_trial_callback"] = optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=max_retry, inherit_intermediate_values=True
        )
    return hb


def _connect(url: str, sa_url: str, engine_kwargs: dict[str, Any], hb: dict[str, Any]) -> optuna.storages.RDBStorage:
    """One attempt to open the storage (sweep.rdb's, else Optuna's own); a missing driver is a StorageError."""
    try:
        with warnings.catch_warnings(), _schema_lock(sa_url, engine_kwargs):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if rdb.UNSUPPORTED is None:
                return SweepRDBStorage(sa_url, engine_kwargs=engine_kwargs, **hb)
            return _stock_storage(sa_url, hb)
    except ImportError:
        raise StorageError(
            f"no driver for {mask_url(url)}; install PostgreSQL support: pip install 'sweep[postgres]'"
        ) from None


_SCHEMA_LOCK_KEY = int.from_bytes(hashlib.sha256(b"sweep:schema").digest()[:8], "big", signed=True)


@contextlib.contextmanager
def _schema_lock(sa_url: str, engine_kwargs: dict[str, Any]) -> Iterator[None]:
    """Held while a storage is opened on a database that may lack Optuna's schema: processes opening a
    fresh database at once (four `sweep create`, a job array's workers) would each create the tables
    (SQLite: "table studies already exists"; PostgreSQL: a duplicate key in pg_type). One creates them,
    the others wait and find them. SQLite: an flock beside the file; PostgreSQL: a transaction-scoped
    advisory lock on a connection of its own, only while the schema is not complete."""
    path = sqlite_path(sa_url)
    if path is not None:
        with _flocked(_lock_dir(path) / "schema.lock", "the schema lock"):
            yield
        return
    engine = sqlalchemy.create_engine(
        sa_url, poolclass=sqlalchemy.pool.NullPool, connect_args=engine_kwargs.get("connect_args", {})
    )
    try:
        with engine.connect() as conn:
            # alembic_version is stamped last (Optuna's _VersionManager): its row means the schema is whole.
            if conn.exec_driver_sql("SELECT to_regclass('alembic_version') IS NOT NULL").scalar() and (
                conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar()
            ):
                conn.rollback()
                yield
                return
            conn.exec_driver_sql("SET LOCAL lock_timeout = '120s'")  # the first opener may be creating it
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_KEY})")
            try:
                yield
            finally:
                conn.rollback()  # releases the lock
    finally:
        engine.dispose()


# What an unreachable (not yet started, restarting) database raises while connecting.
_UNREACHABLE = (
    optuna.exceptions.StorageInternalError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlite3.Error,
)


def _until_reachable(
    connect: Callable[[], optuna.storages.RDBStorage], *, url: str, sa_url: str, wait_s: float
) -> optuna.storages.RDBStorage:
    """``connect()``, retried while the database is unreachable (backoff 0.5 s doubling to 5 s) for up
    to ``wait_s`` seconds; then a StorageError on one line, the URL's password masked."""
    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        try:
            return connect()
        except _UNREACHABLE as exc:
            if time.monotonic() >= deadline:
                raise StorageError(
                    f"cannot reach storage {mask_url(url)}: {_first_line(exc, sa_url)}"
                    + (f" (retried for {wait_s:.0f} s)" if wait_s else "")
                ) from None
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 5.0)


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    """Names of every study in the storage."""
    return [s.study_name for s in storage.get_all_studies()]


# --------------------------------------------------------------------------- budget lock

_memory_lock = threading.Lock()


def _lock_dir(path: Path) -> Path:
    """The folder of a SQLite database's lock files (``sweep.db.locks/`` beside ``sweep.db``)."""
    folder = path.with_name(path.name + ".locks")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _lock_key(study_name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"sweep:{study_name}".encode()).digest()[:8], "big", signed=True)


def _say(storage: Any) -> Callable[[str], None]:
    patience = getattr(storage, "patience", None)
    return patience.say if patience is not None else _log.warning


@contextlib.contextmanager
def _flocked(lock_path: Path, what: str, say: Callable[[str], None] = _log.warning) -> Iterator[None]:
    """An exclusive flock on ``lock_path``; a wait past LOCK_SAY_S is said (with the holder the file
    names: each holder writes its pid and host into it) and waited for again, every LOCK_SAY_S."""
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _wait_flock(fh, what, say)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
            fh.flush()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _LockWait:
    """A wait for a lock: said with its holder every LOCK_SAY_S (a stopped holder would otherwise stall
    every worker without a word), and waited for again."""

    def __init__(self, what: str, say: Callable[[str], None]) -> None:
        self.what = what
        self.say = say
        self.started = time.monotonic()
        self.next_say = self.started + LOCK_SAY_S

    def still(self, holder: Callable[[], str]) -> None:
        """The lock was not free again: say so, with ``holder()``, once LOCK_SAY_S more have passed."""
        now = time.monotonic()
        if now >= self.next_say:
            waited = now - self.started
            self.say(f"{self.what} is held by {holder()} (waited {waited:.0f} s; a stopped process?); still waiting")
            self.next_say = now + LOCK_SAY_S


def _wait_flock(fh: Any, what: str, say: Callable[[str], None]) -> None:
    wait = _LockWait(what, say)
    delay = 0.002
    while True:
        time.sleep(delay * (0.5 + random.random()))  # jitter: waiters do not retry in step
        delay = min(delay * 1.5, 0.05)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            wait.still(lambda: _flock_holder(fh))


def _flock_holder(fh: Any) -> str:
    fh.seek(0)
    return fh.read().strip() or "another process"


@contextlib.contextmanager
def budget_lock(storage: optuna.storages.BaseStorage, study_name: str) -> Iterator[None]:
    """Hold a lock shared by every worker of ``study_name``, on every machine that can see the lock.

    SQLite: an flock on a file of the study's own (``sweep.db.locks/``; SQLite only spans one machine
    anyway). PostgreSQL: a transaction-scoped advisory lock (``pg_try_advisory_xact_lock``, retried with a
    jittered backoff up to 0.1 s); on SweepRDBStorage the block's storage calls run in the lock's
    transaction, on the same connection. A wait past LOCK_SAY_S is said with the holder, every LOCK_SAY_S.
    """
    backend = getattr(storage, "_backend", storage)  # a study's storage: Optuna's cache layer around it
    url = getattr(backend, "url", None)
    path = sqlite_path(url) if url else None
    what = f"the lock of study {study_name!r}"
    if path is not None:
        name = hashlib.sha256(study_name.encode()).hexdigest()[:16]
        with _flocked(_lock_dir(path) / f"{name}.lock", what, _say(backend)):
            yield
        return
    engine = getattr(backend, "engine", None)
    if engine is not None and engine.dialect.name == "postgresql":
        key = _lock_key(study_name)
        # A transaction-scoped lock: released by the commit (or by the server when the connection
        # dies, or after idle_in_transaction_session_timeout when its holder is stopped), and it holds
        # behind PgBouncer in transaction pooling mode, where a session lock could be taken on one
        # server connection and released on another. sweep.rdb runs every call of the block inside
        # this transaction (pinned), so the lock costs no connection of its own and the decision
        # commits with the trial it hands out.
        # Tried, not waited for: a waiter would hold a connection (behind PgBouncer, a server
        # connection of its small pool) for as long as it waits, and a few hundred waiters would
        # starve every other statement, heartbeats included. A failed try costs one short round trip.
        delay = 0.002
        wait = _LockWait(what, _say(backend))
        # SweepRDBStorage's pool_connection: the worker's held connection, not a second one.
        with getattr(backend, "pool_connection", engine.connect)() as conn:
            while True:
                with conn.begin():
                    if conn.exec_driver_sql(f"SELECT pg_try_advisory_xact_lock({key})").scalar():
                        pin = getattr(backend, "pinned", None)
                        with pin(conn) if pin is not None else contextlib.nullcontext():
                            yield
                        return
                    wait.still(lambda: _pg_holder(conn, key))
                time.sleep(delay * (0.5 + random.random()))  # jitter: waiters do not retry in step
                delay = min(delay * 1.5, 0.1)
    with _memory_lock:
        yield


def _pg_holder(conn: sqlalchemy.Connection, key: int) -> str:
    """Who holds advisory lock ``key``: its session's application name (sweep's: host and pid), address,
    state and transaction age, from pg_locks and pg_stat_activity."""
    row = conn.execute(
        sqlalchemy.text(
            "SELECT a.application_name, a.client_addr, a.state, "
            "extract(epoch FROM now() - a.xact_start)::int AS age "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :hi AND l.objid = :lo AND l.objsubid = 1"
        ),
        {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF},
    ).first()
    if row is None:
        return "a session this role cannot see"
    where = row.client_addr or "a local socket"
    return f"'{row.application_name or '?'}' from {where} ({row.state}, in its transaction for {row.age} s)"


def budget_counts(storage: optuna.storages.BaseStorage, study_id: int, retry_key: str) -> tuple[int, int, int]:
    """(trials that count against the budget, WAITING, RUNNING) of a study, as one aggregate query.

    A trial counts unless it carries ``retry_key`` (a re-run of a dead worker's trial). On an RDB
    storage this is one indexed query instead of loading every trial under the budget lock, so
    the time the lock is held does not grow with the study.
    """
    from optuna.trial import TrialState

    # A study's storage is Optuna's cache layer around the RDB storage: the engine is the backend's.
    backend = getattr(storage, "_backend", storage)
    engine = getattr(backend, "autocommit_engine", None) or getattr(backend, "engine", None)
    if engine is None:
        trials = storage.get_all_trials(study_id, deepcopy=False)
        spent = sum(1 for t in trials if retry_key not in t.system_attrs)
        waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
        running = sum(1 for t in trials if t.state == TrialState.RUNNING)
        return spent, waiting, running
    with read_connection(backend, engine) as conn:
        spent, waiting, running = conn.execute(_budget_query(retry_key), {"study_id": study_id}).one()
    return int(spent), int(waiting), int(running)


@contextlib.contextmanager
def read_connection(backend: Any, engine: sqlalchemy.Engine) -> Iterator[sqlalchemy.Connection]:
    """A connection for one read statement: the lock transaction's when this thread holds one
    (budget_lock), else one from the pool, in autocommit (PostgreSQL) or a deferred, lock-free
    transaction (SQLite)."""
    own = getattr(backend, "read_only", None)
    if own is not None:  # SweepRDBStorage: the lock's transaction, or the worker's held connection
        with own() as conn:
            yield conn
        return
    options = {"sweep_read_only": True} if engine.dialect.name == "sqlite" else {"isolation_level": "AUTOCOMMIT"}
    with engine.connect().execution_options(**options) as conn:
        yield conn


def pop_waiting_trial(study: optuna.Study) -> int | None:
    """``Study._pop_waiting_trial_id`` (the oldest WAITING trial, set RUNNING; None if there is none)
    without reading the study: Optuna's reads every trial of it into its cache first, which the
    budget gate would do under its lock (6 s at 100,000 trials, for each worker's first trial)."""
    from optuna.trial import TrialState

    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    engine = getattr(backend, "engine", None)
    if getattr(backend, "read_only", None) is None or engine is None:
        return study._pop_waiting_trial_id()
    with read_connection(backend, engine) as conn:
        waiting = conn.execute(_waiting_query(), {"study_id": study._study_id}).scalars().all()
    for trial_id in waiting:
        try:  # as Optuna's: a peer may have taken or finished it since
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return int(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


@functools.lru_cache(maxsize=1)
def _waiting_query() -> Any:
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    trials_t = models.TrialModel.__table__
    return (
        sqlalchemy.select(trials_t.c.trial_id)
        .where(trials_t.c.study_id == sqlalchemy.bindparam("study_id"), trials_t.c.state == TrialState.WAITING)
        .order_by(trials_t.c.trial_id)
    )


@functools.lru_cache(maxsize=8)
def _budget_query(retry_key: str) -> Any:
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    trials_t = models.TrialModel.__table__
    attrs_t = models.TrialSystemAttributeModel.__table__
    study_id = sqlalchemy.bindparam("study_id")
    # Retries counted once by a join, not by a NOT EXISTS probe per trial (4x faster at 5,000 trials).
    retries = (
        sqlalchemy.select(sqlalchemy.func.count())
        .select_from(attrs_t.join(trials_t, attrs_t.c.trial_id == trials_t.c.trial_id))
        .where(trials_t.c.study_id == study_id, attrs_t.c.key == retry_key)
        .scalar_subquery()
    )
    # Every trial counts but retries: the study's trial count is its next number (numbers are dense),
    # read off sweep's (study_id, number) index; the retries are found through its index on the
    # attribute's key, the WAITING and RUNNING trials through (study_id, state). Nothing here scans
    # the study's finished trials, so the budget lock's time does not grow with the study.
    total = (
        sqlalchemy.select(sqlalchemy.func.coalesce(sqlalchemy.func.max(trials_t.c.number) + 1, 0))
        .where(trials_t.c.study_id == study_id)
        .scalar_subquery()
    )
    active = (TrialState.WAITING, TrialState.RUNNING)
    return sqlalchemy.select(
        total - retries,
        sqlalchemy.func.count().filter(trials_t.c.state == TrialState.WAITING),
        sqlalchemy.func.count().filter(trials_t.c.state == TrialState.RUNNING),
    ).where(trials_t.c.study_id == study_id, trials_t.c.state.in_(active))


def retry_on_locked(fn: Callable[[], Any], attempts: int = 5) -> Any:
    """Run ``fn`` again when SQLite still reports a lock (belt and braces around BEGIN IMMEDIATE)."""
    for i in range(attempts):
        try:
            return fn()
        except sqlalchemy.exc.OperationalError as exc:
            if "locked" not in str(exc) or i == attempts - 1:
                raise
            time.sleep(0.2 * (i + 1))
    return None


def artifact_store(storage_url: str, location: str | None = None) -> ArtifactStore:
    """Where trial checkpoints and kept models go: ``location`` (a folder or ``s3://bucket/prefix``,
    shared by every worker), else SWEEP_ARTIFACTS, else ``artifacts/`` beside the SQLite file
    (``storage/artifacts`` otherwise). A location that cannot be used is an ArtifactLocationError, a
    StorageError (one line).

    Workers on several machines need a location they all see: object storage, or an NFS path.
    """
    from sweep.objectstore import open_store

    where = location or os.environ.get("SWEEP_ARTIFACTS")
    if not where:
        path = sqlite_path(storage_url)
        where = str((path.parent if path is not None else Path("storage")) / "artifacts")
    return open_store(where)
