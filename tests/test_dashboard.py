"""``sweep dashboard``: the real command serving optuna-dashboard, opened in Chromium, stopped with Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import SWEEP, write_tiny_spec
from typer.testing import CliRunner

from sweep.cli import app
from sweep.service import create_study

runner = CliRunner()


def _study(tmp_path: Path, name: str = "tiny-board") -> str:
    """A tiny study (no trials) in a SQLite file; its URL."""
    write_tiny_spec(tmp_path)
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    create_study("tiny", storage_url=url, studies_dir=tmp_path / "studies", name=name)
    return url


def _dashboard(tmp_path: Path, url: str, *args: str) -> subprocess.Popen[str]:
    """The real ``sweep dashboard ARGS --port 0`` on ``url`` (given as SWEEP_STORAGE), started."""
    env = {**os.environ, "SWEEP_STORAGE": url, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [str(SWEEP), "dashboard", *args, "--port", "0"],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _first_line(proc: subprocess.Popen[str], timeout_s: float = 120.0) -> str:
    """The first line the process prints, polled until ``timeout_s``; '' when it exits first."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sel.select(timeout=0.5):
                return proc.stdout.readline()
            if proc.poll() is not None:
                return ""
    pytest.fail(f"sweep dashboard printed nothing in {timeout_s:.0f} s")


@pytest.mark.browser
def test_dashboard_serves_the_study_in_chromium_until_ctrl_c(browser: Any, tmp_path: Path) -> None:
    url = _study(tmp_path)
    proc = _dashboard(tmp_path, url, "tiny-board")
    try:
        line = _first_line(proc)
        found = re.search(r"http://127\.0\.0\.1:(\d+)/dashboard/studies/1\b", line)
        assert found, (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        assert f"optuna-dashboard on {url} at" in line
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(found.group(0), wait_until="load", timeout=60_000)
        # The study's page, drawn by the dashboard's own scripts from its API on our storage.
        page.get_by_text("tiny-board").first.wait_for(timeout=60_000)
        assert page.evaluate("document.body.innerText").count("tiny-board") >= 1
        page.goto(found.group(0).removesuffix("/studies/1"), wait_until="load", timeout=60_000)
        page.get_by_text("tiny-board").first.wait_for(timeout=60_000)  # the list of studies
        assert not errors
        page.close()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    assert code == 0
    assert proc.stderr is not None and proc.stderr.read() == ""


def test_dashboard_without_the_package_is_one_line_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _study(tmp_path)
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # imported, it fails as if not installed
    result = runner.invoke(app, ["dashboard", "--storage", url])
    assert result.exit_code == 2
    assert result.output.strip() == "error: sweep dashboard needs optuna-dashboard: pip install 'sweep[dashboard]'"


def test_dashboard_refuses_a_busy_port_an_unknown_study_and_a_storage_it_cannot_reach(tmp_path: Path) -> None:
    url = _study(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["dashboard", "--storage", url, "--port", str(port)])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: --host 127.0.0.1 --port {port}: cannot listen there (")
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["dashboard", "nope", "--storage", url])
    assert result.exit_code == 2 and "study 'nope' not found" in result.output
    # A storage it cannot reach: one line, the password masked as everywhere.
    result = runner.invoke(app, ["dashboard", "--storage", "postgresql+psycopg://sweep:s3cret@127.0.0.1:9/db"])
    assert result.exit_code == 2 and "sweep:***@127.0.0.1:9" in result.output and "s3cret" not in result.output


def test_dashboard_json_says_where_it_listens_and_sigterm_stops_it(tmp_path: Path) -> None:
    url = _study(tmp_path)
    proc = _dashboard(tmp_path, url, "--json")
    try:
        doc = json.loads(_first_line(proc))
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0
    assert doc["study"] is None and doc["storage"] == url
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/dashboard", doc["url"])
