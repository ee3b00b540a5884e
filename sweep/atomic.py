"""Write a file so that a reader sees the old file or the new one, never part of one."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, save: Callable[[str], object], *, durable: bool = True) -> Path:
    """Call ``save(tmp)`` on a temporary path in ``path``'s folder, then rename it over ``path``.

    The rename is atomic on one filesystem: concurrent workers building the same cache entry, a
    report being re-rendered while a browser reloads it, both see a whole file. ``durable`` flushes
    the file to disk before the rename (a power loss then leaves the old file or the whole new one).
    The file gets the mode a plain ``open`` would give it, ``0o666 & ~umask`` (mkstemp makes it 0600):
    under ``umask 077`` a report, an export or a cache entry stays private.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The same extension as the target: writers that pick a format by it (torch.export.save: .pt2).
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=f".tmp{out.suffix}")
    os.close(fd)
    try:
        save(tmp)
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """This process's umask, read without changing it where Linux tells it (/proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere the only way is to set it and put it back
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def torch_save_atomic(obj: Any, path: str | Path, *, durable: bool = True) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`write_atomic`, the same bytes for the same ``obj``.

    Saved through a file object: given a path, torch.save names the archive inside after it, and the
    temporary path is random, so the same weights would hash differently on every save.
    """
    import torch  # here, not at the top: the report writes files atomically without torch

    def save(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    return write_atomic(path, save, durable=durable)
