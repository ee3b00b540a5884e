"""The one atomic file write: whole file or old file, never a half, and no temporary left behind."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sweep.atomic import torch_save_atomic, write_atomic


def test_writes_the_whole_file_readable_by_all(tmp_path: Path) -> None:
    out = write_atomic(tmp_path / "sub" / "model.pt2", lambda tmp: Path(tmp).write_bytes(b"new"))
    assert out.read_bytes() == b"new" and stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in out.parent.iterdir()] == ["model.pt2"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")
    seen: list[str] = []

    def half(tmp: str) -> None:
        seen.append(tmp)
        Path(tmp).write_text("ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.html"]
    assert seen[0].endswith(".tmp.html")  # the target's extension, for writers that go by it


def test_torch_save_atomic_writes_the_same_bytes_for_the_same_tensors(tmp_path: Path) -> None:
    import torch

    state = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)}
    a = torch_save_atomic(state, tmp_path / "a" / "model.pt")
    b = torch_save_atomic(state, tmp_path / "b" / "other-name.pt")
    assert a.read_bytes() == b.read_bytes()  # the archive is not named after a random temporary path
    loaded = torch.load(a, weights_only=True)
    assert torch.equal(loaded["w"], state["w"]) and int(loaded["n"]) == 3
    assert sorted(p.name for p in a.parent.iterdir()) == ["model.pt"]
