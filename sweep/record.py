"""What sweep stores on trials and studies: every attribute's name, the type of its value and why it is kept.

Optuna keeps user attributes as JSON under a string key. The workers write them, and the report,
``sweep status``, the trackers, the exports and the benchmarks read them back: the names live here
and nowhere else, so a reader cannot miss a writer's spelling (``tests/test_record.py`` keeps string
keys out of every other module). The readers below turn whatever a database holds (an older sweep's
trial, a hand-edited one) into a value of the declared type or a plain default, so no caller needs
its own ``user_attrs.get(name, default)``.

Names and values are a storage format: databases already written (``benchmarks/tables/*.db`` among
them) must keep reading the same, so a name here never changes. No torch, no typer: the report and
``sweep status`` import this module.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol


class Reason(enum.StrEnum):
    """Why a trial was pruned or failed: the value its ``fail_reason`` attribute holds (the objective
    writes it, the report and the benches read it back)."""

    DIVERGED = "diverged"  # NaN/inf loss: pruned
    OOM = "oom"
    ERROR = "error"
    DEVICE = "device"  # the CUDA context broke (see objective.DeviceLost)
    STOPPED = "stopped"  # SIGTERM/SIGINT: handed back after the epoch
    DISK_FULL = "disk_full"  # ENOSPC/EDQUOT outside the checkpoints (those only warn): handed back
    # ``sweep pause``: handed back like a stop (stored as "stopped": the objective sees one flag,
    # only the worker knows which of the two set it).
    PAUSED = "paused"
    # A peer failed the trial while this worker could not reach the database (no heartbeat for longer
    # than the grace period) and re-queued it: nothing more is written to it; its checkpoint stays.
    LOST = "lost"


class Scope(enum.StrEnum):
    """Where an attribute is stored."""

    TRIAL = "trial user attribute"  # a retry inherits its predecessor's (Optuna copies them)
    TRIAL_SYSTEM = "trial system attribute"  # written by Optuna, read by sweep
    STUDY = "study user attribute"


@dataclass(frozen=True)
class Attr:
    """One stored attribute: its key, the Python type of its value, where it is stored and why."""

    name: str
    type: Any  # as written; JSON gives a tuple back as a list
    scope: Scope
    why: str


_T, _S, _Y = Scope.TRIAL, Scope.TRIAL_SYSTEM, Scope.STUDY

# --------------------------------------------------------------------------- trials: where and on what (objective)
HOST: Final = Attr("host", str, _T, "the machine of the trial's last attempt")
DEVICE: Final = Attr("device", str, _T, "torch device it trained on ('cuda:0', 'cpu')")
GPU_NAME: Final = Attr("gpu_name", str, _T, "the CUDA device's name; only on a GPU")
SEED: Final = Attr("seed", int, _T, "training seed; a retry keeps its original's")
DATA_FINGERPRINT: Final = Attr("data_fingerprint", str, _T, "which data it trained on")
TRAIN_IMAGES: Final = Attr("train_images", int, _T, "size of its training split")
VAL_IMAGES: Final = Attr("val_images", int, _T, "size of its validation split: the noise floor of its accuracy")
PRECISION: Final = Attr("precision", str, _T, "what it computed in ('bf16', 'fp32'): an export runs in fp32")
WEIGHTS_SHA256: Final = Attr("weights_sha256", str, _T, "the backbone file by content; only with a weights file")
RESUMED_FROM_EPOCH: Final = Attr("resumed_from_epoch", int, _T, "a retry's first epoch: those before are inherited")

# --------------------------------------------------------------------------- trials: what happened (objective)
EPOCHS_RUN: Final = Attr("epochs_run", int, _T, "epochs trained so far, inherited ones included")
EPOCH_SECONDS: Final = Attr("epoch_seconds", list[float], _T, "seconds of each epoch: the trial's compute cost")
RUNG_VALUES: Final = Attr(
    "rung_values",
    list[dict[str, Any]],
    _T,
    "per epoch, the rung-value candidates an EMA or wsd cooldown run measured: {trunk, ema, cooldown, cooldown_steps}",
)
DURATION_S: Final = Attr("duration_s", float, _T, "wall seconds of its last attempt, set-up included")
TEST_ACCURACY: Final = Attr("test_accuracy", float, _T, "test-split accuracy once it completed")
FAIL_REASON: Final = Attr("fail_reason", str, _T, "why it was pruned or failed (a Reason); None once retried")
TRACEBACK: Final = Attr("traceback", str, _T, "the last 4000 characters of a training error's traceback")
DEVICE_LOST: Final = Attr("device_lost", int, _T, "CUDA contexts it broke: a second one fails it for good")
CHECKPOINT: Final = Attr("checkpoint", dict[str, Any], _T, "{artifact_id, epoch} of its newest checkpoint; None after")
FINAL_MODEL: Final = Attr("final_model", dict[str, Any], _T, "{artifact_id, path} of its final weights (sweep.kept)")

# --------------------------------------------------------------------------- trials: who ran it, where it came from
RETRY_OF: Final = Attr("retry_of", int, _T, "the number of the trial it retries (worker)")
PID: Final = Attr("pid", int, _T, "the worker process that ran it")
ENVIRONMENT: Final = Attr("environment", dict[str, Any], _T, "library versions and git commit of its worker")
WARM_START_FROM: Final = Attr("warm_start_from", str, _T, "'STUDY#N': a copy of an earlier study's trial")
ENQUEUED: Final = Attr("enqueued", bool, _T, "its config came from `sweep enqueue`, not the sampler")
FAILED_TRIAL: Final = Attr(
    "failed_trial", int, _S, "the trial it re-runs (Optuna's RetryHeartbeatStaleTrialCallback): not counted twice"
)

# --------------------------------------------------------------------------- studies
SPEC: Final = Attr("spec", dict[str, Any], _Y, "the resolved spec `sweep create` stored")
SPEC_FINGERPRINT: Final = Attr(
    "spec_fingerprint", str, _Y, "a short hash of the spec, for people comparing studies (sweep compares whole specs)"
)
CONTROL: Final = Attr("control", str, _Y, "'running', 'paused' or 'stopped' (sweep.control)")
N_TRIALS: Final = Attr("n_trials", int, _Y, "the budget `sweep extend` set; without it the spec's")
KEPT_MODELS: Final = Attr("kept_models", list[dict[str, Any]], _Y, "the kept models, best first (sweep.kept)")

# --------------------------------------------------------------------------- studies of the benchmarks (sweep_bench)
LIVE_SECONDS: Final = Attr("live_seconds", float, _Y, "bench live: seconds the run trained")
LIVE_BUDGET_EPOCHS: Final = Attr("live_budget_epochs", int, _Y, "bench live: its epoch budget; written last: finished")
BUDGET: Final = Attr("budget", int, _Y, "bench scale: trials its simulated workers share")

ALL: Final[tuple[Attr, ...]] = tuple(v for v in tuple(globals().values()) if isinstance(v, Attr))


# --------------------------------------------------------------------------- readers


class Attributed(Protocol):
    """A live trial, a frozen one or a study: anything with user attributes."""

    @property
    def user_attrs(self) -> dict[str, Any]: ...


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _float(value: Any) -> float | None:
    return float(value) if _number(value) else None


def _int(value: Any) -> int | None:
    return int(value) if _number(value) else None


def _text(value: Any) -> str:
    return str(value) if value else ""


def _dict(value: Any) -> dict[str, Any] | None:
    return dict(value) if isinstance(value, Mapping) else None


def host(trial: Attributed) -> str:
    """The machine of the trial's last attempt ("" before it started)."""
    return _text(trial.user_attrs.get(HOST.name))


