"""Benchmarks behind ``sweep bench …``: each measures its baseline in the same run.

A package beside ``sweep``, not inside it: ``import sweep`` and the worker never load it, and the
worker image leaves it out. It drives the worker through ``sweep``'s public names only.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_json(result: dict[str, Any], json_path: str | Path | None) -> None:
    """Write a benchmark's figures as JSON (creating the folder); nothing when no path is given."""
    if json_path is None:
        return
    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def write_png(fig: Any, html_path: Path, *, width: int = 1100, height: int = 650) -> Path | None:
    """A PNG of a plotly figure beside its HTML: kaleido when installed, else a headless Chromium
    screenshot of the HTML (Debian's ``chromium``); None when neither is available or it fails."""
    import os
    import shutil
    import subprocess
    import tempfile

    png = html_path.with_suffix(".png")
    try:
        import kaleido  # noqa: F401

        fig.write_image(str(png), width=width, height=height)
        return png
    except Exception:  # noqa: BLE001 - kaleido missing, or without a browser of its own: try Chromium
        pass
    browser = os.environ.get("SWEEP_CHROMIUM") or shutil.which("chromium") or shutil.which("google-chrome")
    if not browser:
        return None
    with tempfile.TemporaryDirectory(prefix="sweep-png-") as profile:
        done = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--hide-scrollbars",
                f"--window-size={width},{height}",
                "--virtual-time-budget=10000",
                f"--screenshot={png}",
                html_path.resolve().as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
    return png if done.returncode == 0 and png.exists() and png.stat().st_size > 0 else None


def save_figure(fig: Any, html_path: Path) -> list[str]:
    """Write a plotly figure as self-contained HTML, and as PNG beside it when possible; the paths written."""
    html_path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(html_path), include_plotlyjs=True)
    png = write_png(fig, html_path)
    return [str(html_path)] + ([str(png)] if png is not None else [])


def script(name: str) -> Path:
    """A helper script shipped in this package (``pg-test-cluster``, ``pgbouncer-test``), as a file to run.

    Found through importlib.resources, so that an installed package (the wheel, the image) has it too;
    ``scripts/`` in the repository only forwards to these copies.
    """
    path = importlib.resources.files(__name__).joinpath("scripts", name)
    if not isinstance(path, Path) or not path.is_file():  # e.g. a zipped install: nothing a shell can run
        raise FileNotFoundError(f"{name}: not shipped as a file with {__name__} ({path})")
    return path


@contextlib.contextmanager
def started(script: Path, args: list[str], env: dict[str, str] | None = None) -> Iterator[str]:
    """One of the package's ``start|stop DIR`` scripts (``script``: pg-test-cluster, pgbouncer-test) in a fresh
    folder: yields the URL it prints last, and stops it (removing the folder) afterwards."""
    where = tempfile.mkdtemp(prefix="sweep-bench-")
    run = subprocess.run([str(script), "start", where, *args], capture_output=True, text=True, env=env)
    try:
        if run.returncode != 0:
            raise RuntimeError(f"{script.name} start failed: {run.stderr.strip()[-500:]}")
        yield run.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(script), "stop", where], capture_output=True, text=True)
