"""What the commands share: the consoles, styled labels, the storage option and the one-line error exit.

Shared by ``sweep.cli`` and the benches' CLI (``sweep_bench.cli``), so both read storage and print
errors alike. Markup
is off: study names, params, paths and error messages are whatever users typed or files held ("[/]"
would end in a MarkupError, "[red]x" would print as "x"); styles go through ``Text``, never markup.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

# sweep.storage's DEFAULT_URL (tests/test_cli.py holds them equal), not imported: `python -m sweep bench
# train` must start where only PyTorch is installed (scripts/gpu-bench on the GPU machine: no Optuna, no
# SQLAlchemy), and sweep.storage imports both.
DEFAULT_URL = "sqlite:///storage/sweep.db"
StorageOpt = Annotated[
    str,
    typer.Option(
        "--storage",
        envvar="SWEEP_STORAGE",
        help="Database URL shared by all workers: sqlite:///path.db or postgresql+psycopg://user:pw@host/db.",
        show_default=True,
    ),
]

console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def styled(label: str, style: str, rest: str) -> Text:
    """``label`` in ``style``, then ``rest`` as it is."""
    return Text.assemble((label, style), rest)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on stderr; return the Exit to raise (exit code 2: the user can fix it)."""
    err_console.print(styled("error:", "bold red", f" {message}"), highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one line on stderr and exit code 2."""
    from sweep.errors import UserError

    try:
        yield
    except UserError as exc:
        raise fail(str(exc)) from None
