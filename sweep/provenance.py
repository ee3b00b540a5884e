"""Where a result came from: the library versions and git commit of the code that produced it."""

from __future__ import annotations

import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).parent


def git_commit(where: Path = PACKAGE_DIR) -> str | None:
    """The commit checked out at ``where``; None outside a git checkout (an installed package)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def environment() -> dict[str, str | None]:
    """Library versions and the git commit of this worker, recorded on every trial it runs."""
    import optuna
    import torch  # a worker has it loaded already; the version string names the CUDA build too
    import torchvision

    import sweep

    return {
        "sweep": sweep.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "optuna": optuna.__version__,
        "git_commit": git_commit(),
    }
