"""Where checkpoints and kept models live: a folder, or S3-compatible object storage (``s3://bucket/prefix``).

Object storage goes through Optuna's ``Boto3ArtifactStore`` (boto3: ``pip install 'sweep[s3]'``); its
endpoint and credentials come from the standard AWS environment and config files only
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ...), so MinIO, Ceph and R2 work and
nothing secret is ever part of a location sweep stores in the database or prints. No torch here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from optuna.artifacts import Boto3ArtifactStore

from sweep.artifacts import AtomicFileStore
from sweep.errors import StorageError

S3 = "s3://"


class ArtifactLocationError(StorageError):
    """A bad or unusable ``--artifacts`` location, on one line (no endpoint, no credential)."""


def is_object_store(location: str) -> bool:
    return location.startswith(S3)


def parse_s3(location: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → (bucket, "some/prefix"); refuses credentials in the URL."""
    parts = urlsplit(location)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        # Never echo the URL: its user part may be a key.
        raise ArtifactLocationError(
            "--artifacts: an s3:// location takes no credentials; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment"
        )
    if parts.query or parts.fragment:  # not echoed either: a query may carry a token
        raise ArtifactLocationError("--artifacts: an s3:// location has no ?query or #fragment; use s3://bucket/prefix")
    if not parts.netloc:
        raise ArtifactLocationError(f"--artifacts {location!r}: expected s3://bucket or s3://bucket/prefix")
    return parts.netloc, parts.path.strip("/")


class S3ArtifactStore(Boto3ArtifactStore):
    """Optuna's Boto3ArtifactStore with every object under ``prefix`` (several studies or teams share a
    bucket). Artifact ids stay Optuna's; only the object keys carry the prefix."""

    def __init__(self, bucket: str, prefix: str = "", client: Any | None = None) -> None:
        try:
            import boto3
        except ImportError:
            raise ArtifactLocationError(
                "--artifacts s3://...: boto3 is not installed; install object-storage support: pip install 'sweep[s3]'"
            ) from None
        # boto3 reads AWS_ENDPOINT_URL(_S3), the credential chain and ~/.aws/config by itself.
        super().__init__(bucket, client or boto3.client("s3"))
        self.prefix = prefix.strip("/")

    def __str__(self) -> str:
        return f"{S3}{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def _start(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def key(self, artifact_id: str) -> str:
        return f"{self.prefix}/{artifact_id}" if self.prefix else artifact_id

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return super().open_reader(self.key(artifact_id))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        super().write(self.key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        super().remove(self.key(artifact_id))

    def listing(self) -> dict[str, tuple[float, int]]:
        """Every artifact under the prefix: its age in seconds and its size in bytes, one request per
        1,000 objects. What an orphan sweep or a removal asks instead of a request per artifact id."""
        start = self._start
        now = time.time()
        found: dict[str, tuple[float, int]] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
            for obj in page.get("Contents", ()):
                artifact_id = obj["Key"][len(start) :]
                if artifact_id and "/" not in artifact_id:  # deeper keys belong to longer prefixes
                    found[artifact_id] = (now - obj["LastModified"].timestamp(), int(obj["Size"]))
        return found

    def check(self) -> None:
        """Fail now, on one line, when the bucket cannot be used (before a worker trains an epoch)."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            # A listing of the prefix, not HeadBucket: it is what the store needs (``listing``), and a
            # policy that grants the prefix alone denies HeadBucket.
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._start, MaxKeys=1)
        except NoCredentialsError:
            raise ArtifactLocationError(
                f"--artifacts {self}: no AWS credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE)"
            ) from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("404", "NoSuchBucket") or status == 404:
                why = "the bucket does not exist; create it first (aws s3 mb s3://" + self.bucket + ")"
            elif code in ("403", "AccessDenied") or status == 403:
                why = "access denied; check the AWS credentials and the bucket's policy"
            else:
                why = f"the object store answered {code or status}"
            raise ArtifactLocationError(f"--artifacts {self}: {why}") from None
        except BotoCoreError as exc:
            # Endpoint URLs are configuration, not to be printed: name the error's kind only.
            raise ArtifactLocationError(
                f"--artifacts {self}: cannot reach the object store ({type(exc).__name__}); check "
                "AWS_ENDPOINT_URL (or endpoint_url in the AWS config) and the network"
            ) from None


ArtifactStore = AtomicFileStore | S3ArtifactStore


def open_store(location: str) -> ArtifactStore:
    """The artifact store at ``location``: ``s3://bucket/prefix`` (checked now) or a folder (created;
    written whole-file-or-nothing)."""
    if is_object_store(location):
        store = S3ArtifactStore(*parse_s3(location))
        store.check()
        return store
    if "://" in location:
        raise ArtifactLocationError(
            f"--artifacts {location.split('://')[0]}://...: use a folder or s3://bucket/prefix "
            "(S3-compatible stores: set AWS_ENDPOINT_URL)"
        )
    os.makedirs(location, exist_ok=True)
    return AtomicFileStore(location)


def describe(store: Any) -> str:
    """Where a store keeps its files, for messages: the folder or ``s3://bucket/prefix``."""
    base = getattr(store, "_base_path", None)  # FileSystemArtifactStore
    return os.path.abspath(base) if base else str(store)


def location_of(store: Any, artifact_id: str) -> str | None:
    """Where one artifact is (a file path, an ``s3://`` URL), recorded on trials for people to find it."""
    if isinstance(store, S3ArtifactStore):
        return f"{S3}{store.bucket}/{store.key(artifact_id)}"
    base = getattr(store, "_base_path", None)
    return os.path.abspath(os.path.join(base, artifact_id)) if base else None


def present(store: Any, ids: Iterable[str]) -> set[str]:
    """Which of ``ids`` may still be stored: on object storage one listing says (a removal is a request
    each, so the long tail of models removed long ago is not requested again on every completion); on a
    folder every id (a failing unlink costs a syscall)."""
    wanted = set(ids)
    if isinstance(store, S3ArtifactStore) and wanted:
        return wanted & store.listing().keys()
    return wanted