def device(trial: Attributed) -> str:
    """The torch device it trained on ("" before it started)."""
    return _text(trial.user_attrs.get(DEVICE.name))


def gpu_name(trial: Attributed) -> str:
    """The CUDA device's name ("" off a GPU)."""
    return _text(trial.user_attrs.get(GPU_NAME.name))


def seed(trial: Attributed) -> int | None:
    """Its training seed (None before it started)."""
    return _int(trial.user_attrs.get(SEED.name))


def val_images(trial: Attributed) -> int | None:
    """Size of its validation split (None before it started)."""
    return _int(trial.user_attrs.get(VAL_IMAGES.name))


def precision(trial: Attributed) -> str | None:
    """What it computed in (None before it was recorded)."""
    value = trial.user_attrs.get(PRECISION.name)
    return value if isinstance(value, str) else None


def weights_sha256(trial: Attributed) -> str:
    """The backbone file's SHA-256 ("" without a weights file)."""
    return _text(trial.user_attrs.get(WEIGHTS_SHA256.name))


def resumed_from_epoch(trial: Attributed) -> int:
    """A retry's first epoch (0: trained from scratch)."""
    return _int(trial.user_attrs.get(RESUMED_FROM_EPOCH.name)) or 0


def epochs_run(trial: Attributed) -> int | None:
    """Epochs trained so far (None: none recorded)."""
    return _int(trial.user_attrs.get(EPOCHS_RUN.name))


