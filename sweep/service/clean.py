"""``sweep clean-artifacts``: remove the artifact files no trial refers to (what crashes and full disks left)."""

from __future__ import annotations

from dataclasses import dataclass

from sweep.artifacts import Orphans, remove_orphans
from sweep.service.common import open_read_only
from sweep.storage import artifact_store


@dataclass(frozen=True)
class CleanResult:
    """What ``clean_artifacts`` removed (or, with ``dry_run``, would remove), and where."""

    folder: str  # the folder, or s3://bucket/prefix
    orphans: Orphans
    dry_run: bool


def clean_artifacts(
    storage_url: str, *, artifacts: str | None = None, older_than_s: float, dry_run: bool = False
) -> CleanResult:
    """Remove this storage's artifact files that no trial points at, and unfinished temporary files,
    older than ``older_than_s`` (``sweep.artifacts.remove_orphans``; every worker does it on start, for
    files older than an hour)."""
    storage = open_read_only(storage_url)
    from sweep.objectstore import describe

    store = artifact_store(storage_url, artifacts)
    orphans = remove_orphans(storage, store, min_age_s=older_than_s, dry_run=dry_run)
    return CleanResult(describe(store), orphans, dry_run)
