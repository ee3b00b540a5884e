"""The objective and the worker loop in-process: values, pruning, failure reasons, budget."""

from __future__ import annotations

import weakref
from pathlib import Path

import optuna
import pytest
import torch
from helpers import write_tiny_spec
from optuna.trial import TrialState

import sweep.train
from sweep.objective import _is_oom
from sweep.service import create_study, run_worker


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWEEP_CACHE_DIR", str(tmp_path / "cache"))
    return f"sqlite:///{tmp_path / 'sweep.db'}"


def _create(url: str, tmp_path: Path, *overrides: str, **spec_kw: object) -> optuna.Study:
    write_tiny_spec(tmp_path, **spec_kw)  # type: ignore[arg-type]
    create_study("tiny", storage_url=url, overrides=list(overrides))
    return optuna.load_study(study_name="tiny", storage=url)


def test_budget_is_exact_and_values_are_validation_accuracy(url: str, tmp_path: Path) -> None:
    study = _create(url, tmp_path, n_trials=3, epochs=1)
    summary = run_worker("tiny", storage_url=url, device="cpu", threads=2)
    assert summary.trials == 3
    again = run_worker("tiny", storage_url=url, device="cpu")  # budget spent: nothing more
    assert again.trials == 0
    trials = study.trials
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert t.user_attrs["host"] and t.user_attrs["device"] == "cpu" and t.user_attrs["duration_s"] > 0
        assert t.user_attrs["data_fingerprint"]
        assert t.user_attrs["precision"] == "fp32"  # the ImageNet stem trains in fp32 on a CPU
        assert t.user_attrs["val_images"] > 0 and t.user_attrs["train_images"] > 0
        assert t.user_attrs["environment"]["torch"] == torch.__version__
        assert 0 <= t.user_attrs["test_accuracy"] <= 1


@pytest.mark.slow
def test_n_trials_limits_this_worker_only(url: str, tmp_path: Path) -> None:
    study = _create(url, tmp_path, n_trials=3, epochs=1)
    assert run_worker("tiny", storage_url=url, device="cpu", n_trials=1).trials == 1
    assert run_worker("tiny", storage_url=url, device="cpu").trials == 2
    assert len(study.trials) == 3


@pytest.mark.slow
def test_pruning_really_happens(url: str, tmp_path: Path) -> None:
    # Good configurations first, then hopeless ones (tiny lr, everything frozen): the median pruner
    # must stop the hopeless ones after their first epoch, leaving them PRUNED with their curves.
    study = _create(
        url,
        tmp_path,
        "pruner.n_startup_trials=2",
        "pruner.n_warmup_steps=0",
        n_trials=4,
        epochs=3,
        pruner="median",
        lr_low=1e-6,
        lr_high=1e-1,
    )
    good = {"lr": 3e-3, "batch_size": 32, "frozen_layers": 0, "aug_strength": 0.0}
    bad = {"lr": 1e-6, "batch_size": 64, "frozen_layers": 5, "aug_strength": 1.0}
    for params in (good, good, bad, bad):
        study.enqueue_trial(params)
    run_worker("tiny", storage_url=url, device="cpu")
    states = [t.state for t in study.trials]
    assert states[:2] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert states[2:] == [TrialState.PRUNED, TrialState.PRUNED]
    for t in study.trials[2:]:
        assert list(t.intermediate_values) == [1]
        assert t.user_attrs["epochs_run"] == 1


@pytest.mark.slow
def test_the_auto_pruner_prunes_in_a_real_worker(url: str, tmp_path: Path) -> None:
    # Three configs of different quality finish; their epoch-1 values rank like their ends, so the
    # auto pruner puts a rung at epoch 1 and stops the hopeless config there.
    study = _create(
        url,
        tmp_path,
        "pruner.min_complete=3",
        "pruner.margin_se=0.0",
        n_trials=4,
        epochs=3,
        pruner="auto",
        lr_low=1e-6,
        lr_high=1e-1,
    )
    configs = [
        {"lr": 3e-3, "batch_size": 32, "frozen_layers": 0, "aug_strength": 0.0},
        {"lr": 1e-4, "batch_size": 32, "frozen_layers": 3, "aug_strength": 0.0},
        {"lr": 1e-5, "batch_size": 64, "frozen_layers": 4, "aug_strength": 0.0},
        {"lr": 1e-6, "batch_size": 64, "frozen_layers": 5, "aug_strength": 1.0},
    ]
    for params in configs:
        study.enqueue_trial(params)
    run_worker("tiny", storage_url=url, device="cpu")
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    assert list(trials[3].intermediate_values) == [1]


