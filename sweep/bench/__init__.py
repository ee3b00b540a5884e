"""Benchmarks behind ``sweep bench …``: each measures its baseline in the same run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(result: dict[str, Any], json_path: str | Path | None) -> None:
    """Write a benchmark's figures as JSON (creating the folder); nothing when no path is given."""
    if json_path is None:
        return
    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
