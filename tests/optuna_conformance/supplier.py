"""``StorageSupplier`` for sweep: Optuna's test storages, replaced by ``SweepRDBStorage`` as sweep opens it.

Optuna's own suite gets its storages from ``optuna.testing.storages.StorageSupplier`` (which also needs
fakeredis and grpc). The vendored tests here import this module instead: the same context manager and
mode lists, whose modes are ``SweepRDBStorage`` (plain, and inside Optuna's ``_CachedStorage`` as
``optuna.create_study`` wraps it) on SQLite and on PostgreSQL, plus ``stock_*`` modes: Optuna's own
``RDBStorage`` on the same databases, the baseline (``SWEEP_CONFORMANCE_STOCK=1``).

Each use starts from an empty database: on SQLite a fresh file, on PostgreSQL the session's conformance
database with every table emptied (sequences restarted) and every other connection to it ended, which
costs a few milliseconds instead of creating a database or a cluster.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage
from sqlalchemy.engine import make_url

from sweep.rdb import SweepRDBStorage
from sweep.storage import open_storage, storage_engine_kwargs, validate_url

# Optuna's own names for its SQLite modes ("sqlite", "cached_sqlite"), so that its tests that name
# them, or skip on them, do the same here; they are SweepRDBStorage.
SQLITE_MODES = ["sqlite", "cached_sqlite"]
POSTGRES_MODES = ["postgresql", "cached_postgresql"]
STOCK_MODES = ["stock_sqlite", "cached_stock_sqlite", "stock_postgresql", "cached_stock_postgresql"]
# The baseline modes run on request only: they test Optuna, not sweep.
STORAGE_MODES: list[str] = SQLITE_MODES + POSTGRES_MODES
if os.environ.get("SWEEP_CONFORMANCE_STOCK"):
    STORAGE_MODES += STOCK_MODES
UNCACHED_MODES = [m for m in STORAGE_MODES if not m.startswith("cached")]

# Set for the session by conftest.py: the cluster of tests/conftest.py's ``pg_url``. Each storage
# supplied at the same time (Optuna's copy_study tests use two) gets a database of its own, created on
# first use and then reused by later tests (emptied); conftest.py drops them at the end.
PG_URL: str | None = None
PG_DATABASES: list[str] = []
_pg_in_use: set[str] = set()
_SCRATCH = tempfile.TemporaryDirectory(prefix="sweep-conformance-")  # removed at exit


def is_postgres(mode: str) -> bool:
    return mode.endswith("postgresql")


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _create_postgres_database(cluster_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(_libpq(cluster_url), autocommit=True, connect_timeout=10) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_postgres_databases(cluster_url: str) -> None:
    import psycopg

    with psycopg.connect(_libpq(cluster_url), autocommit=True, connect_timeout=10) as admin:
        for name in PG_DATABASES:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    PG_DATABASES.clear()


def empty_postgres_database(url: str) -> None:
    """Empty every table of the conformance database (which its first storage created), end every
    other connection to it (storages a test left open), and restart the id sequences."""
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            tables = [
                row[0]
                for row in conn.exec_driver_sql(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                    "AND tablename NOT IN ('alembic_version', 'version_info')"
                )
            ]
            if tables:
                names = ", ".join(f'"{t}"' for t in tables)
                conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        engine.dispose()


def sweep_rdb_storage(url: str, engine_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> SweepRDBStorage:
    """``SweepRDBStorage(url, ...)`` with sweep's engine arguments (caller's ones on top), for Optuna's
    tests that construct ``RDBStorage(url, ...)`` themselves. An in-memory SQLite database becomes a
    temporary file (sweep opens files only), removed when the test process exits."""
    if url == "sqlite:///:memory:":
        url = f"sqlite:///{Path(tempfile.mkdtemp(dir=_SCRATCH.name)) / 'memory.db'}"
    base = storage_engine_kwargs(url) if url.startswith(("sqlite", "postgresql+psycopg")) else {}
    return SweepRDBStorage(url, engine_kwargs={**base, **(engine_kwargs or {})}, **kwargs)


class StorageSupplier(AbstractContextManager[Any]):
    """``with StorageSupplier(mode, **rdb_kwargs) as storage``: as Optuna's, for sweep's modes."""

    def __init__(self, storage_specifier: str, **kwargs: Any) -> None:
        self.storage_specifier = storage_specifier
        self.extra_args = kwargs
        self.tempdir: tempfile.TemporaryDirectory[str] | None = None
        self.rdb: optuna.storages.RDBStorage | None = None
        self.database: str | None = None

    def url(self) -> str:
        if is_postgres(self.storage_specifier):
            if PG_URL is None:
                raise RuntimeError("no PostgreSQL cluster for the conformance tests (conftest.py sets PG_URL)")
            free = [db for db in PG_DATABASES if db not in _pg_in_use]
            if not free:
                free.append(_create_postgres_database(PG_URL, f"sweep_conformance_{os.getpid()}_{len(PG_DATABASES)}"))
                PG_DATABASES.append(free[0])
            self.database = free[0]
            _pg_in_use.add(self.database)
            url = make_url(PG_URL).set(database=self.database).render_as_string(hide_password=False)
            empty_postgres_database(url)
            return url
        self.tempdir = tempfile.TemporaryDirectory(prefix="sweep-conformance-")
        return f"sqlite:///{Path(self.tempdir.name) / 'optuna.db'}"

    def __enter__(self) -> BaseStorage:
        mode = self.storage_specifier
        url = self.url()
        if "stock" in mode:  # Optuna's storage as Optuna's own tests open it
            self.rdb = optuna.storages.RDBStorage(validate_url(url), **self.extra_args)
        elif self.extra_args:
            # open_storage's own arguments (heartbeat on or off, its retry callback) are sweep's
            # choices; Optuna's tests pass RDBStorage's: the same storage class and engine, their kwargs.
            self.rdb = sweep_rdb_storage(validate_url(url), **self.extra_args)
        else:
            self.rdb = open_storage(url)
        return optuna.storages._CachedStorage(self.rdb) if mode.startswith("cached") else self.rdb

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if isinstance(self.rdb, SweepRDBStorage):
            self.rdb.close()
        elif self.rdb is not None:
            self.rdb.engine.dispose()
        if self.tempdir is not None:
            self.tempdir.cleanup()
        _pg_in_use.discard(self.database or "")