def epoch_seconds(trial: Attributed) -> list[float]:
    """Seconds of each epoch trained, as stored; anything but a finite number is left out."""
    value = trial.user_attrs.get(EPOCH_SECONDS.name)
    return [s for s in value if _number(s)] if isinstance(value, (list, tuple)) else []


def rung_values(trial: Attributed) -> list[dict[str, Any]]:
    """Per epoch, the rung-value candidates it measured ([] when it measured none)."""
    value = trial.user_attrs.get(RUNG_VALUES.name)
    return [e for e in value if isinstance(e, dict)] if isinstance(value, (list, tuple)) else []


def duration_s(trial: Attributed) -> float | None:
    """Wall seconds of its last attempt (None while it runs)."""
    return _float(trial.user_attrs.get(DURATION_S.name))


def test_accuracy(trial: Attributed) -> float | None:
    """Its test-split accuracy (None unless it completed)."""
    return _float(trial.user_attrs.get(TEST_ACCURACY.name))


def fail_reason(trial: Attributed) -> str:
    """Why it was pruned or failed ("" when it was not, or the pruner pruned it); as stored, so a reason
    this sweep does not know (a newer one's) still shows. Compare it with a ``Reason``."""
    return _text(trial.user_attrs.get(FAIL_REASON.name))


def diverged(trial: Attributed) -> bool:
    """Whether it was stopped by its own NaN/inf loss, not by the pruner."""
    return fail_reason(trial) == Reason.DIVERGED


def traceback(trial: Attributed) -> str:
    """Its training error's traceback ("" without one)."""
    return _text(trial.user_attrs.get(TRACEBACK.name))


def device_lost(trial: Attributed) -> int:
    """How many CUDA contexts it broke."""
    return _int(trial.user_attrs.get(DEVICE_LOST.name)) or 0


def checkpoint(trial: Attributed) -> dict[str, Any] | None:
    """{artifact_id, epoch} of its newest checkpoint (None: none stored, or removed)."""
    return _dict(trial.user_attrs.get(CHECKPOINT.name))


def final_model(trial: Attributed) -> dict[str, Any] | None:
    """{artifact_id, path} of its final weights (None: none stored)."""
    return _dict(trial.user_attrs.get(FINAL_MODEL.name))


def retry_of(trial: Attributed) -> int | None:
    """The number of the trial it retries (None: a first attempt)."""
    value = trial.user_attrs.get(RETRY_OF.name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def environment(trial: Attributed) -> dict[str, Any]:
    """Library versions and git commit of the worker that ran it ({} before it started)."""
    return _dict(trial.user_attrs.get(ENVIRONMENT.name)) or {}


def warm_start_from(trial: Attributed) -> str:
    """'STUDY#N' of the trial it copies ("" for a trial of its own)."""
    return _text(trial.user_attrs.get(WARM_START_FROM.name))


def spec(study_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The stored spec, as a plain dict ({} for a study not made by ``sweep create``)."""
    return _dict(study_attrs.get(SPEC.name)) or {}
