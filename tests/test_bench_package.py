"""The bench as a package: the scripts it starts ship inside it, found without the source tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import sweep_bench as bench
from sweep_bench import script

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["pg-test-cluster", "pgbouncer-test"])
def test_the_scripts_are_package_data_found_through_importlib_resources(name: str) -> None:
    path = script(name)
    assert path.is_file() and os.access(path, os.X_OK), path
    assert path.read_text().startswith("#!/usr/bin/env bash")
    assert path.parent == Path(bench.__file__).parent / "scripts"  # the package's copy, not the repo's scripts/


def test_pyproject_ships_every_bench_script() -> None:
    """package-data names each one: a wheel (and the image) carries exactly these."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {Path(p).name for p in data[bench.__name__]}
    assert shipped == {p.name for p in (Path(bench.__file__).parent / "scripts").iterdir()}


def test_an_unknown_script_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match="nope: not shipped"):
        script("nope")


@pytest.mark.slow
@pytest.mark.postgres
def test_bench_storage_without_pg_url_starts_the_packaged_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sweep bench storage`` with no ``--pg-url``: the throwaway cluster comes from the package's script."""
    from conftest import _missing, postgres_installed
    from typer.testing import CliRunner

    from sweep.cli import app

    if not postgres_installed():
        _missing("PostgreSQL is not installed")  # skipped locally, a failure in CI
    monkeypatch.delenv("SWEEP_BENCH_PG_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # nowhere near the repository's scripts/
    out = tmp_path / "b.json"
    result = CliRunner().invoke(
        app, ["bench", "storage", "--trials", "10", "--big", "100", "--backends", "postgresql", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["postgresql"]["ms_per_trial"] > 0 and "memory" not in figures


@pytest.mark.parametrize("name", ["pg-test-cluster", "pgbouncer-test"])
def test_the_repositorys_scripts_forward_to_the_packaged_copies(name: str) -> None:
    """scripts/NAME stays for the tests, the Makefile and users; it runs the package's copy."""
    proc = subprocess.run([str(ROOT / "scripts" / name)], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr
    assert f"/sweep_bench/scripts/{name}" in proc.stderr  # usage names $0: the packaged script ran


def test_the_worker_never_imports_the_bench() -> None:
    """sweep_bench lives beside sweep: the package, the service and the worker load none of it; the CLI
    mounts the benches' own sub-app (sweep_bench.cli) and nothing else of it."""
    code = (
        "import sys, sweep, sweep.service, sweep.supervisor; "
        "print(sorted(m for m in sys.modules if m.startswith(('sweep_bench', 'sweep.bench'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
    code = "import sys, sweep.cli; print(sorted(m for m in sys.modules if m.startswith('sweep_bench')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "['sweep_bench', 'sweep_bench.cli']"


def test_sweep_bench_without_the_bench_installed_says_so() -> None:
    """The worker image ships sweep alone: ``sweep bench`` there is one line on stderr, no traceback."""
    code = (
        "import importlib.util as u, sys\n"
        "real = u.find_spec\n"
        "u.find_spec = lambda name, *a: None if name == 'sweep_bench' else real(name, *a)\n"
        "from sweep.cli import app\n"
        "sys.argv = ['sweep', 'bench', 'report', '--n-trials', '10']\n"
        "app()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: the benchmarks (package sweep_bench) are not installed here, e.g. in the worker image; run "
        "`sweep bench` from a checkout: pip install -e ."
    ]


def test_the_docker_image_leaves_the_bench_out() -> None:
    """The worker image copies sweep/ alone (pyproject then installs no sweep_bench)."""
    copied = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("COPY")]
    assert "sweep/" in copied and not any(src.startswith(("sweep_bench", ".")) for src in copied)
