"""The study's top-K models: the ranking, and real processes finishing trials at the same moment."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweep import record
from sweep.kept import StoredModel, kept_models, rank, reconcile
from sweep.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]
K = 3
PROCESSES = 4
PER_PROCESS = 5
# Rounded to one decimal: many ties at the top, so the tie-break (earlier trial first) is exercised.
VALUES = [round((i * 7919 % 23) / 23, 1) for i in range(PROCESSES * PER_PROCESS)]

# One worker's end of a trial, as sweep.objective and sweep.service do it: the final model is
# stored and recorded on the trial, the trial is told COMPLETE, then the kept set is reconciled.
# Every process asks its trials first and then finishes them all at the same wall-clock moment.
CHILD = """
import sys, time, optuna, torch
from optuna.artifacts import FileSystemArtifactStore
from sweep.kept import reconcile
from sweep.objective import Checkpoints
from sweep.storage import open_storage

url, artifacts, start, k = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
values = [float(v) for v in sys.argv[5:]]
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = open_storage(url)
study = optuna.load_study(study_name="kept", storage=storage)
store = FileSystemArtifactStore(artifacts)
trials = [study.ask() for _ in values]
while time.time() < start:
    time.sleep(0.002)
for trial, value in zip(trials, values):
    Checkpoints(trial, store).store_final({"model": {"w": torch.full((4,), value)}})
    study.tell(trial, value)
    reconcile(storage, study._study_id, "kept", store, k)
"""


def test_rank_takes_completed_trials_best_first_ties_to_the_earlier() -> None:
    def m(number: int, value: float | None, state: TrialState = TrialState.COMPLETE) -> StoredModel:
        return StoredModel(number, state, value, f"a{number}", None)

    models = [m(0, 0.5), m(1, 0.9), m(2, 0.9), m(3, 0.99, TrialState.FAIL), m(4, 0.7), m(5, None)]
    assert [k.trial for k in rank(models, 3)] == [1, 2, 4]
    assert rank(models, 0) == ()
    assert [k.trial for k in rank(models, 10)] == [1, 2, 4, 0]


@pytest.mark.slow
def test_many_processes_finishing_at_once_keep_exactly_the_top_k(storage_url: str, tmp_path: Path) -> None:
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="kept", storage=storage, direction="maximize")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    start = time.time() + 8  # every process is connected, has imported torch and asked by then
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                storage_url,
                str(artifacts),
                str(start),
                str(K),
                *map(str, VALUES[p * PER_PROCESS : (p + 1) * PER_PROCESS]),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for p in range(PROCESSES)
    ]
    samples = 0
    while any(p.poll() is None for p in procs):
        # While they race: never more than K kept, and every kept trial's model is there. The kept
        # list only ever changes towards better trials, so an unchanged list re-read after the file
        # checks was the list during them.
        before = kept_models(storage.get_study_user_attrs(study._study_id))
        present = [(artifacts / k.artifact_id).is_file() for k in before]
        if kept_models(storage.get_study_user_attrs(study._study_id)) == before:
            assert len(before) <= K
            assert all(present), before
            samples += 1
    outputs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * PROCESSES, outputs
    assert samples > 0

    trials = study.get_trials(deepcopy=False)
    assert len(trials) == PROCESSES * PER_PROCESS and all(t.state == TrialState.COMPLETE for t in trials)
    expected = sorted(trials, key=lambda t: (-t.value, t.number))[:K]
    kept = kept_models(study.user_attrs)
    assert [k.trial for k in kept] == [t.number for t in expected]
    assert [k.value for k in kept] == [t.value for t in expected]
    by_number = {t.number: t for t in trials}
    assert all(k.artifact_id == by_number[k.trial].user_attrs[record.FINAL_MODEL.name]["artifact_id"] for k in kept)
    # Exactly the kept models are left: every other one was removed by some process's reconcile.
    assert sorted(p.name for p in artifacts.iterdir()) == sorted(k.artifact_id for k in kept)


class _CheckingStore:
    """An artifact store whose remove() checks, on a connection of its own, that the committed kept
    list no longer names the model being removed."""

    def __init__(self, url: str, study_id: int) -> None:
        self.reader = open_storage(url)
        self.study_id = study_id
        self.removed: list[str] = []

    def remove(self, artifact_id: str) -> None:
        committed = kept_models(self.reader.get_study_user_attrs(self.study_id))
        assert artifact_id not in {k.artifact_id for k in committed}, (artifact_id, committed)
        if artifact_id in self.removed:
            raise FileNotFoundError(artifact_id)  # as FileSystemArtifactStore: gone already
        self.removed.append(artifact_id)


def test_a_model_is_removed_only_after_the_list_without_it_is_committed(storage_url: str) -> None:
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="order", storage=storage, direction="maximize")
    store = _CheckingStore(storage_url, study._study_id)
    for number, value in enumerate([0.5, 0.6, 0.7, 0.8]):  # each new trial pushes the worst out
        trial = study.ask()
        final = {"artifact_id": f"a{number}", "path": None}
        storage.set_trial_user_attr(trial._trial_id, record.FINAL_MODEL.name, final)
        study.tell(trial, value)
        result = reconcile(storage, study._study_id, "order", store, 2)
        assert [k.trial for k in result.kept] == sorted(range(number + 1), key=lambda n: -n)[:2]
    assert store.removed == ["a0", "a1"]
