"""Checkpoints and kept models on S3-compatible object storage (``--artifacts s3://bucket/prefix``),
against a real S3 server on 127.0.0.1 (moto's standalone server, the ``s3_endpoint`` fixture).

The sweep test runs its workers in two folders of their own on PostgreSQL: nothing local is shared, so
a resumed trial can only have read its checkpoint from the bucket.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import boto3
import optuna
import pytest
from conftest import S3_KEYS
from helpers import SWEEP, held_worker_env, wait_for_line, write_tiny_spec
from optuna.trial import TrialState

from sweep.objectstore import S3ArtifactStore, describe, location_of, present
from sweep.storage import StorageError, artifact_store, open_storage

pytestmark = pytest.mark.s3


def _keys(bucket: str, prefix: str = "") -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", ()))


def test_objects_go_under_the_prefix_and_come_back(s3_bucket: str, tmp_path: Path) -> None:
    store = artifact_store("sqlite:///unused.db", f"s3://{s3_bucket}/team/sweeps/")
    assert isinstance(store, S3ArtifactStore) and describe(store) == f"s3://{s3_bucket}/team/sweeps"
    study = optuna.create_study()
    trial = study.ask()
    src = tmp_path / "ckpt.pt"
    src.write_bytes(b"weights" * 1000)
    artifact_id = optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(src), study_or_trial=trial)
    assert _keys(s3_bucket) == [f"team/sweeps/{artifact_id}"]
    assert location_of(store, artifact_id) == f"s3://{s3_bucket}/team/sweeps/{artifact_id}"
    back = tmp_path / "back.pt"
    optuna.artifacts.download_artifact(artifact_store=store, file_path=str(back), artifact_id=artifact_id)
    assert back.read_bytes() == src.read_bytes()
    # One listing says what is left: objects of another prefix in the same bucket are not this store's.
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="team/other/x", Body=b"")
    assert present(store, [artifact_id, "gone"]) == {artifact_id}
    ((listed, (age, size)),) = store.listing().items()  # with its age and size: what an orphan sweep needs
    assert listed == artifact_id and 0 <= age < 600 and size == 7000
    store.remove(artifact_id)
    assert present(store, [artifact_id]) == set() and _keys(s3_bucket) == ["team/other/x"]
    with pytest.raises(optuna.artifacts.exceptions.ArtifactNotFound):
        store.open_reader(artifact_id)
    assert not (Path.cwd() / "unused.db").exists() and not (Path.cwd() / "artifacts").exists()


def test_orphans_in_the_bucket_are_removed_and_only_this_storages(s3_bucket: str, tmp_path: Path) -> None:
    from sweep.artifacts import remove_orphans
    from sweep.service import clean_artifacts

    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    location = f"s3://{s3_bucket}/p"
    store, storage = artifact_store(url, location), open_storage(url)
    trial = optuna.create_study(storage=storage, study_name="s").ask()
    src = tmp_path / "file.pt"
    src.write_bytes(b"x" * 1000)

    def upload() -> str:
        return optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(src), study_or_trial=trial)

    orphan, checkpoint = upload(), upload()  # the orphan: stored, never recorded (its worker crashed)
    trial.set_user_attr("checkpoint", {"artifact_id": checkpoint, "epoch": 1})
    foreign = "0b7c6f0e-4c1d-4f7e-9d3a-3f6e2b1a9c00"  # another storage's object under the same prefix
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"p/{foreign}", Body=b"")
    assert remove_orphans(storage, store, min_age_s=3600).files == ()  # younger than an hour
    dry = remove_orphans(storage, store, min_age_s=0, dry_run=True)
    assert dry.files == (orphan,) and dry.bytes == 1000 and len(_keys(s3_bucket, "p/")) == 3
    cleaned = clean_artifacts(url, artifacts=location, older_than_s=0)
    assert cleaned.orphans.files == (orphan,) and cleaned.folder == location
    assert _keys(s3_bucket, "p/") == sorted([f"p/{checkpoint}", f"p/{foreign}"])


def test_unusable_locations_are_refused_in_one_line(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for location, why in (
        ("s3://no-such-bucket-here/x", "s3://no-such-bucket-here/x: the bucket does not exist"),
        (f"s3://AKIAKEY:{S3_KEYS['AWS_SECRET_ACCESS_KEY']}@{s3_bucket}/x", "an s3:// location takes no credentials"),
        ("s3:///x", "expected s3://bucket or s3://bucket/prefix"),
        (f"s3://{s3_bucket}/x?token=abc", "has no \\?query"),
        ("gs://bucket/x", "use a folder or s3://bucket/prefix"),
    ):
        with pytest.raises(StorageError, match=why):
            artifact_store("sqlite:///unused.db", location)
    # No credentials anywhere (environment, config files): refused before any request is sent.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup from a test
    boto3.setup_default_session()  # boto3's process-wide session keeps credentials it resolved before
    with pytest.raises(StorageError, match="no AWS credentials"):
        artifact_store("sqlite:///unused.db", f"s3://{s3_bucket}")


def _env(work: Path, url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "SWEEP_STORAGE": url, "SWEEP_CACHE_DIR": str(work / "cache"), **extra}


def _run(work: Path, url: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SWEEP), *args], cwd=work, env=_env(work, url, **extra), text=True, capture_output=True, timeout=600
    )


@pytest.mark.slow
def test_a_missing_bucket_is_one_line_and_exit_2(s3_bucket: str, s3_endpoint: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    write_tiny_spec(tmp_path)
    assert _run(tmp_path, url, "create", "tiny").returncode == 0
    missing = "s3://sweep-missing-bucket/tiny"
    for args in (["worker", "tiny", "--artifacts", missing], ["delete", "tiny", "--yes", "--artifacts", missing]):
        done = _run(tmp_path, url, *args)
        assert done.returncode == 2, done
        assert done.stderr.strip().splitlines() == [
            "error: --artifacts s3://sweep-missing-bucket/tiny: the bucket does not exist; create it first "
            "(aws s3 mb s3://sweep-missing-bucket)"
        ]
    # The same from the environment; neither the endpoint nor a key is ever printed.
    done = _run(tmp_path, url, "worker", "tiny", SWEEP_ARTIFACTS=missing)
    assert done.returncode == 2 and "bucket does not exist" in done.stderr
    for secret in (s3_endpoint, "127.0.0.1", *S3_KEYS.values()):
        assert secret not in done.stdout + done.stderr
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.slow
def test_killed_worker_resumes_from_the_bucket_and_export_reads_it(
    s3_bucket: str, pg_fresh_url: str, tmp_path: Path
) -> None:
    machines = [tmp_path / "machine-a", tmp_path / "machine-b", tmp_path / "laptop"]
    for m in machines:
        m.mkdir()
    a, b, laptop = machines
    prefix = "sweeps/tiny"
    artifacts = {"SWEEP_ARTIFACTS": f"s3://{s3_bucket}/{prefix}"}
    fast = {"SWEEP_HEARTBEAT_INTERVAL": "1", "SWEEP_GRACE_PERIOD": "3"}
    write_tiny_spec(a, n_trials=2, epochs=4)
    created = _run(a, pg_fresh_url, "create", "tiny", "--set", "data.subset=800", "--set", "checkpoint.keep_best=1")
    assert created.returncode == 0, created.stderr

    def study() -> optuna.Study:
        return optuna.load_study(study_name="tiny", storage=open_storage(pg_fresh_url))

    # Machine A's worker is held in its second epoch, so the kill lands mid-trial.
    held, _ = held_worker_env(a)
    victim = subprocess.Popen(
        [str(SWEEP), "worker", "--threads", "1"],
        cwd=a,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_env(a, pg_fresh_url, **held, **fast, **artifacts),
    )
    wait_for_line(victim, "epoch 1/4")
    deadline = time.monotonic() + 60  # the epoch-1 checkpoint is uploaded just after the line is printed
    while not study().trials[0].user_attrs.get("checkpoint") and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    left = study().trials[0].user_attrs["checkpoint"]
    assert _keys(s3_bucket, prefix) == [f"{prefix}/{left['artifact_id']}"]  # the newest checkpoint only

    survivor = _run(b, pg_fresh_url, "worker", "--threads", "1", **fast, **artifacts)
    assert survivor.returncode == 0, survivor.stdout + survivor.stderr
    trials = study().trials
    assert trials[0].state == TrialState.FAIL
    (retried,) = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert retried.state == TrialState.COMPLETE and retried.params == trials[0].params
    assert retried.user_attrs["resumed_from_epoch"] == left["epoch"]  # read from the bucket, on machine B
    assert f"resuming from epoch {left['epoch']}" in survivor.stdout
    assert sorted(retried.intermediate_values) == [1, 2, 3, 4]
    assert len([t for t in trials if "failed_trial" not in t.system_attrs]) == 2  # budget exact
    assert all(t.state.is_finished() for t in trials)

    # In the bucket: the one kept model (keep_best = 1), no checkpoint; nothing on either machine's disk.
    (kept,) = study().user_attrs["kept_models"]
    assert kept["path"] == f"s3://{s3_bucket}/{prefix}/{kept['artifact_id']}"
    assert _keys(s3_bucket, prefix) == [f"{prefix}/{kept['artifact_id']}"]
    for m in (a, b):
        assert not (m / "storage").exists() and not (m / "artifacts").exists()

    # Anywhere else: export reads the kept model from the bucket.
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
    assert kept["trial"] == best.number
    export = _run(laptop, pg_fresh_url, "export", "tiny", "--output", "best", "--json", **artifacts)
    assert export.returncode == 0, export.stderr
    card = json.loads((laptop / "best" / "model.json").read_text())
    assert card["trial"] == best.number and card["val_accuracy"] == best.value
    assert json.loads(export.stdout)["trial"] == best.number

    # A study deleted takes its objects with it.
    deleted = _run(laptop, pg_fresh_url, "delete", "tiny", "--yes", "--json", **artifacts)
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout)["artifacts_removed"] == 1
    assert _keys(s3_bucket, prefix) == []
