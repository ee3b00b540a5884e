"""The trial objective: the one place where Optuna meets torch.

params (from the sampler) → TrainConfig → ``train.fit`` with a per-epoch callback that reports
validation accuracy to the pruner, records per-epoch timings and honours a graceful stop. Every
ending comes back as a ``TrialOutcome`` (state, value, reason) for the worker to tell the storage;
the reason is also stored on the trial (``fail_reason``) for the report to show.
"""

from __future__ import annotations

import contextlib
import enum
import os
import socket
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from sweep import record
from sweep.artifacts import disk_full
from sweep.outage import DatabaseUnavailable
from sweep.record import Reason
from sweep.search import suggest_params
from sweep.show import first_line
from sweep.spec import StudySpec

if TYPE_CHECKING:
    from sweep.data import DataBundle
    from sweep.train import EpochResult, FitResult, TrainConfig


class Ending(enum.StrEnum):
    """The state a trial is told to the storage in (equal to the name of Optuna's TrialState)."""

    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"


@dataclass(frozen=True)
class TrialOutcome:
    """How one trial ended: what the worker tells the storage and shows."""

    state: Ending
    value: float | None = None  # COMPLETE: the final validation accuracy
    cause: Reason | None = None  # PRUNED/FAIL: why (None: pruned by the pruner)
    detail: str = ""  # ERROR/DEVICE: the error's first line
    # FAIL: the same params go back to the queue (a stop, a pause, a first broken CUDA context).
    hand_back: bool = False
    # Writes that failed on a full disk (ENOSPC, EDQUOT) during the trial: checkpoints, the final model.
    disk_errors: int = 0

    @property
    def reason(self) -> str | None:
        """The cause as the worker prints it (one line)."""
        if self.cause is Reason.ERROR:
            return f"error: {self.detail}"
        if self.cause is Reason.DEVICE:
            how = "handed back" if self.hand_back else "second broken context: failed for good"
            return f"device lost, {how}: {self.detail}"
        if self.cause is Reason.DISK_FULL:
            return f"disk full, handed back: {self.detail}"
        if self.cause is Reason.LOST:
            return (
                "failed meanwhile by another worker, as this one's heartbeats had not reached the database "
                "for longer than the grace period; its checkpoint stays for the retry"
            )
        return None if self.cause is None else self.cause.value

    @property
    def oom(self) -> bool:
        return self.cause is Reason.OOM

    @property
    def device_lost(self) -> bool:
        return self.cause is Reason.DEVICE


LOST = TrialOutcome(Ending.FAIL, cause=Reason.LOST)


def lost_to_a_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a write refused because the trial is finished: a peer failed it as stale."""
    return isinstance(exc, optuna.exceptions.UpdateFinishedTrialError)


class StopRequested(Exception):
    """Raised at an epoch boundary after SIGTERM/SIGINT: the trial goes back to the queue."""


@dataclass
class Progress:
    """Callbacks the worker's display implements; every one is optional."""

    trial_started: Callable[[int, dict[str, Any]], None] = lambda number, params: None
    message: Callable[[str], None] = lambda text: None
    epoch_done: Callable[[int, int, int, float, float], None] = lambda number, epoch, epochs, acc, secs: None


@dataclass
class StopFlag:
    """Set by a signal handler; checked at the end of every epoch."""

    event: threading.Event = field(default_factory=threading.Event)

    def set(self) -> None:
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()


