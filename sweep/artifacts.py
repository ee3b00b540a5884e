"""The artifact store of epoch checkpoints and kept models: whole files or none, and no file left behind.

Optuna's ``FileSystemArtifactStore`` writes a file in place, so a full disk leaves a partial file that
nothing points at (issue 21 found a 75 MB one and two empty ones). ``AtomicFileStore`` writes a
temporary file beside it and renames it (``sweep.atomic``): a failed write leaves nothing.

``remove_orphans`` removes what a crash can still leave: a file this storage's trials stored (Optuna
records every upload on its trial, ``artifacts:<id>``, before it writes the file) that no trial points
at any more (``checkpoint``, ``final_model``; a retry inherits its predecessor's), and temporary files
of writes that never finished. Files of another storage sharing the folder are never touched, nor
anything but sweep's own file names. Only files older than ``min_age_s`` go: between its upload and the
trial pointing at it a new file is unreferenced for a moment (longer while the database is away).
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import optuna
import sqlalchemy
from optuna.artifacts.exceptions import ArtifactNotFound

from sweep import record
from sweep.atomic import write_atomic
from sweep.storage import read_connection

# What Optuna's upload_artifact records on a trial before it writes the file (optuna.artifacts._upload).
_UPLOADED_PREFIX = "artifacts:"
# Optuna names every artifact by a random UUID; write_atomic's temporary files are ".<name>.<random>.tmp".
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_ARTIFACT = re.compile(rf"^{_UUID}$")
_TEMPORARY = re.compile(rf"^\.({_UUID})\.[^/]*\.tmp$")
# On worker start: an hour is longer than any write takes and than a database outage a worker rides out
# between storing a file and recording it on its trial.
ORPHAN_MIN_AGE_S = 3600.0
_CHUNK = 500  # ids per IN list


class AtomicFileStore(optuna.artifacts.FileSystemArtifactStore):
    """``FileSystemArtifactStore`` whose writes are temporary file + rename: a failed write leaves nothing."""

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        def save(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                shutil.copyfileobj(content_body, fh)

        # Not fsynced: a checkpoint torn by a power loss fails to load and its retry starts over (objective),
        # and a sync per epoch of ~100 MB would slow every trial for that rare case.
        write_atomic(self._get_filepath(artifact_id), save, durable=False)

    @property
    def base_path(self) -> Path:
        return Path(self._base_path)


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is ENOSPC or EDQUOT: a full disk or quota."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        current = current.__cause__ or current.__context__
    return False


@dataclass(frozen=True)
class Orphans:
    """What ``remove_orphans`` found: the files removed (or, with ``dry_run``, that would be) and their size."""

    files: tuple[str, ...]
    bytes: int


def remove_orphans(
    storage: optuna.storages.BaseStorage, store: Any, *, min_age_s: float, dry_run: bool = False
) -> Orphans:
    """Remove this storage's artifact files that no trial points at, and unfinished temporary files,
    older than ``min_age_s`` seconds (see the module's docstring). ``store``: an AtomicFileStore, or an
    S3ArtifactStore (``sweep.objectstore``: one listing of its prefix; an upload is whole or absent there,
    so it leaves no temporary objects)."""
    files, temporary = _old_files(store, min_age_s)
    if files:
        # Another storage's file in a shared folder is not this storage's to judge: only its own go.
        ours, pointed_at = _uploaded_here(storage, files), referenced(storage, recent_s=min_age_s)
        files = {name: size for name, size in files.items() if name in ours and name not in pointed_at}
    removed, total = [], 0
    for name, size in sorted({**files, **temporary}.items()):
        try:
            if not dry_run:
                _remove(store, name)
        except (FileNotFoundError, ArtifactNotFound):
            continue  # removed meanwhile (kept.reconcile, another worker's sweep)
        removed.append(name)
        total += size
    return Orphans(tuple(removed), total)


def _old_files(store: Any, min_age_s: float) -> tuple[dict[str, int], dict[str, int]]:
    """(artifact files, unfinished temporary files) older than ``min_age_s``: name → size in bytes."""
    files, temporary = {}, {}
    listing = getattr(store, "listing", None)  # object storage: age and size of every object under the prefix
    if listing is not None:
        for name, (age, size) in listing().items():
            if age >= min_age_s and _ARTIFACT.match(name):
                files[name] = size
        return files, temporary
    now = time.time()
    for entry in _entries(store.base_path):
        stat = entry.stat()
        if now - stat.st_mtime < min_age_s:
            continue
        if _ARTIFACT.match(entry.name):
            files[entry.name] = stat.st_size
        elif _TEMPORARY.match(entry.name):
            temporary[entry.name] = stat.st_size  # a write that never finished: no reader can ever want it
    return files, temporary


def _remove(store: Any, name: str) -> None:
    if hasattr(store, "listing"):
        store.remove(name)
    else:  # a temporary file is no artifact of the store's: removed by its path
        os.remove(store.base_path / name)


def _entries(folder: Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            yield from (e for e in it if e.is_file(follow_symlinks=False))
    except FileNotFoundError:
        return


def referenced(storage: optuna.storages.BaseStorage, *, recent_s: float = 0.0) -> set[str]:
    """The artifact ids the trials of every study in the storage point at: the checkpoints of unfinished
    trials (a finished one's is its retry's, which inherited the reference) and of trials finished in the
    last ``recent_s`` seconds (their retry may be on its way: failing a trial and re-queuing it are two
    commits), and every final model (``sweep.kept.reconcile`` decides which of those stay)."""
    since = datetime.datetime.now() - datetime.timedelta(seconds=recent_s)  # Optuna's clock: local, naive

    def needed(t: optuna.trial.FrozenTrial) -> bool:
        return not t.state.is_finished() or (t.datetime_complete is not None and t.datetime_complete >= since)

    backend, engine = _engine(storage)
    if engine is None:  # in-memory storage (tests, notebooks)
        values: list[Any] = [record.final_model(t) for t in _every_trial(storage)]
        values += [record.checkpoint(t) for t in _every_trial(storage) if needed(t)]
    else:
        from optuna.storages._rdb import models
        from optuna.trial import TrialState

        attrs, trials = models.TrialUserAttributeModel.__table__, models.TrialModel.__table__
        live = trials.c.state.in_((TrialState.WAITING, TrialState.RUNNING)) | (trials.c.datetime_complete >= since)
        query = (
            sqlalchemy.select(attrs.c.value_json)
            .select_from(attrs.join(trials, trials.c.trial_id == attrs.c.trial_id))
            .where(
                attrs.c.value_json != "null",
                (attrs.c.key == record.FINAL_MODEL.name) | ((attrs.c.key == record.CHECKPOINT.name) & live),
            )
        )
        with read_connection(backend, engine) as conn:
            values = [json.loads(v) for v in conn.execute(query).scalars()]
    return {str(v["artifact_id"]) for v in values if isinstance(v, dict) and v.get("artifact_id")}


def _uploaded_here(storage: optuna.storages.BaseStorage, artifact_ids: Iterable[str]) -> set[str]:
    """Those of ``artifact_ids`` that a trial of this storage uploaded (Optuna's ``artifacts:<id>``)."""
    wanted = sorted(_UPLOADED_PREFIX + a for a in artifact_ids)
    backend, engine = _engine(storage)
    if engine is None:
        found = set(wanted).intersection(k for t in _every_trial(storage) for k in t.system_attrs)
    else:
        from optuna.storages._rdb import models

        attrs = models.TrialSystemAttributeModel.__table__
        found = set()
        with read_connection(backend, engine) as conn:  # by sweep's index on the key
            for i in range(0, len(wanted), _CHUNK):
                chunk = wanted[i : i + _CHUNK]
                found.update(conn.execute(sqlalchemy.select(attrs.c.key).where(attrs.c.key.in_(chunk))).scalars())
    return {k.removeprefix(_UPLOADED_PREFIX) for k in found}


def _engine(storage: optuna.storages.BaseStorage) -> tuple[Any, sqlalchemy.Engine | None]:
    """The RDB backend behind a (cached) storage and its engine; None for an in-memory storage."""
    backend = getattr(storage, "_backend", storage)
    return backend, getattr(backend, "autocommit_engine", None) or getattr(backend, "engine", None)


def _every_trial(storage: optuna.storages.BaseStorage) -> Iterator[optuna.trial.FrozenTrial]:
    for study in storage.get_all_studies():
        yield from storage.get_all_trials(study._study_id, deepcopy=False)
