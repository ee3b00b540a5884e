"""The one error type a user can fix by editing a spec or an argument.

A leaf module, so that the spec (which defines the rules) and the search module (which asks Optuna
whether sampler and pruner arguments fit) both raise it without importing each other.
"""

from __future__ import annotations

import json
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


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)
