"""Session set-up of Optuna's conformance tests: one PostgreSQL database for all of them (emptied per
test by ``supplier.StorageSupplier``), and the ``postgres`` mark on every test that runs on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from . import supplier


def _modes(item: pytest.Item) -> list[str]:
    callspec = getattr(item, "callspec", None)
    params = callspec.params.values() if callspec is not None else ()
    return [p for p in params if isinstance(p, str) and p in supplier.STORAGE_MODES]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(supplier.is_postgres(m) for m in _modes(item)):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def conformance_pg_url(pg_url: str) -> Iterator[str]:
    """A database of its own on the session's cluster (tests/conftest.py), dropped at the end."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"sweep_conformance_{uuid.uuid4().hex[:8]}"
    libpq = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def _postgres_for_postgres_modes(request: pytest.FixtureRequest) -> None:
    """A test parametrized with a PostgreSQL mode gets the cluster (or is skipped like every
    PostgreSQL test when there is none); the supplier reads the URL from the module."""
    if any(supplier.is_postgres(m) for m in _modes(request.node)):
        supplier.PG_URL = request.getfixturevalue("conformance_pg_url")
