"""Shared fixtures: storage URLs for both backends, a throwaway PostgreSQL cluster, and Chromium.

``storage_url`` runs a test once on SQLite and once on PostgreSQL, each time on an empty database.
``pg_url`` is the PostgreSQL cluster itself: SWEEP_TEST_PG_URL when set (its user needs CREATEDB),
else one started by ``scripts/pg-test-cluster`` for this session. Without PostgreSQL installed the
PostgreSQL tests are skipped locally, but fail in CI (env CI set): CI must test both backends.
Deselect them with ``-m "not postgres"``.

A test marked ``pgbouncer`` runs a third time, through a real PgBouncer in transaction pooling mode
(``scripts/pgbouncer-test``, Debian's ``pgbouncer``) in front of that cluster: the configuration
storage/README.md recommends for many workers.

``s3_endpoint`` is a real S3-compatible server on 127.0.0.1 for the session (moto's standalone server,
``moto[server]`` from the test extra); ``s3_bucket`` points the AWS environment at it and makes a fresh
bucket. Without moto those tests are skipped locally and fail in CI, like the PostgreSQL ones.
``slurm_conf`` is a throwaway single-node Slurm (``scripts/slurm-test-cluster``), the same way.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PG_CLUSTER = ROOT / "scripts" / "pg-test-cluster"
PGBOUNCER = ROOT / "scripts" / "pgbouncer-test"
SLURM_CLUSTER = ROOT / "scripts" / "slurm-test-cluster"
INSTALL_HINT = "apt-get install -y postgresql"
BACKENDS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgres),
    pytest.param("pgbouncer", marks=pytest.mark.postgres),  # kept for tests marked pgbouncer only
]
# Test clusters trade durability for speed (a database per test is then ~40 ms, not ~600 ms).
FAST_PG_OPTS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def postgres_installed() -> bool:
    """Whether the PostgreSQL server binaries scripts/pg-test-cluster needs are on this machine."""
    if glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        return True
    return shutil.which("initdb") is not None and shutil.which("pg_ctl") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that needs the cluster carries the ``postgres`` mark, however it asks for it; only
    tests marked ``pgbouncer`` keep their PgBouncer variant of ``storage_url``."""
    kept, dropped = [], []
    for item in items:
        if "pg_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
        callspec = getattr(item, "callspec", None)
        through_bouncer = callspec is not None and callspec.params.get("storage_url") == "pgbouncer"
        (dropped if through_bouncer and item.get_closest_marker("pgbouncer") is None else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(autouse=True)
def _no_ambient_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's SWEEP_STORAGE (maybe a real PostgreSQL) must never reach a test."""
    monkeypatch.delenv("SWEEP_STORAGE", raising=False)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a PostgreSQL cluster for this session (postgresql+psycopg://user:pw@host:port/db)."""
    external = os.environ.get("SWEEP_TEST_PG_URL")
    if external:
        yield external
        return
    if not postgres_installed():
        _missing(f"PostgreSQL is not installed (run: {INSTALL_HINT}, or set SWEEP_TEST_PG_URL)")
    env = {**os.environ, "PG_TEST_OPTS": os.environ.get("PG_TEST_OPTS", FAST_PG_OPTS)}
    yield from _started(PG_CLUSTER, "sweep-pg-", [], env)


def _missing(reason: str) -> None:
    """Skip locally, fail in CI: CI must run every backend."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run these tests", pytrace=False)
    pytest.skip(reason)


def _started(script: Path, prefix: str, args: list[str], env: dict[str, str] | None = None) -> Iterator[str]:
    """Run ``script start DIR *args``, yield the URL it prints, ``script stop DIR`` afterwards."""
    # Not under pytest's tmp_path: its parents are mode 700, unreachable for the postgres user.
    where = tempfile.mkdtemp(prefix=prefix)
    started = subprocess.run([str(script), "start", where, *args], capture_output=True, text=True, timeout=180, env=env)
    try:
        if started.returncode != 0:
            # Installed but broken is a failure everywhere, never a skip.
            pytest.fail(f"scripts/{script.name} start failed: {started.stderr.strip()[-2000:]}", pytrace=False)
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(script), "stop", where], capture_output=True, text=True, timeout=120)


def _libpq_url(url: str) -> str:
    """A SQLAlchemy URL as a libpq URI psycopg can connect to."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def pg_fresh_url(pg_url: str) -> Iterator[str]:
    """An empty PostgreSQL database of its own for one test (dropped afterwards)."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"sweep_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq_url(pg_url), autocommit=True, connect_timeout=10) as admin:
        try:
            admin.execute(f'CREATE DATABASE "{name}"')
        except psycopg.errors.InsufficientPrivilege:
            pytest.fail("the PostgreSQL test user needs CREATEDB (ALTER ROLE ... CREATEDB)", pytrace=False)
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq_url(pg_url), autocommit=True, connect_timeout=10) as admin:
            # FORCE: worker processes a test killed, or pools still open here, must not keep it alive.
            # An autovacuum worker analysing the fresh tables is not the test user's to terminate
            # (InsufficientPrivilege): it finishes in moments, so the drop is tried again.
            deadline = time.monotonic() + 30
            while True:
                try:
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    break
                except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)


@pytest.fixture(scope="session")
def pgbouncer_url(pg_url: str) -> Iterator[str]:
    """URL of a PgBouncer (transaction pooling) in front of the ``pg_url`` cluster, for this session."""
    if shutil.which("pgbouncer") is None and not Path("/usr/sbin/pgbouncer").exists():
        _missing("PgBouncer is not installed (run: apt-get install -y pgbouncer)")
    yield from _started(PGBOUNCER, "sweep-pgbouncer-", [pg_url])


@pytest.fixture(scope="session")
def slurm_conf() -> Iterator[str]:
    """The slurm.conf of a throwaway single-node Slurm for this session (scripts/slurm-test-cluster:
    Debian's slurmctld, slurmd and munge; slurmd must run as root): export it as SLURM_CONF."""
    if not all(Path(f"/usr/sbin/{d}").exists() for d in ("slurmctld", "slurmd", "munged")) or not shutil.which(
        "sbatch"
    ):
        _missing("Slurm is not installed (run: apt-get install -y slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        _missing("the throwaway Slurm needs root (slurmd starts every job's processes)")
    yield from _started(SLURM_CLUSTER, "sweep-slurm-", [])


@pytest.fixture(params=BACKENDS)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL to an empty sweep database: a SQLite file in tmp_path, or a fresh PostgreSQL database
    (reached directly, or through PgBouncer for tests marked ``pgbouncer``)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sweep.db'}"
    fresh = request.getfixturevalue("pg_fresh_url")
    if request.param == "pgbouncer":
        from sqlalchemy.engine import make_url

        bouncer = make_url(request.getfixturevalue("pgbouncer_url"))
        direct = make_url(fresh).set(host=bouncer.host, port=bouncer.port)
        return direct.update_query_dict(bouncer.query).render_as_string(hide_password=False)
    return fresh


@pytest.fixture
def backend(storage_url: str) -> str:
    """``sqlite`` or ``postgresql``: which backend ``storage_url`` is on."""
    return "sqlite" if storage_url.startswith("sqlite") else "postgresql"  # PgBouncer's too


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures("torch_one_thread")``).

    On a shared CI machine two OpenMP threads that wait for each other's cores run several times
    slower than one; results are the same either way. torch is imported here, not at the top, so
    storage tests never load it.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- S3-compatible object storage

S3_KEYS = {"AWS_ACCESS_KEY_ID": "sweep-test-key", "AWS_SECRET_ACCESS_KEY": "sweep-test-secret-4f1c"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of moto's standalone S3 server on 127.0.0.1, for this session (state in memory)."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        _missing("moto[server] is not installed (pip install 'moto[server]': the test extra)")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto's S3 server did not start: {log.read_text()[-2000:]}", pytrace=False)
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh, empty bucket; the AWS environment (endpoint, keys, region; no config file) points at
    ``s3_endpoint`` for this test and the processes it starts."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    for key, value in S3_KEYS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    # A developer's ~/.aws must not decide where the test's objects go.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    name = f"sweep-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


# --------------------------------------------------------------------------- Chromium

CHROMIUM = Path("/usr/bin/chromium")
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    # Network off: every proxied request goes to a closed port, every host name fails to resolve; only
    # this machine's loopback (never proxied) stays, for servers a test starts (sweep dashboard).
    "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium driven by playwright (no `playwright install`), network off."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # CI installs it: fail loudly rather than skip
        pytest.fail("the browser tests need playwright (pip install playwright; no `playwright install`)")
    with tempfile.TemporaryDirectory(prefix="sweep-chromium-") as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROME_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        yield ctx
        ctx.close()