class Checkpoints:
    """The latest epoch checkpoint of one trial, in an Optuna artifact store.

    Only the newest checkpoint is kept (the previous one is removed after the new one is stored),
    and it is removed when the trial ends for good. A trial handed back (SIGTERM) or re-queued after
    its worker died keeps it: the retry, which inherits the trial's user attributes, resumes from it.
    A checkpoint that cannot be written (a full disk) is a warning, not the trial's end: the trial
    trains on and its retry would resume from the last one stored. A file stored but not recorded on
    the trial (a peer failed it meanwhile) is removed at once.
    """

    def __init__(
        self, trial: optuna.Trial, store: Any | None, every: int = 1, warn: Callable[[str], None] = lambda text: None
    ) -> None:
        self.trial = trial
        self.store = store
        self.every = every
        self.warn = warn
        self.current: dict[str, Any] | None = record.checkpoint(trial) if store is not None else None
        self.lost: str | None = None  # why an inherited checkpoint could not be read
        self.failed = 0  # checkpoints that could not be written (the first one is warned about)
        self.disk_errors = 0  # writes that failed on a full disk: the worker stops after a few

    def load(self) -> dict | None:
        """The inherited checkpoint's state (on the CPU), or None to start from scratch."""
        if self.store is None or not self.current:
            return None
        import torch
        from optuna.artifacts import download_artifact

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "ckpt.pt")
            try:
                download_artifact(artifact_store=self.store, file_path=path, artifact_id=self.current["artifact_id"])
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # lost or unreadable: start over rather than fail the retry
                self.lost = f"epoch {self.current.get('epoch')}: {first_line(exc)}"
                self.current = None
                return None

    def save(self, state: dict, epoch: int) -> None:
        """Store ``state`` as the trial's checkpoint after ``epoch`` (every ``every`` epochs)."""
        if self.store is None or self.every <= 0 or epoch % self.every:
            return
        try:
            artifact_id = self._upload(state, f"trial{self.trial.number}-epoch{epoch}.pt")
        except Exception as exc:  # noqa: BLE001 - a checkpoint is insurance: the trial itself goes on
            if lost_to_a_peer(exc):
                raise
            self.write_failed(exc)
            if self.failed == 1:
                since = f"epoch {self.current['epoch']}" if self.current else "scratch"
                self.warn(
                    f"trial {self.trial.number}: checkpoint after epoch {epoch} not stored ({first_line(exc)});"
                    f" training goes on, a retry would start from {since} (said once per trial)"
                )
            return
        previous = self.current
        self._record(record.CHECKPOINT, {"artifact_id": artifact_id, "epoch": epoch}, artifact_id)
        self.current = {"artifact_id": artifact_id, "epoch": epoch}
        self._remove(previous)

    def write_failed(self, exc: BaseException) -> None:
        """Count a write that failed (a full disk separately)."""
        self.failed += 1
        self.disk_errors += disk_full(exc)

    def _upload(self, payload: dict, name: str) -> str:
        """Store ``payload`` (torch.save) as a new artifact of the trial; its artifact id."""
        import torch
        from optuna.artifacts import upload_artifact

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, name)
            # Through a Python file: a full disk then surfaces as OSError (ENOSPC) under torch's error,
            # which disk_full finds; given a path, torch's own writer reports only "file write failed".
            with open(path, "wb") as fh:
                torch.save(payload, fh)
            return upload_artifact(artifact_store=self.store, file_path=path, study_or_trial=self.trial)

    def _record(self, attr: record.Attr, value: dict[str, Any], artifact_id: str) -> None:
        """Point the trial at a file just stored; a file no trial points at is removed at once."""
        try:
            self.trial.set_user_attr(attr.name, value)
        except BaseException:
            # E.g. a peer failed the trial meanwhile: the retry keeps the files it inherited.
            self._remove({"artifact_id": artifact_id})
            raise

    def discard(self) -> None:
        """The trial is over: its checkpoint is no longer needed."""
        if self.current:
            # The reference first: when a peer has failed the trial meanwhile this write is refused,
            # and the file stays for the retry, which inherited the reference.
            self.trial.set_user_attr(record.CHECKPOINT.name, None)
            self._remove(self.current)
            self.current = None

    def store_final(self, payload: dict) -> dict[str, Any] | None:
        """Upload a completed trial's final model and record it on the trial (``final_model``).

        Recorded before the trial is told COMPLETE, so a completed trial never lacks its model;
        ``sweep.kept.reconcile`` removes it again unless the trial is among the study's best.
        Returns the record, or None without a store.
        """
        if self.store is None:
            return None
        from sweep.objectstore import location_of

        artifact_id = self._upload(payload, f"trial{self.trial.number}-final.pt")
        stored = {"artifact_id": artifact_id, "path": location_of(self.store, artifact_id)}
        self._record(record.FINAL_MODEL, stored, artifact_id)
        return stored

    def _remove(self, ckpt: dict[str, Any] | None) -> None:
        if self.store is not None and ckpt:
            with contextlib.suppress(Exception):  # already gone (another retry cleaned up)
                self.store.remove(ckpt["artifact_id"])


