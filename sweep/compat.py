"""The Optuna releases sweep's overrides of Optuna internals were checked against.

sweep.rdb (the lean storage) and sweep.tpe (the incremental TPE) read and override private parts of
Optuna that a new minor release may change without any API saying so. Both ask here first: on a
release outside ``TESTED_OPTUNA`` they step aside (Optuna's own RDBStorage, Optuna's own TPE), slower
but correct, and say so once. pyproject.toml admits any Optuna below 6 for that reason; the build
machine's constraints.txt pins the tested one.
"""

from __future__ import annotations

import optuna

# [low, high): the minor releases the overrides were checked against (Optuna's storage suite and
# tests/test_tpe.py's trial-by-trial comparison).
TESTED_OPTUNA = ((5, 0), (5, 1))


def untested_optuna(version: str | None = None) -> str | None:
    """Why this Optuna is outside the tested releases, in one line (None: it is one of them)."""
    version = optuna.__version__ if version is None else version
    try:
        release = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        return f"cannot read Optuna's version {version!r}"
    if not TESTED_OPTUNA[0] <= release < TESTED_OPTUNA[1]:
        low, high = (".".join(map(str, v)) for v in TESTED_OPTUNA)
        return f"it was tested with Optuna >={low},<{high}, not {version}"
    return None