def test_oom_fails_the_trial_records_constraint_and_worker_continues(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = _create(url, tmp_path, n_trials=2, epochs=1)
    real_fit = sweep.train.fit
    calls = {"n": 0}

    def fit_with_fault(*args: object, **kwargs: object) -> object:  # test-only fault hook
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(sweep.train, "fit", fit_with_fault)
    summary = run_worker("tiny", storage_url=url, device="cpu")
    assert summary.trials == 2
    first, second = study.trials
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"] == "oom"
    assert "OutOfMemoryError" in first.user_attrs["traceback"]
    assert first.constraints == {"oom": 1.0}
    assert second.state == TrialState.COMPLETE


def test_divergence_prunes_with_reason(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = _create(url, tmp_path, n_trials=1, epochs=2)

    def diverging_fit(*args: object, **kwargs: object) -> object:
        raise sweep.train.Diverged("loss is nan at epoch 1")

    monkeypatch.setattr(sweep.train, "fit", diverging_fit)
    run_worker("tiny", storage_url=url, device="cpu")
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["fail_reason"] == "diverged"


def test_other_errors_fail_with_traceback_and_worker_continues(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = _create(url, tmp_path, n_trials=2, epochs=1)

    def broken_fit(*args: object, **kwargs: object) -> object:
        raise RuntimeError("something broke")

    monkeypatch.setattr(sweep.train, "fit", broken_fit)
    summary = run_worker("tiny", storage_url=url, device="cpu")
    assert summary.trials == 2 and summary.states["FAIL"] == 2
    for t in study.trials:
        assert t.user_attrs["fail_reason"] == "error"
        assert "something broke" in t.user_attrs["traceback"]


def test_after_an_oom_the_failed_model_is_freed_before_the_caches_are_cleared(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = _create(url, tmp_path, n_trials=2, epochs=1)
    real_fit, real_clear = sweep.train.fit, sweep.train.clear_caches
    models: list[weakref.ref[torch.nn.Module]] = []
    alive_at_clear: list[bool] = []

    def fit_that_ooms(*args: object, **kwargs: object) -> object:
        if not models:
            model = torch.nn.Linear(64, 64)  # what the traceback's frames would keep on the GPU
            models.append(weakref.ref(model))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_fit(*args, **kwargs)

    def clear_caches() -> None:
        alive_at_clear.append(models[0]() is not None)
        real_clear()

    monkeypatch.setattr(sweep.train, "fit", fit_that_ooms)
    monkeypatch.setattr(sweep.train, "clear_caches", clear_caches)
    summary = run_worker("tiny", storage_url=url, device="cpu")
    assert alive_at_clear == [False]  # cleared once, after the failed trial's model was gone
    assert summary.states == {"FAIL": 1, "COMPLETE": 1}
    assert study.trials[0].user_attrs["fail_reason"] == "oom"


@pytest.mark.parametrize(
    ("message", "oom"),
    [
        ("CUDA out of memory. Tried to allocate 20.00 MiB", True),
        ("cuDNN error: CUDNN_STATUS_ALLOC_FAILED", True),
        ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", True),
        ("CUDA error: an illegal memory access was encountered", False),
        ("mat1 and mat2 shapes cannot be multiplied", False),
    ],
)
def test_oom_is_recognised_in_cudnn_and_cublas_words(message: str, oom: bool) -> None:
    assert _is_oom(RuntimeError(message)) == oom


def test_a_broken_cuda_context_hands_the_trial_back_and_stops_the_worker(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = _create(url, tmp_path, n_trials=2, epochs=1)
    calls = []

    def broken_gpu(*args: object, **kwargs: object) -> object:  # every CUDA call fails from now on
        calls.append(1)
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(sweep.train, "fit", broken_gpu)
    summary = run_worker("tiny", storage_url=url, device="cpu")
    assert calls == [1] and summary.trials == 1  # no second trial taken
    assert summary.device_lost and "illegal memory access" in summary.device_lost
    first, retry = study.trials
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"] == "device"
    assert retry.state == TrialState.WAITING and retry.params == first.params  # not counted
    # The retry breaks a (fresh) context again: it is the likelier culprit and fails for good.
    summary = run_worker("tiny", storage_url=url, device="cpu")
    assert summary.device_lost and len(study.trials) == 2
    assert study.trials[1].state == TrialState.FAIL and "failed_trial" in study.trials[1].system_attrs
    monkeypatch.undo()
    # The trial that failed for good has spent one of the two; the handed-back attempt spent none.
    assert run_worker("tiny", storage_url=url, device="cpu").trials == 1
    assert [t.state for t in study.trials[2:]] == [TrialState.COMPLETE]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["lost", "corrupt"])
def test_a_retry_whose_checkpoint_is_lost_says_so_and_trains_from_scratch(
    url: str, tmp_path: Path, damage: str
) -> None:
    # A worker stopped after epoch 2 hands its trial back with a checkpoint; the artifacts folder is
    # then lost (not shared with the next worker) or the file damaged. The retry must say why it
    # starts over, train every epoch, and not print Optuna's "already reported" warning for the
    # epochs it retrains.
    import shutil
    import warnings

    from sweep.objective import StopFlag
    from sweep.service import WorkerEvents

    study = _create(url, tmp_path, n_trials=1, epochs=3)
    artifacts = tmp_path / "artifacts"
    stop = StopFlag()

    def epoch_done(number: int, epoch: int, epochs: int, acc: float, secs: float) -> None:
        if epoch == 2:
            stop.set()

    first = run_worker(
        "tiny",
        storage_url=url,
        device="cpu",
        artifacts=str(artifacts),
        stop=stop,
        events=WorkerEvents(epoch_done=epoch_done),
    )
    assert first.trials == 1
    (handed_back,) = [t for t in study.trials if t.state == TrialState.WAITING]
    assert handed_back.user_attrs["checkpoint"]["epoch"] == 2 and sorted(handed_back.intermediate_values) == [1, 2]
    if damage == "lost":
        shutil.rmtree(artifacts)
    else:
        (checkpoint,) = [f for f in artifacts.iterdir() if f.is_file()]
        checkpoint.write_bytes(b"not a checkpoint")

    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_worker(
            "tiny",
            storage_url=url,
            device="cpu",
            artifacts=str(artifacts),
            events=WorkerEvents(message=messages.append),
        )
    assert not [w for w in caught if "already reported" in str(w.message)]
    assert any("cannot be read (epoch 2:" in m and "training from epoch 0" in m for m in messages), messages
    (done,) = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(done.intermediate_values) == [1, 2, 3] and done.user_attrs["resumed_from_epoch"] == 0
    assert done.user_attrs["epochs_run"] == 3 and len(done.user_attrs["epoch_seconds"]) == 3


def test_anytime_rung_values_are_recorded_and_the_chosen_one_reported(url: str, tmp_path: Path) -> None:
    study = _create(
        url,
        tmp_path,
        "train.schedule=wsd",
        "train.cooldown_epochs=0.5",
        "train.ema_halflife=0.5",
        "train.rung_value=ema",
        n_trials=1,
        epochs=2,
    )
    run_worker("tiny", storage_url=url, device="cpu")
    (t,) = study.trials
    assert t.state == TrialState.COMPLETE
    first, last = t.user_attrs["rung_values"]
    assert t.intermediate_values[1] == first["ema"] and first["trunk"] is not None  # the pruner saw the EMA
    assert first["cooldown"] is not None and first["cooldown_steps"] > 0  # charged: recorded per epoch
    assert last["cooldown"] is None and last["cooldown_steps"] == 0 and t.value == last["trunk"]
