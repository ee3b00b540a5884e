"""sweep.artifacts: whole-file-or-nothing writes, ENOSPC recognised, and the sweep of unreferenced files."""

from __future__ import annotations

import errno
import io
import os
import time
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import upload_artifact

from sweep import artifacts, record
from sweep.artifacts import AtomicFileStore, disk_full, referenced, remove_orphans
from sweep.storage import artifact_store, open_storage


def _copy_then_fill_the_disk(src: io.BufferedIOBase, dst: io.BufferedIOBase) -> None:
    dst.write(src.read(1000))  # part of the file is on disk when the disk fills up
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.faults
def test_a_write_that_fills_the_disk_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = AtomicFileStore(tmp_path)
    store.write("whole", io.BytesIO(b"x" * 5000))
    monkeypatch.setattr(artifacts.shutil, "copyfileobj", _copy_then_fill_the_disk)
    with pytest.raises(OSError) as info:
        store.write("cut", io.BytesIO(b"y" * 5000))
    assert disk_full(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whole"]  # no partial file, no temporary one
    assert (tmp_path / "whole").read_bytes() == b"x" * 5000


def test_disk_full_is_found_through_the_causes() -> None:
    def raised_from(inner: BaseException) -> RuntimeError:
        try:
            try:
                raise inner
            except OSError as exc:
                raise RuntimeError("checkpoint failed") from exc
        except RuntimeError as outer:
            return outer

    assert disk_full(raised_from(OSError(errno.EDQUOT, "Disk quota exceeded")))
    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not disk_full(raised_from(OSError(errno.EACCES, "Permission denied")))
    assert not disk_full(RuntimeError("file write failed"))


def _upload(trial: optuna.Trial, store: AtomicFileStore, content: bytes, tmp_path: Path) -> str:
    source = tmp_path / "upload.bin"
    source.write_bytes(content)
    return upload_artifact(artifact_store=store, file_path=str(source), study_or_trial=trial)


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.mark.parametrize("in_memory", [False, True])
def test_only_this_storages_unreferenced_old_files_are_removed(tmp_path: Path, in_memory: bool) -> None:
    storage = optuna.storages.InMemoryStorage() if in_memory else open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    folder = tmp_path / "artifacts"
    folder.mkdir()
    store = AtomicFileStore(folder)
    study = optuna.create_study(storage=storage, study_name="s")
    running, done = study.ask(), study.ask()
    checkpoint = _upload(running, store, b"c", tmp_path)
    running.set_user_attr(record.CHECKPOINT.name, {"artifact_id": checkpoint, "epoch": 1})
    final = _upload(done, store, b"f", tmp_path)
    done.set_user_attr(record.FINAL_MODEL.name, {"artifact_id": final, "path": None})
    old_checkpoint = _upload(done, store, b"o", tmp_path)  # a finished trial's checkpoint: nobody resumes it
    done.set_user_attr(record.CHECKPOINT.name, {"artifact_id": old_checkpoint, "epoch": 1})
    study.tell(done, 0.5)
    crashed = _upload(running, store, b"never recorded", tmp_path)  # killed between upload and record
    young = _upload(running, store, b"just written", tmp_path)  # its record may be on its way
    foreign = "0b1c2d3e-4f50-4617-8899-aabbccddeeff"  # another storage's, in a shared folder
    (folder / foreign).write_bytes(b"theirs")
    temporary = f".{crashed}.abc123.tmp"  # a write cut off by a crash
    (folder / temporary).write_bytes(b"part")
    (folder / "notes.txt").write_bytes(b"a user's file")
    for path in folder.iterdir():
        if path.name != young:
            _age(path, 7200)
    assert referenced(storage) == {checkpoint, final}
    # Finished within the hour: the retry that inherits its checkpoint may not be committed yet.
    assert referenced(storage, recent_s=3600) == {checkpoint, final, old_checkpoint}

    dry = remove_orphans(storage, store, min_age_s=3600, dry_run=True)
    assert sorted(dry.files) == sorted([crashed, temporary])
    assert len(list(folder.iterdir())) == 8  # nothing removed
    orphans = remove_orphans(storage, store, min_age_s=3600)
    assert sorted(orphans.files) == sorted(dry.files) and orphans.bytes == len(b"never recorded" + b"part")
    left = [checkpoint, final, young, old_checkpoint, foreign, "notes.txt"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(left)
    # --older-than 0: the young file and the finished trial's checkpoint are fair game.
    assert sorted(remove_orphans(storage, store, min_age_s=0).files) == sorted([young, old_checkpoint])


def test_clean_artifacts_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from sweep.cli import app

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    store = AtomicFileStore(tmp_path / "artifacts")
    (tmp_path / "artifacts").mkdir()
    study = optuna.create_study(storage=open_storage(url), study_name="s")
    orphan = _upload(study.ask(), store, b"x" * 2_000_000, tmp_path)
    runner = CliRunner()
    args = ["clean-artifacts", "--storage", url, "--artifacts", str(tmp_path / "artifacts")]
    young = runner.invoke(app, args)  # the default: only files older than an hour
    assert young.exit_code == 0 and "removed 0 files" in young.output, young.output
    dry = runner.invoke(app, [*args, "--older-than", "0", "--dry-run"])
    assert dry.exit_code == 0 and orphan in dry.output and "would remove 1 files (2.0 MB)" in dry.output
    assert (tmp_path / "artifacts" / orphan).exists()
    done = runner.invoke(app, [*args, "--older-than", "0"])
    assert done.exit_code == 0 and "removed 1 files (2.0 MB)" in done.output, done.output
    assert list((tmp_path / "artifacts").iterdir()) == []
    missing = runner.invoke(app, ["clean-artifacts", "--storage", f"sqlite:///{tmp_path / 'none.db'}"])
    assert missing.exit_code == 2 and "no sweep database" in missing.output


def test_a_worker_start_removes_what_a_crash_left_and_says_so(tmp_path: Path) -> None:
    from sweep.service.worker import WorkerEvents, _worker_store

    storage = open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    folder = tmp_path / "artifacts"
    folder.mkdir()
    trial = optuna.create_study(storage=storage, study_name="s").ask()
    crashed = _upload(trial, AtomicFileStore(folder), b"x" * 3_000_000, tmp_path)  # never recorded on its trial
    recent = _upload(trial, AtomicFileStore(folder), b"y", tmp_path)
    _age(folder / crashed, 7200)
    said: list[str] = []
    opened = artifact_store(f"sqlite:///{tmp_path / 'db.sqlite'}", str(folder))  # a folder: written whole or not at all
    assert isinstance(opened, AtomicFileStore) and opened.base_path == folder
    assert _worker_store(storage, opened, WorkerEvents(message=said.append)) is opened
    assert said == [f"removed 1 artifact files no trial refers to (3.0 MB) from {folder}"]
    assert [p.name for p in folder.iterdir()] == [recent]  # younger than an hour: its record may be on its way


class _FullFile(io.RawIOBase):
    """A file on a disk that fills up after 1000 bytes."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.written += len(b)
        if self.written > 1000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(b)


@pytest.mark.faults
def test_a_checkpoint_that_cannot_be_written_is_one_warning_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from sweep import objective

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}"))
    trial = study.ask()
    said: list[str] = []
    checkpoints = objective.Checkpoints(trial, AtomicFileStore(tmp_path), warn=said.append)
    checkpoints.save({"w": torch.zeros(10)}, 1)
    monkeypatch.setattr(objective, "open", _FullFile, raising=False)  # the temporary copy's disk is full
    checkpoints.save({"w": torch.zeros(100_000)}, 2)
    checkpoints.save({"w": torch.zeros(100_000)}, 3)
    assert len(said) == 1 and "checkpoint after epoch 2 not stored" in said[0] and "from epoch 1" in said[0]
    assert (checkpoints.failed, checkpoints.disk_errors) == (2, 2)
    assert study.trials[0].user_attrs[record.CHECKPOINT.name]["epoch"] == 1  # the retry's is still the last one stored