def train_config(spec: StudySpec, params: dict[str, Any], *, num_classes: int, seed: int) -> TrainConfig:
    """Spec + one trial's params → the TrainConfig the training code understands."""
    from sweep.train import TrainConfig

    return TrainConfig(
        arch=spec.model.arch,
        weights=spec.model.weights,
        stem=params["stem"],
        num_classes=num_classes,
        epochs=spec.epochs,
        lr=float(params["lr"]),
        batch_size=int(params["batch_size"]),
        frozen_layers=int(params["frozen_layers"]),
        aug_strength=float(params["aug_strength"]),
        weight_decay=float(params["weight_decay"]),
        label_smoothing=float(params["label_smoothing"]),
        seed=seed,
        resolution=int(params["resolution"]),
        eval_batch_size=spec.train.eval_batch_size,
        compile=spec.train.compile,
        precision=spec.train.precision,
        schedule=spec.train.schedule,
        decay_fraction=spec.train.decay_fraction,
        cooldown_epochs=spec.train.cooldown_epochs,
        ema_halflife=spec.train.ema_halflife,
        rung_value=spec.train.rung_value,
    )


def trial_seed(spec: StudySpec, number: int) -> int:
    """Training seed of a trial, from the study seed and the trial's (original) number."""
    return spec.seed * 100_003 + number


# cuDNN and cuBLAS report a failed workspace or handle allocation in their own words.
_OOM_MARKERS = ("out of memory", "cudnn_status_alloc_failed", "cublas_status_alloc_failed")
# CUDA's sticky errors: after one of these the context is unusable until the process exits.
_DEVICE_LOST_MARKERS = (
    "device-side assert",
    "illegal memory access",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
    "uncorrectable ecc error",
    "hardware stack error",
    "invalid program counter",
)


def _is_oom(exc: BaseException) -> bool:
    import torch

    text = str(exc).lower()
    return isinstance(exc, torch.cuda.OutOfMemoryError) or any(m in text for m in _OOM_MARKERS)


