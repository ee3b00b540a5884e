"""The one error type a user can fix by editing a spec, an argument or an environment variable.

A leaf module, so that the spec (which defines the rules) and the search module (which asks Optuna
whether sampler and pruner arguments fit) both raise it without importing each other.
"""

from __future__ import annotations

import json
import os
from typing import Any


class SpecError(ValueError):
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
