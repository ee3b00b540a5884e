"""How values are shown to people: short numbers, accuracies, durations, HTML-escaped text.

One formatter per kind of value, shared by the report's figures and page and by the CLI's tables.
"""

from __future__ import annotations

import html
import math
from typing import Any


def esc(text: Any) -> str:
    """HTML-escape for page text and for plotly labels (plotly renders entities as text)."""
    return html.escape(str(text), quote=True)


def first_line(exc: BaseException) -> str:
    """An error in one line of at most 200 characters (its repr when it has no message)."""
    return str(exc).splitlines()[0][:200] if str(exc) else repr(exc)


def short(v: Any) -> str:
    """A param or metric value, short."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def acc(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def dur(seconds: float | None) -> str:
    """Seconds as '45.2s', '3m 12s', '2h 05m', '3d 04h'."""
    if seconds is None:
        return ""
    s = float(seconds)
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m {sec:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h {m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h:02d}h"
