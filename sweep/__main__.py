"""``python -m sweep`` is the ``sweep`` command (the worker supervisor starts children this way)."""

from sweep.cli import app

app(prog_name="sweep")
