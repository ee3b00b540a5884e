"""One error family: every exception sweep defines is a UserError (one line, exit 2) or one of the few
signals that never reach a user as an error."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import sweep
from sweep.errors import UserError

# Exceptions that are not a user's to fix, each with why: they are caught inside sweep.
SIGNALS = {
    "sweep.errors.Unavailable": "the database stayed away: exit 69 for a supervisor's restart, not 2",
    "sweep.outage.DatabaseUnavailable": "Optuna's storage error for an outage (an Unavailable)",
    "sweep.objective.StopRequested": "SIGTERM/pause: the trial is handed back after its epoch",
    "sweep.train.Diverged": "a NaN/inf loss: the trial is pruned (Reason.DIVERGED)",
    "sweep.tpe._Fallback": "sweep's TPE steps aside for Optuna's own",
    "sweep.tracking.TrackerDown": "a tracker that cannot start is switched off for the worker; trials go on",
}


def _exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module in pkgutil.walk_packages(sweep.__path__, "sweep."):
        if module.name.endswith("__main__"):
            continue  # runs the CLI
        mod = importlib.import_module(module.name)
        for name, cls in inspect.getmembers(mod, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == mod.__name__:
                found[f"{cls.__module__}.{name}"] = cls
    return found


def test_every_error_a_user_can_fix_is_a_user_error() -> None:
    found = _exceptions()
    assert set(SIGNALS) <= set(found), "a signal listed here no longer exists: update SIGNALS"
    strays = sorted(name for name, cls in found.items() if not issubclass(cls, UserError) and name not in SIGNALS)
    assert strays == [], f"subclass UserError (the CLI's one line and exit 2) or list as a signal: {strays}"
    # The storage's errors, the artifact location's among them, are one type a caller can catch.
    from sweep.objectstore import ArtifactLocationError
    from sweep.storage import StorageError

    assert issubclass(ArtifactLocationError, StorageError) and issubclass(StorageError, UserError)
