"""The errors a user can fix: ``UserError`` and, beside it, the spec's ``SpecError`` and the storage's ``StorageError``.

Every error a user can fix (a spec, an argument, an environment variable, a storage URL, data or
weights a machine lacks, an export folder) is a ``UserError``: its message is the one line the CLI
prints, and the CLI exits with code 2. The specific types (SpecError and StorageError here; ServiceError,
DataError, WeightsError, ExportError in their modules) subclass it, like Optuna's
``OptunaError`` tree, so the CLI catches one type. A leaf module: the spec, the search module, the
storage and the training code all import it without importing each other.
"""

from __future__ import annotations

import json
import os
from typing import Any


class UserError(Exception):
    """An error a user can fix; its message is the one line the CLI prints (exit code 2)."""


EX_UNAVAILABLE = 69  # sysexits.h: a service this program needs is unavailable; try again later


class Unavailable(Exception):
    """A service a command needs (the database) stayed unreachable; its message is the one line the CLI
    prints, and it exits with EX_UNAVAILABLE for its supervisor to start it again later."""


class StorageError(UserError, RuntimeError):
    """A storage problem (the database, the artifact location), phrased for the user on one line
    (password already masked)."""


class SpecError(UserError, ValueError):
    """A spec problem, phrased for the user on one line."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field} = {_show(value)}: {allowed}")

    def terse(self) -> str:
        """``field=value: allowed``, how the training code's own errors have always read."""
        return f"{self.field}={self.value!r}: {self.allowed}"


class EnvError(SpecError):
    """An environment variable whose value cannot be used (``NAME = 'value': what is allowed``)."""


def env_int(name: str, default: int, *, minimum: int = 1, unit: str = "seconds") -> int:
    """The whole number in environment variable ``name`` (``default`` when unset or empty).

    Read where the value is used, not at import: a bad value then fails only the command that needs
    it, with one line (EnvError) instead of a traceback in every command.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise EnvError(name, os.environ[name], f"a whole number of {unit}, at least {minimum} (default {default})")
    return value


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)
