"""On an Optuna release sweep was not tested against, Optuna's own storage and TPE run, correctly.

pyproject.toml admits any Optuna below 6 while sweep.rdb and sweep.tpe override internals of the
releases in sweep.compat.TESTED_OPTUNA; these tests force the version check to "untested" and check
that each steps aside for Optuna's own code and that a sweep still runs whole.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import SWEEP, write_tiny_spec
from optuna.samplers import TPESampler

import sweep.tpe
from sweep.compat import TESTED_OPTUNA, rdb_unsupported, tpe_unsupported, untested_optuna
from sweep.tpe import IncrementalTPESampler

# Loaded by the worker processes through PYTHONPATH: Optuna says it is a release sweep was not tested on.
UNTESTED_HOOK = "import optuna\noptuna.__version__ = '5.99.0'\n"


def test_the_version_check() -> None:
    low, high = TESTED_OPTUNA
    assert untested_optuna(f"{low[0]}.{low[1]}.3") is None
    assert (
        untested_optuna(f"{high[0]}.{high[1]}.0") == f"it was tested with Optuna >=5.0,<5.1, not {high[0]}.{high[1]}.0"
    )
    assert untested_optuna("4.9.0") is not None
    assert untested_optuna("dev") == "cannot read Optuna's version 'dev'"
    assert untested_optuna() is None  # the suite runs on the pinned, tested release (constraints.txt)


def test_a_missing_internal_is_named_for_rdb_and_tpe_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a tested release that lacks a private name sweep uses, both step aside the same way."""
    from optuna.samplers._tpe import sampler as tpe_module
    from optuna.storages._rdb import models

    assert rdb_unsupported() is None and tpe_unsupported() is None
    monkeypatch.delattr(models.TrialValueModel, "stored_repr_to_value")
    monkeypatch.delattr(TPESampler, "_compare")
    monkeypatch.delattr(tpe_module, "default_gamma")
    version = optuna.__version__
    assert rdb_unsupported() == f"Optuna {version}'s TrialValueModel lacks stored_repr_to_value"
    assert tpe_unsupported() == f"Optuna {version}'s optuna.samplers._tpe.sampler lacks default_gamma"
    monkeypatch.undo()
    monkeypatch.delattr(TPESampler, "_compare")
    assert tpe_unsupported() == f"Optuna {version}'s TPESampler lacks _compare"


def _objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    batch = trial.suggest_categorical("batch_size", [64, 128, 256, 512])
    frozen = trial.suggest_int("frozen_layers", 0, 5)
    aug = trial.suggest_float("aug_strength", 0.0, 1.0)
    return -abs(lr - 3e-3) * 100 - frozen * 0.1 + aug * 0.05 - batch / 5120


def _params(sampler: optuna.samplers.BaseSampler) -> list[dict[str, Any]]:
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(_objective, n_trials=24)
    return [t.params for t in study.trials]


def test_untested_optuna_asks_stock_tpe_for_every_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    monkeypatch.setattr(sweep.tpe, "UNSUPPORTED", "it was tested with Optuna >=5.0,<5.1, not 5.99.0")

    def never(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the incremental path ran on an untested Optuna")

    monkeypatch.setattr(IncrementalTPESampler, "_sample_incremental", never)
    fallen_back = _params(IncrementalTPESampler(seed=3, n_startup_trials=5))
    assert fallen_back == _params(TPESampler(seed=3, n_startup_trials=5))
    monkeypatch.undo()
    # And on the tested release the incremental path proposes the same (tests/test_tpe.py in depth).
    assert _params(IncrementalTPESampler(seed=3, n_startup_trials=5)) == fallen_back


@pytest.mark.slow
def test_a_sweep_on_an_untested_optuna_runs_on_optunas_own_storage_and_tpe(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(UNTESTED_HOOK)
    env = {
        **os.environ,
        "PYTHONPATH": f"{hooks}:{Path(__file__).resolve().parents[1]}",
        "SWEEP_CACHE_DIR": str(tmp_path / "cache"),
        "SWEEP_STORAGE": f"sqlite:///{tmp_path / 'sweep.db'}",
        "OMP_NUM_THREADS": "1",
    }
    write_tiny_spec(tmp_path, n_trials=5, epochs=1, sampler="tpe")
    spec = str(tmp_path / "studies" / "tiny.toml")
    run = [str(SWEEP), "create", spec, "--set", "sampler.n_startup_trials=2"]
    created = subprocess.run(run, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    done = subprocess.run(
        [str(SWEEP), "worker", "tiny", "--device", "cpu", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    storage_line = "sweep: using Optuna's own RDBStorage (slower): sweep.rdb cannot run: it was tested with Optuna"
    tpe_line = (
        "sweep: using Optuna's own TPE (slower per ask): sweep.tpe it was tested with Optuna >=5.0,<5.1, not 5.99"
    )
    assert done.stderr.count(storage_line) == 1 and done.stderr.count(tpe_line) == 1, done.stderr
    study = optuna.load_study(study_name="tiny", storage=env["SWEEP_STORAGE"])
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 5
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 5