def _is_device_lost(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(m in text for m in _DEVICE_LOST_MARKERS)


def run_trial(
    trial: optuna.Trial,
    spec: StudySpec,
    data: DataBundle,
    device: str,
    *,
    stop: StopFlag | None = None,
    progress: Progress | None = None,
    original_number: int | None = None,
    artifacts: Any | None = None,
) -> TrialOutcome:
    """Run one trial to the end; return how it ended (the caller tells the storage).

    Training errors become outcomes, after ``fail_reason`` (and ``traceback``) are recorded on the
    trial; an error outside training (sampling, the storage) propagates. With an artifact store, the
    trial is checkpointed after every epoch and a retried trial resumes from its predecessor's last
    checkpoint (same params, same seed, the epoch counter continues).
    """
    from sweep.train import fit

    progress = progress or Progress()
    params = suggest_params(trial, spec)
    # A retried trial keeps the seed of the trial it replaces.
    seed = trial_seed(spec, trial.number if original_number is None else original_number)
    config = train_config(spec, params, num_classes=data.num_classes, seed=seed)
    started = time.time()
    checkpoints = Checkpoints(trial, artifacts, every=spec.train.checkpoint_every, warn=progress.message)
    resume = checkpoints.load()
    resumed_epoch = int(resume["epoch"]) if resume is not None else 0
    on_epoch = _EpochHook(
        trial,
        spec,
        checkpoints,
        progress,
        stop,
        _epoch_seconds_before(trial, resumed_epoch),
        retry=original_number is not None,
    )
    _record_setup(trial, config, data, device, resumed_epoch=None if original_number is None else resumed_epoch)
    progress.trial_started(trial.number, {k: params[k] for k in spec.params})
    if resumed_epoch:
        progress.message(
            f"trial {trial.number}: resuming from epoch {resumed_epoch} (checkpoint of trial {original_number})"
        )
    elif checkpoints.lost:
        progress.message(
            f"trial {trial.number}: the checkpoint of trial {original_number} cannot be read "
            f"({checkpoints.lost}); training from epoch 0. Is --artifacts shared by all workers?"
        )
    # _ended_early returns: the exception, whose traceback holds fit's model and optimizer, is
    # dropped before the caller frees memory after an OOM.
    try:
        result = fit(config, data, device, on_epoch=on_epoch, resume=resume)
    except DatabaseUnavailable:
        raise  # nothing can be recorded: the trial stays RUNNING and is retried from its checkpoint
    except Exception as exc:
        outcome = _ended_early(trial, exc, checkpoints, started)
    else:
        checkpoints.discard()
        _finish(trial, started)
        trial.set_user_attr(record.TEST_ACCURACY.name, result.test_accuracy)
        if on_epoch.final_model is not None:
            _store_final_model(checkpoints, on_epoch.final_model, config, data, progress)
        outcome = TrialOutcome(Ending.COMPLETE, value=result.val_accuracy)
    return replace(outcome, disk_errors=outcome.disk_errors + checkpoints.disk_errors)


def _epoch_seconds_before(trial: optuna.Trial, resumed_epoch: int) -> list[float]:
    """The per-epoch timings a retry inherits, up to the epoch it resumes from."""
    return record.epoch_seconds(trial)[:resumed_epoch]


def _record_setup(
    trial: optuna.Trial, config: TrainConfig, data: DataBundle, device: str, *, resumed_epoch: int | None
) -> None:
    """Record where and on what the trial trains (``resumed_epoch``: a retry's starting epoch)."""
    import torch

    from sweep.model import weights_sha256
    from sweep.train import resolve_precision

    # A retry inherits its predecessor's attributes: keep the per-epoch history, drop the failure.
    for stale in (record.FAIL_REASON, record.TRACEBACK, record.TEST_ACCURACY, record.FINAL_MODEL):
        if stale.name in trial.user_attrs:
            trial.set_user_attr(stale.name, None)
    if resumed_epoch is not None:
        trial.set_user_attr(record.RESUMED_FROM_EPOCH.name, resumed_epoch)
    trial.set_user_attr(record.HOST.name, socket.gethostname())
    trial.set_user_attr(record.DEVICE.name, device)
    trial.set_user_attr(record.SEED.name, config.seed)
    trial.set_user_attr(record.DATA_FINGERPRINT.name, data.fingerprint)
    trial.set_user_attr(record.TRAIN_IMAGES.name, len(data.train_y))
    trial.set_user_attr(record.VAL_IMAGES.name, len(data.val_y))
    trial.set_user_attr(record.PRECISION.name, resolve_precision(torch.device(device), config.precision, config.stem))
    if (sha := weights_sha256(config.weights)) is not None:
        trial.set_user_attr(record.WEIGHTS_SHA256.name, sha)
    if device.startswith("cuda"):
        trial.set_user_attr(record.GPU_NAME.name, torch.cuda.get_device_name(torch.device(device)))


class _EpochHook:
    """``fit``'s per-epoch callback for one trial: report to the pruner, record timings, checkpoint,
    honour a graceful stop, and keep the final weights when the study keeps its best models."""

    def __init__(
        self,
        trial: optuna.Trial,
        spec: StudySpec,
        checkpoints: Checkpoints,
        progress: Progress,
        stop: StopFlag | None,
        epoch_seconds: list[float],
        *,
        retry: bool = False,
    ) -> None:
        self.trial = trial
        self.retry = retry  # a retry may retrain epochs its predecessor reported
        self.spec = spec
        self.checkpoints = checkpoints
        self.progress = progress
        self.stop = stop
        self.epoch_seconds = epoch_seconds
        t = spec.train
        self.anytime = t.ema_halflife > 0 or (t.schedule == "wsd" and t.cooldown_epochs > 0)
        # One entry per epoch like epoch_seconds, which a retry has already cut to its resumed epoch.
        self.rung_values: list[dict[str, Any]] = record.rung_values(trial)[: len(epoch_seconds)]
        self.keep_final = checkpoints.store is not None and spec.checkpoint.keep_best > 0
        self.final_model: dict | None = None  # CPU copies of the final weights (keep_final)

    def __call__(self, result: EpochResult, checkpoint: Callable[[], dict]) -> None:
        self._record(result)
        if result.epoch >= self.spec.epochs:
            if self.keep_final:
                self.final_model = checkpoint()["model"]
            return  # all epochs done: pruning now would save nothing and hide a finished result
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {result.epoch}")
        stopping = self.stop is not None and self.stop.is_set()
        if stopping:
            self.checkpoints.every = 1  # whatever the interval, the hand-back needs this epoch
        self.checkpoints.save(checkpoint(), result.epoch)
        if stopping:
            raise StopRequested(f"stopped after epoch {result.epoch}")

    def _record(self, result: EpochResult) -> None:
        trial = self.trial
        self.epoch_seconds.append(result.seconds)
        with warnings.catch_warnings() if self.retry else contextlib.nullcontext():
            # A retry retrains the epochs its predecessor reported after its last checkpoint (all of
            # them when the checkpoint was lost). Optuna keeps a step's first value and warns; the
            # first is as good (same params, same seed), so the warning only alarms the reader.
            if self.retry:
                warnings.filterwarnings("ignore", "The reported value is ignored", UserWarning)
            trial.report(result.val_accuracy, result.epoch)
        trial.set_user_attr(record.EPOCHS_RUN.name, result.epoch)
        trial.set_user_attr(record.EPOCH_SECONDS.name, list(self.epoch_seconds))
        if self.anytime:  # every rung-value candidate the run measured; the cooldown's steps are its extra cost
            self.rung_values.append(
                {
                    "trunk": result.trunk_accuracy,
                    "ema": result.ema_accuracy,
                    "cooldown": result.cooldown_accuracy,
                    "cooldown_steps": result.cooldown_steps,
                }
            )
            trial.set_user_attr(record.RUNG_VALUES.name, list(self.rung_values))
        self.progress.epoch_done(trial.number, result.epoch, self.spec.epochs, result.val_accuracy, result.seconds)


def _finish(trial: optuna.Trial, started: float, reason: Reason | None = None) -> None:
    """Record the trial's duration and, for a prune or failure with a cause, its ``fail_reason``."""
    trial.set_user_attr(record.DURATION_S.name, round(time.time() - started, 3))
    if reason is not None:
        trial.set_user_attr(record.FAIL_REASON.name, reason.value)


def _ended_early(trial: optuna.Trial, exc: Exception, checkpoints: Checkpoints, started: float) -> TrialOutcome:
    """The outcome of a ``fit`` that raised (called while ``exc`` is being handled)."""
    from sweep.train import Diverged

    if lost_to_a_peer(exc):
        return LOST  # nothing can be written to the trial any more; its checkpoint is the retry's
    if isinstance(exc, optuna.TrialPruned):
        checkpoints.discard()
        _finish(trial, started)
        return TrialOutcome(Ending.PRUNED)
    if isinstance(exc, Diverged):
        checkpoints.discard()
        _finish(trial, started, Reason.DIVERGED)
        return TrialOutcome(Ending.PRUNED, cause=Reason.DIVERGED)
    if isinstance(exc, StopRequested):
        _finish(trial, started, Reason.STOPPED)  # the checkpoint stays: the retry resumes from it
        return TrialOutcome(Ending.FAIL, cause=Reason.STOPPED, hand_back=True)
    trial.set_user_attr(record.TRACEBACK.name, traceback.format_exc()[-4000:])
    if _is_device_lost(exc):
        # Every later CUDA call in this process fails too: the worker must exit for a restart.
        # Keep the checkpoint: a handed-back trial resumes from it on a healthy worker. A trial
        # that already broke a context once is the likelier culprit than the GPU: it fails for good.
        lost = record.device_lost(trial) + 1
        trial.set_user_attr(record.DEVICE_LOST.name, lost)
        _finish(trial, started, Reason.DEVICE)
        return TrialOutcome(Ending.FAIL, cause=Reason.DEVICE, detail=first_line(exc), hand_back=lost == 1)
    if disk_full(exc):
        # Not the trial's fault and not the budget's: it goes back to the queue with its checkpoint,
        # and the worker, counting this, stops taking trials (service.worker).
        _finish(trial, started, Reason.DISK_FULL)
        return TrialOutcome(Ending.FAIL, cause=Reason.DISK_FULL, detail=first_line(exc), hand_back=True, disk_errors=1)
    checkpoints.discard()
    if _is_oom(exc):
        _finish(trial, started, Reason.OOM)
        # Optuna 5 constraint: samplers treat this region as infeasible from now on.
        trial.set_constraint("oom", 1.0)
        return TrialOutcome(Ending.FAIL, cause=Reason.OOM)
    _finish(trial, started, Reason.ERROR)
    return TrialOutcome(Ending.FAIL, cause=Reason.ERROR, detail=first_line(exc))


def _store_final_model(
    checkpoints: Checkpoints, model: dict, config: TrainConfig, data: DataBundle, progress: Progress
) -> None:
    """Store a completed trial's final model; a failure is reported, never raised."""
    try:
        checkpoints.store_final(final_model_payload(model, config, data))
    except Exception as exc:  # noqa: BLE001 - a full disk must not cost the trial its result
        if lost_to_a_peer(exc):
            raise
        checkpoints.write_failed(exc)
        progress.message(
            f"trial {checkpoints.trial.number}: final model not stored ({first_line(exc)}); its result "
            "is recorded, `sweep rerun` can train the model again"
        )


def gpu_visible() -> bool:
    """Whether this process sees a CUDA GPU."""
    import torch

    return torch.cuda.is_available()


def set_threads(n: int) -> None:
    """CPU threads torch uses in this process."""
    import torch

    torch.set_num_threads(n)


def free_memory() -> None:
    """Give a failed trial's cached device memory back (after its exception was dropped)."""
    from sweep import train  # looked up when called: tests replace train.clear_caches

    train.clear_caches()


def load_study_data(spec: StudySpec, cache_dir: Path) -> DataBundle:
    """The study's data on this machine (decoded once per machine into ``cache_dir``)."""
    from sweep.data import load_data

    d = spec.data
    return load_data(
        d.name,
        d.root,
        val_fraction=d.val_fraction,
        seed=spec.seed,
        resolution=d.resolution,
        subset=d.subset,
        cache_dir=cache_dir,
        classes=d.classes,
    )


def preflight(spec: StudySpec, cache_dir: Path) -> DataBundle:
    """Load the study's data and build its model once: a worker fails here, before taking a trial,
    rather than burning budget on trials that could never run (a DataError or WeightsError, both
    UserErrors: one line, exit 2)."""
    from sweep.model import build_model

    data = load_study_data(spec, cache_dir)
    build_model(spec.model.arch, weights=spec.model.weights, num_classes=data.num_classes)
    return data


@dataclass(frozen=True)
class Retrained:
    """A trial trained again outside the study: its result and, when asked for, its final model."""

    result: FitResult
    payload: dict[str, Any] | None  # what a kept model file holds (final_model_payload)


def retrain(
    spec: StudySpec,
    params: dict[str, Any],
    data: DataBundle,
    device: str,
    *,
    seed: int,
    precision: str | None = None,
    keep_final: bool = False,
    on_epoch: Callable[[int, int, float], None] = lambda epoch, epochs, acc: None,
) -> Retrained:
    """Train one trial's params from scratch, without a study (``sweep rerun``).

    ``precision`` overrides the study's ``train.precision``; ``keep_final`` returns the final weights
    as a kept model's payload.
    """
    import dataclasses

    from sweep.train import fit

    config = train_config(spec, params, num_classes=data.num_classes, seed=seed)
    if precision is not None:
        config = dataclasses.replace(config, precision=precision)
    final: dict[str, Any] = {}

    def epoch_done(r: EpochResult, checkpoint: Callable[[], dict]) -> None:
        if keep_final and r.epoch == spec.epochs:
            final["model"] = checkpoint()["model"]
        on_epoch(r.epoch, spec.epochs, r.val_accuracy)

    result = fit(config, data, device, on_epoch=epoch_done)
    payload = final_model_payload(final["model"], config, data) if keep_final else None
    return Retrained(result, payload)


FINAL_MODEL_FORMAT = 1


def final_model_payload(state: dict, config: TrainConfig, data: DataBundle) -> dict[str, Any]:
    """What a kept model file holds: the weights and everything ``sweep export`` needs to describe them
    (plain values and CPU tensors: loadable with ``weights_only=True``)."""
    import dataclasses

    from sweep.data import IMAGENET_MEAN, IMAGENET_STD

    return {
        "format": FINAL_MODEL_FORMAT,
        "model": state,
        "config": dataclasses.asdict(config),
        "classes": list(data.classes),
        "data_resolution": data.resolution,
        "data_fingerprint": data.fingerprint,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
