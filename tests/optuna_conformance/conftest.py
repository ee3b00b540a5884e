"""Session set-up of Optuna's conformance tests: the PostgreSQL cluster for the supplier's databases
(emptied per test by ``supplier.StorageSupplier``), and the ``postgres`` mark on every test that runs on it."""

from __future__ import annotations

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
    """The session's cluster (tests/conftest.py); the supplier's databases on it are dropped at the end."""
    yield pg_url
    supplier.drop_postgres_databases(pg_url)


@pytest.fixture(autouse=True)
def _postgres_for_postgres_modes(request: pytest.FixtureRequest) -> None:
    """A test parametrized with a PostgreSQL mode gets the cluster (or is skipped like every
    PostgreSQL test when there is none); the supplier reads the URL from the module."""
    if any(supplier.is_postgres(m) for m in _modes(request.node)):
        supplier.PG_URL = request.getfixturevalue("conformance_pg_url")
