"""Fine-tune a ResNet on a :class:`~sweep.data.DataBundle`: ``fit`` = ``train_one_epoch`` + ``evaluate``.

Data stays on the device as uint8 for the whole run and batches are index slices of it (see
``sweep.data``). The frozen prefix of the network runs under ``no_grad`` with its BatchNorm layers in
eval mode, and when there is no augmentation its output never changes, so it is computed once and
the trainable rest is trained on those cached features. On CUDA: bf16 autocast, channels_last,
cudnn.benchmark and optionally torch.compile. On a CPU with native bf16 (AVX512-BF16 or AMX): bf16
autocast and channels_last too (about 3x faster for the CIFAR stem); elsewhere fp32. Either way a run
is deterministic on the CPU for a fixed seed.

Schedules: ``cosine`` (warmup, then cosine decay over the whole run) or ``wsd`` (warmup, constant lr,
linear decay over the last ``decay_fraction`` of the steps). Under ``wsd`` each epoch but the last can
also be scored as if training had ended there: a cooldown *branch* (the trunk's state copied, the lr
decayed to 0 over ``cooldown_epochs``, evaluated, the trunk restored bit for bit) and an exponential
moving average of the weights (``ema_halflife``, any schedule). ``EpochResult`` records every value.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import functools
import gc
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sweep.data import DataBundle, DeviceData, augment_view, batch_indices, clear_device_cache, device_data, normalize
from sweep.model import (
    build_model,
    freeze_prefix,
    set_train_mode,
    split_model,
    trainable_parameters,
)
from sweep.spec import check, check_rung_value, default

# Cached frozen-prefix features may use at most this much memory (and at most 40% of what is free
# on an accelerator); above it the prefix is simply run on every batch.
FEATURE_CACHE_MAX_BYTES = 4 << 30
CHECKPOINT_FORMAT = 1


class Diverged(Exception):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines one training run (together with the data).

    Defaults, bounds and their reasons are the spec's (``sweep.spec.SETTINGS``); only ``num_classes``
    (from the data) and ``seed`` (a trial's, derived from the study's) are not spec settings.
    """

    arch: str = default("model.arch")
    weights: str = default("model.weights")
    stem: str = default("train.stem")
    num_classes: int = 10
    epochs: int = default("epochs")
    lr: float = default("train.lr")
    batch_size: int = default("train.batch_size")
    frozen_layers: int = default("train.frozen_layers")
    aug_strength: float = default("train.aug_strength")
    weight_decay: float = default("train.weight_decay")
    label_smoothing: float = default("train.label_smoothing")
    seed: int = 0
    resolution: int = default("train.resolution")  # network input size; batches are resized on the device
    eval_batch_size: int = default("train.eval_batch_size")
    compile: bool = default("train.compile")
    precision: str = default("train.precision")  # "auto": bf16 where the device computes it natively, else fp32
    schedule: str = default("train.schedule")  # "cosine" or "wsd" (warmup, stable, decay)
    decay_fraction: float = default("train.decay_fraction")  # wsd: the final decay's share of all steps
    cooldown_epochs: float = default("train.cooldown_epochs")  # wsd: the cooldown branch after each epoch (0: none)
    ema_halflife: float = default("train.ema_halflife")  # in epochs; 0: no weight average
    rung_value: str = default("train.rung_value")  # what val_accuracy is before the last epoch

    def __post_init__(self) -> None:
        for name, key in _SPEC_KEYS.items():
            check(key, getattr(self, name), f"train.{name}", error=ValueError)
        check_rung_value(
            self.rung_value,
            schedule=self.schedule,
            cooldown_epochs=self.cooldown_epochs,
            ema_halflife=self.ema_halflife,
            error=ValueError,
        )
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"train.num_classes={self.num_classes!r}: must be an integer >= 2")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"train.seed={self.seed!r}: must be an integer")


# TrainConfig field → the spec setting that rules it.
_SPEC_KEYS = {"arch": "model.arch", "weights": "model.weights", "epochs": "epochs"} | {
    f.removeprefix("train."): f
    for f in (
        "train.stem",
        "train.lr",
        "train.batch_size",
        "train.frozen_layers",
        "train.aug_strength",
        "train.weight_decay",
        "train.label_smoothing",
        "train.resolution",
        "train.eval_batch_size",
        "train.compile",
        "train.precision",
        "train.schedule",
        "train.decay_fraction",
        "train.cooldown_epochs",
        "train.ema_halflife",
        "train.rung_value",
    )
}


@dataclass(frozen=True)
class EpochResult:
    """One epoch of a run. ``val_accuracy`` is what the pruner sees (``rung_value``; the trunk's at the
    last epoch); the others are every rung-value candidate measured, None when not measured."""

    epoch: int  # 1-based
    train_loss: float
    val_accuracy: float  # fraction in [0, 1]
    seconds: float  # the whole epoch: training, evaluations and the cooldown branch
    trunk_accuracy: float | None = None  # the trained weights themselves
    ema_accuracy: float | None = None  # their moving average (ema_halflife > 0)
    cooldown_accuracy: float | None = None  # the cooldown branch (wsd, cooldown_epochs > 0, not the last epoch)
    cooldown_steps: int = 0  # optimizer steps the branch took: extra cost of this epoch
    cooldown_seconds: float = 0.0  # the branch's training and evaluation


@dataclass(frozen=True)
class FitResult:
    history: tuple[EpochResult, ...]
    val_accuracy: float  # after the last epoch
    test_accuracy: float  # evaluated once, after the last epoch
    precision: str = "fp32"  # what the run computed in: "bf16", "fp16" or "fp32"


OnEpoch = Callable[[EpochResult, Callable[[], dict]], None]


def _autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast pays."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(device: torch.device, precision: str = "auto", stem: str = "imagenet") -> str:
    """What a run with ``precision`` computes in on ``device``: "bf16", "fp16" or "fp32".

    "auto" is bf16 on CUDA (fp16 with a GradScaler before Ampere, where bf16 is emulated), and on
    a CPU with native bf16 for the CIFAR stem, where it trains ~3x faster than fp32. The ImageNet
    stem at CIFAR sizes is overhead-bound on a CPU (bf16 gains nothing), and oneDNN's bf16 backward
    of a strided 3x3 conv on a 1x1 input (ImageNet stem under 32 px) returns garbage weight
    gradients, so "auto" keeps it in fp32. Emulated bf16 is slower than fp32: "auto" is fp32 there.
    An explicit "fp32" is taken as it is, and so is "bf16" off CUDA.
    """
    check("train.precision", precision, error=ValueError)
    if precision == "fp32":
        return "fp32"
    if device.type == "cuda":  # "bf16" or "auto": half precision, bf16 where the GPU has it natively
        return precision_name(cuda_amp_dtype())
    if precision == "bf16" or (device.type == "cpu" and stem == "cifar" and cpu_has_native_bf16()):
        return "bf16"
    return "fp32"


def configure_device(device: torch.device, precision: str = "auto", stem: str = "imagenet") -> torch.dtype | None:
    """Backend settings for training on ``device``; returns the autocast dtype (None: fp32)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv algorithms once
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return _AMP_DTYPES[resolve_precision(device, precision, stem)]


_AMP_DTYPES: dict[str, torch.dtype | None] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """What a run with autocast dtype ``amp_dtype`` computes in: "bf16", "fp16" or "fp32"."""
    return {v: k for k, v in _AMP_DTYPES.items()}[amp_dtype]


def use_channels_last(device: torch.device, amp_dtype: torch.dtype | None) -> bool:
    """channels_last is what cuDNN and oneDNN's bf16 convolutions want; fp32 on a CPU gains little."""
    return device.type == "cuda" or amp_dtype is not None


def cuda_amp_dtype() -> torch.dtype:
    """bf16 where the GPU has it natively (Ampere and later), else fp16 (trained with a GradScaler).

    Before Ampere bf16 is emulated: slower than fp32. fp16's narrow range needs loss scaling instead.
    """
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


# ------------------------------------------------------------------------------------------ components


class WarmupCosine:
    """LR factor: linear warmup over the first 5% of steps (>= 1), then cosine decay towards 0.

    A class rather than a lambda so that LambdaLR's state_dict (and so a checkpoint) includes it.
    """

    def __init__(self, total_steps: int, warmup_fraction: float = 0.05) -> None:
        self.total = max(1, total_steps)
        self.warmup = max(1, round(warmup_fraction * self.total))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only; biases and BatchNorm weights get no weight decay.

    ``schedule = "schedulefree"``: schedule-free AdamW instead, put in train mode (its warm-up is the
    scheduler's, see ``make_scheduler``).
    """
    params = trainable_parameters(model)
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.schedule == "schedulefree":
        try:
            import schedulefree
        except ImportError:
            raise ValueError(
                "train.schedule='schedulefree' needs the schedulefree package: pip install 'sweep[schedulefree]'"
            ) from None
        # The lr it reads each step is the scheduler's (warm-up, then constant): the same warm-up as the
        # other schedules, and its iterate weights (lr_max ** 2) follow it as with its own warmup_steps.
        optimizer = schedulefree.AdamWScheduleFree([g for g in groups if g["params"]], lr=config.lr, warmup_steps=0)
        optimizer.train()
        return optimizer
    # The fused kernel is one pass over all tensors: ~4x faster than foreach on CPU, where the
    # update of 11M parameters otherwise costs as much as the backward pass of a small batch.
    fused = bool(params) and params[0].device.type in ("cpu", "cuda")
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, fused=fused or None)


class WarmupStableDecay:
    """LR factor: WarmupCosine's warmup, then 1 until the last ``decay_fraction`` of the steps, then a
    linear decay towards 0. Before the decay the lr does not depend on the horizon, so a run stopped
    early (or branched off and decayed, see ``fit``) is the run a shorter horizon would have trained.
    """

    def __init__(self, total_steps: int, decay_fraction: float = 0.2, warmup_fraction: float = 0.05) -> None:
        self.total = max(1, total_steps)
        self.warmup = max(1, round(warmup_fraction * self.total))
        decay = max(1, round(decay_fraction * self.total)) if decay_fraction > 0 else 0  # 0: warm-up, constant
        self.decay_start = max(self.warmup, self.total - decay)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if step < self.decay_start:
            return 1.0
        return max(0.0, 1 - (step - self.decay_start) / max(1, self.total - self.decay_start))


def make_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, schedule: str = "cosine", decay_fraction: float = 0.2
) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step LR schedule ``schedule`` over ``total_steps``: "cosine", "wsd", or for "schedulefree"
    the warm-up followed by a constant lr."""
    check("train.schedule", schedule, error=ValueError)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps))
    fraction = decay_fraction if schedule == "wsd" else 0.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupStableDecay(total_steps, fraction))


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


def make_transform(
    resolution: int,
    *,
    aug_strength: float = 0.0,
    generator: torch.Generator | None = None,
    channels_last: bool = False,
) -> Callable[[Tensor], Tensor]:
    """uint8 batch -> network input: augment, normalize, resize to ``resolution`` if needed.

    The augmented uint8 batch may be a strided view (``augment_view``): ``normalize`` converts it
    straight to float, and with ``channels_last`` the uint8 batch is laid out first (a quarter of
    the bytes of relaying out the float result), so each batch is copied as few times as possible.
    """

    def transform(x: Tensor) -> Tensor:
        if aug_strength > 0:
            x = augment_view(x, aug_strength, generator)
        resize = x.shape[-1] != resolution or x.shape[-2] != resolution
        if channels_last and not resize:
            x = x.contiguous(memory_format=torch.channels_last)
        out = normalize(x)
        if resize:
            out = nn.functional.interpolate(
                out, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
            )
        if channels_last:
            out = out.contiguous(memory_format=torch.channels_last)  # a no-op unless resized
        return out

    return transform


def tensor_batches(
    x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled batches of ``x`` (e.g. cached features, on the device) and labels ``y``.

    ``y`` may live elsewhere: when the data set stays in pinned host memory its labels are there
    while the features are on the GPU, so they are copied to x's device once per epoch (a few
    hundred KB) rather than gathered with an index from another device.
    """
    y = y.to(x.device, non_blocking=True)
    for idx in batch_indices(len(y), batch_size, generator, device=x.device):
        yield select_rows(x, idx), y.index_select(0, idx)


def select_rows(x: Tensor, idx: Tensor) -> Tensor:
    """``x[idx]`` along dim 0 as row copies, keeping a channels_last layout.

    ``index_select`` copies whole rows (``x[idx]`` is far slower on CPU) but returns a contiguous
    tensor, so channels_last features would come back NCHW and cuDNN would transpose every batch;
    gathering the NHWC view instead returns channels_last.
    """
    if _is_channels_last(x):
        return x.permute(0, 2, 3, 1).index_select(0, idx).permute(0, 3, 1, 2)
    return x.index_select(0, idx)


def _is_channels_last(x: Tensor) -> bool:
    """Laid out NHWC (and not also NCHW, as tensors with 1x1 maps or one channel are)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------- train, evaluate


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    transform: Callable[[Tensor], Tensor] | None = None,
    prefix: nn.Module | None = None,
    label_smoothing: float = 0.0,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    check_every: int = 50,
    after_step: Callable[[], None] | None = None,
) -> float:
    """One pass over ``batches`` (inputs, labels on the device); returns the mean training loss.

    ``model`` is what gets gradients; ``prefix`` (the frozen units, if any) runs before it under
    ``no_grad``. The loss is summed on the device and checked for NaN/inf only every
    ``check_every`` steps and at the end, so the device is not synchronised each step. ``scaler``
    (fp16 autocast) scales the loss and skips the steps whose gradients overflowed. ``after_step`` runs
    after every optimizer (and scheduler) step, e.g. to update a weight average.
    """
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    device = next(model.parameters()).device
    total = torch.zeros((), device=device)
    steps = 0
    for xb, yb in batches:
        with _autocast(device, amp_dtype):
            inputs = transform(xb) if transform is not None else xb
            if prefix is not None:
                with torch.no_grad():
                    inputs = prefix(inputs)
            loss = criterion(model(inputs), yb)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step()
        total += loss.detach().float()
        steps += 1
        if steps % check_every == 0 and not torch.isfinite(total).item():
            raise Diverged(f"training loss is {total.item()} after {steps} steps; lower train.lr")
    mean = (total / max(steps, 1)).item()
    if not math.isfinite(mean):
        raise Diverged(f"training loss is {mean} after {steps} steps; lower train.lr")
    return mean


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    device: str | torch.device,
    transform: Callable[[Tensor], Tensor] | None = None,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on (x, y), in batches of ``batch_size``.

    uint8 images are normalized when no ``transform`` is given; float inputs (e.g. cached
    features) are used as they are.
    """
    device = torch.device(device)
    if len(y) == 0:
        return float("nan")
    if transform is None and x.dtype == torch.uint8:
        transform = normalize
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(y), batch_size):
        xb = x[start : start + batch_size].to(device, non_blocking=True)
        yb = y[start : start + batch_size].to(device, non_blocking=True)
        with _autocast(device, amp_dtype):
            logits = model(transform(xb) if transform is not None else xb)
        correct += (logits.argmax(1) == yb).sum()
    return correct.item() / len(y)


@torch.no_grad()
def compute_features(
    prefix: nn.Module,
    x: Tensor,
    *,
    batch_size: int,
    device: torch.device,
    transform: Callable[[Tensor], Tensor],
    amp_dtype: torch.dtype | None = None,
) -> Tensor:
    """``prefix(transform(x))`` for a whole split, batch by batch, kept on ``device``.

    no_grad rather than inference_mode: the result is an input to a training graph later. The
    output is allocated once, in the first batch's memory format (channels_last on CUDA), and
    filled batch by batch: a list of batches joined by ``torch.cat`` would need twice the memory.
    """
    prefix.eval()
    out: Tensor | None = None
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device, non_blocking=True)
        with _autocast(device, amp_dtype):
            fb = prefix(transform(xb))
        if out is None:
            out = _empty_rows(fb, len(x))
        out[start : start + len(fb)] = fb
    if out is None:
        raise ValueError("compute_features: no images")
    return out


def _empty_rows(like: Tensor, n: int) -> Tensor:
    """An uninitialised ``[n, *like.shape[1:]]`` tensor with like's dtype, device and memory format."""
    fmt = torch.channels_last if _is_channels_last(like) else torch.contiguous_format
    return torch.empty((n, *like.shape[1:]), dtype=like.dtype, device=like.device, memory_format=fmt)


# ------------------------------------------------------------------------------------------------- fit


def fit(
    config: TrainConfig,
    data: DataBundle,
    device: str | torch.device,
    on_epoch: OnEpoch | None = None,
    resume: dict | None = None,
) -> FitResult:
    """Train ``config`` on ``data`` for ``config.epochs`` epochs, evaluating on val after each.

    After every epoch ``on_epoch(result, checkpoint)`` is called; ``checkpoint()`` returns a dict
    (CPU tensors and plain values, ``torch.save``-able and loadable with weights_only=True) that,
    passed back as ``resume``, continues at the next epoch as if never interrupted. Exceptions from
    ``on_epoch`` propagate unchanged (how callers prune or stop); so do CUDA out-of-memory errors.
    Raises :class:`Diverged` when the training loss becomes NaN/inf.
    """
    device = torch.device(device)
    if data.num_classes != config.num_classes:
        raise ValueError(
            f"train.num_classes={config.num_classes}: the data has {data.num_classes} classes; they must agree"
        )
    amp_dtype = configure_device(device, config.precision, config.stem)
    start_epoch, history = 0, []
    if resume is not None:
        _check_resume(resume, config, data)
        start_epoch = int(resume["epoch"])
        history = [EpochResult(**r) for r in resume["history"]]
    run = _start_run(config, data, device, amp_dtype, resume)

    # Without augmentation the frozen prefix sees the same images every epoch, so its output is
    # computed once; training `rest` on it is the same computation as running the prefix each step.
    features = None
    if config.frozen_layers > 0 and config.aug_strength == 0 and start_epoch < config.epochs:
        features = _cached_features(run.prefix, run.dd, config, device, run.eval_tf, amp_dtype)

    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        run.aug_gen.manual_seed(_aug_seed(config.seed, epoch))
        set_train_mode(run.model, config.frozen_layers)
        after_step = functools.partial(run.ema.update_parameters, run.rest) if run.ema is not None else None
        loss = _train_epoch(run, config, features, run.perm_gen, after_step=after_step)
        last = epoch + 1 == config.epochs
        # Schedule-free's model is the average x of its iterates: the trunk is evaluated there.
        averaged = _schedule_free_average(run, config, features, epoch) if config.schedule == "schedulefree" else None
        trunk = _validate(run, config, features, averaged)
        ema = _validate(run, config, features, run.ema.module) if run.ema is not None else None
        if averaged is not None and last:  # the run's output: what is checkpointed, tested and kept
            getattr(run.rest, "_orig_mod", run.rest).load_state_dict(averaged.state_dict())
        cooldown, cooldown_steps, cooldown_s = None, 0, 0.0
        if config.schedule == "wsd" and config.cooldown_epochs > 0 and not last:
            c0 = time.perf_counter()
            cooldown, cooldown_steps = _cooldown(run, config, features, epoch)
            cooldown_s = time.perf_counter() - c0
        rung = {"trunk": trunk, "ema": ema, "cooldown": cooldown}[config.rung_value]
        result = EpochResult(
            epoch=epoch + 1,
            train_loss=loss,
            val_accuracy=trunk if last or rung is None else rung,
            seconds=time.perf_counter() - t0,
            trunk_accuracy=trunk,
            ema_accuracy=ema,
            cooldown_accuracy=cooldown,
            cooldown_steps=cooldown_steps,
            cooldown_seconds=cooldown_s,
        )
        history.append(result)
        if on_epoch is not None:
            on_epoch(result, functools.partial(_checkpoint, config, data, run, epoch + 1, tuple(history)))

    features = None  # the test pass may need the memory the cached features hold
    test_acc = evaluate(
        run.full,
        run.dd.test_x,
        run.dd.test_y,
        batch_size=config.eval_batch_size,
        device=device,
        transform=run.eval_tf,
        amp_dtype=amp_dtype,
    )
    val_final = history[-1].val_accuracy if history else float("nan")
    return FitResult(
        history=tuple(history), val_accuracy=val_final, test_accuracy=test_acc, precision=precision_name(amp_dtype)
    )


@dataclass(frozen=True)
class _Run:
    """What a run carries from epoch to epoch: the network, its optimisation state, data and transforms."""

    model: nn.Module
    prefix: nn.Module  # the frozen units (empty when none are)
    rest: nn.Module  # the trainable units: rest(prefix(x)) == model(x)
    full: nn.Module  # nn.Sequential(prefix, rest)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    perm_gen: torch.Generator
    aug_gen: torch.Generator
    ema: torch.optim.swa_utils.AveragedModel | None  # the moving average of ``rest`` (ema_halflife > 0)
    steps_per_epoch: int
    dd: DeviceData
    device: torch.device
    amp_dtype: torch.dtype | None
    train_tf: Callable[[Tensor], Tensor]
    eval_tf: Callable[[Tensor], Tensor]


def _start_run(
    config: TrainConfig,
    data: DataBundle,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    resume: dict | None,
) -> _Run:
    """A run's model, optimiser, scheduler and generators, at ``resume``'s epoch when given."""
    channels_last = use_channels_last(device, amp_dtype)
    torch.manual_seed(config.seed)  # model init (new fc, CIFAR stem) is part of the run
    # Resuming overwrites every weight, so skip loading (possibly downloading) pretrained ones.
    model, prefix, rest = prepare_model(config, device, pretrained=resume is None, channels_last=channels_last)
    optimizer = make_optimizer(model, config)
    dd = device_data(data, device)
    per_epoch = steps_per_epoch(len(data.train_y), config.batch_size)
    scheduler = make_scheduler(optimizer, config.epochs * per_epoch, config.schedule, config.decay_fraction)
    ema = _weight_average(rest, config.ema_halflife * per_epoch) if config.ema_halflife > 0 else None
    # fp16 (GPUs without native bf16) needs loss scaling; bf16 and fp32 do not.
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    perm_gen = torch.Generator().manual_seed(config.seed)
    # The augmentation generator lives on the device and is reseeded at every epoch (see
    # _aug_seed) instead of being checkpointed: a CUDA generator's state (16 bytes of Philox seed and
    # offset) and a CPU one's (5 KB of Mersenne twister) cannot be restored on the other device
    # type, and a trial handed back by a GPU worker may resume on a CPU worker or the reverse.
    aug_gen = torch.Generator(device=device)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        match_param_layout(optimizer)
        scheduler.load_state_dict(resume["scheduler"])
        perm_gen.set_state(resume["rng"]["perm"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        if ema is not None and resume.get("ema"):
            ema.load_state_dict(resume["ema"])
    return _Run(
        model=model,
        prefix=prefix,
        rest=rest,
        full=nn.Sequential(prefix, rest),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        perm_gen=perm_gen,
        aug_gen=aug_gen,
        ema=ema,
        steps_per_epoch=per_epoch,
        dd=dd,
        device=device,
        amp_dtype=amp_dtype,
        train_tf=make_transform(
            config.resolution, aug_strength=config.aug_strength, generator=aug_gen, channels_last=channels_last
        ),
        eval_tf=make_transform(config.resolution, channels_last=channels_last),
    )


def _batches(
    run: _Run, config: TrainConfig, features: tuple[Tensor, Tensor] | None, perm_gen: torch.Generator
) -> tuple[Iterator[tuple[Tensor, Tensor]], Callable[[Tensor], Tensor] | None, nn.Module | None]:
    """(training batches in ``perm_gen``'s order, their transform, the prefix to run first): the cached
    prefix features as they are, else images augmented and passed through the frozen prefix."""
    if features is not None:
        return tensor_batches(features[0], run.dd.train_y, config.batch_size, perm_gen), None, None
    prefix = run.prefix if config.frozen_layers > 0 else None
    return run.dd.train_batches(config.batch_size, perm_gen), run.train_tf, prefix


def _train_epoch(
    run: _Run,
    config: TrainConfig,
    features: tuple[Tensor, Tensor] | None,
    perm_gen: torch.Generator,
    *,
    steps: int | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None | str = "trunk",
    after_step: Callable[[], None] | None = None,
) -> float:
    """An epoch of ``run.rest`` (its first ``steps`` batches when given) in ``perm_gen``'s order, on the
    cached prefix features if any, else on augmented images; ``scheduler="trunk"`` is the run's own."""
    sched = run.scheduler if scheduler == "trunk" else scheduler
    assert not isinstance(sched, str)
    batches, transform, prefix = _batches(run, config, features, perm_gen)
    return train_one_epoch(
        run.rest,
        run.optimizer,
        sched,
        batches if steps is None else itertools.islice(batches, steps),
        transform=transform,
        prefix=prefix,
        label_smoothing=config.label_smoothing,
        amp_dtype=run.amp_dtype,
        scaler=run.scaler,
        after_step=after_step,
    )


def _validate(
    run: _Run, config: TrainConfig, features: tuple[Tensor, Tensor] | None, rest: nn.Module | None = None
) -> float:
    """Validation accuracy of the trunk, or with ``rest`` (e.g. the moving average) in place of its
    trainable units, on the cached prefix features if any."""
    full = run.full if rest is None else nn.Sequential(run.prefix, rest)
    rest = run.rest if rest is None else rest
    if features is not None:
        return evaluate(
            rest,
            features[1],
            run.dd.val_y,
            batch_size=config.eval_batch_size,
            device=run.device,
            amp_dtype=run.amp_dtype,
        )
    return evaluate(
        full,
        run.dd.val_x,
        run.dd.val_y,
        batch_size=config.eval_batch_size,
        device=run.device,
        transform=run.eval_tf,
        amp_dtype=run.amp_dtype,
    )


def _weight_average(rest: nn.Module, halflife_steps: float) -> torch.optim.swa_utils.AveragedModel:
    """An EMA of ``rest``'s weights and BatchNorm statistics with a half-life of ``halflife_steps`` steps.

    Buffers are averaged too (``use_buffers``): running statistics copied from the last step would
    not match the averaged weights, and recomputing them would cost a pass over the training set.
    """
    decay = 0.5 ** (1 / max(halflife_steps, 1e-9))
    eager = getattr(rest, "_orig_mod", rest)  # the average is only evaluated: no compiled copy
    return torch.optim.swa_utils.AveragedModel(
        eager, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True
    )


# A quarter epoch of training batches estimates BatchNorm statistics well within their change from
# epoch to epoch, in forward passes only (~1/12 of an epoch's cost).
BN_RECOMPUTE_EPOCHS = 0.25


def _schedule_free_average(
    run: _Run, config: TrainConfig, features: tuple[Tensor, Tensor] | None, epoch: int
) -> nn.Module:
    """A copy of ``rest`` at schedule-free's average x (what ``optimizer.eval()`` would make of the
    weights, without touching them) with its BatchNorm statistics recomputed: the running ones were
    gathered at the iterates y, and do not fit x."""
    eager = getattr(run.rest, "_orig_mod", run.rest)
    averaged = copy.deepcopy(eager)
    beta1 = run.optimizer.param_groups[0]["betas"][0]
    with torch.no_grad():
        for p, q in zip(eager.parameters(), averaged.parameters(), strict=True):
            z = run.optimizer.state.get(p, {}).get("z")
            if z is not None:
                q.copy_(p.lerp(z, 1 - 1 / beta1))
    seed = _bn_seed(config.seed, epoch)
    run.aug_gen.manual_seed(seed)  # reseeded from _aug_seed before the trunk's next epoch
    batches, transform, prefix = _batches(run, config, features, torch.Generator().manual_seed(seed))
    steps = max(1, round(BN_RECOMPUTE_EPOCHS * run.steps_per_epoch))
    recompute_batch_norm(
        averaged, itertools.islice(batches, steps), transform=transform, prefix=prefix, amp_dtype=run.amp_dtype
    )
    return averaged


@torch.no_grad()
def recompute_batch_norm(
    module: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    transform: Callable[[Tensor], Tensor] | None = None,
    prefix: nn.Module | None = None,
    amp_dtype: torch.dtype | None = None,
) -> None:
    """Replace ``module``'s BatchNorm running statistics with the plain average over ``batches``
    (``prefix`` run first, as it is), then put it in eval mode."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average of the batches' statistics
    module.train()
    device = next(module.parameters()).device
    for xb, _ in batches:
        with _autocast(device, amp_dtype):
            inputs = transform(xb) if transform is not None else xb
            module(prefix(inputs) if prefix is not None else inputs)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    module.eval()


class _LinearCooldown:
    """The cooldown branch's lr: from each group's current lr linearly towards 0 over ``steps`` steps
    (the last step at 1/steps of it), the shape of wsd's own final decay."""

    def __init__(self, optimizer: torch.optim.Optimizer, steps: int) -> None:
        self.optimizer, self.steps, self.done = optimizer, steps, 0
        self.start = [g["lr"] for g in optimizer.param_groups]

    def step(self) -> None:
        self.done += 1
        for group, lr in zip(self.optimizer.param_groups, self.start, strict=True):
            group["lr"] = lr * max(0.0, 1 - self.done / self.steps)


def _cooldown(run: _Run, config: TrainConfig, features: tuple[Tensor, Tensor] | None, epoch: int) -> tuple[float, int]:
    """(validation accuracy, steps) of a cooldown branch off the trunk after ``epoch`` (0-based).

    The branch trains on its own shuffle and augmentation draws, so the trunk's generators are not
    advanced; afterwards the weights, BatchNorm statistics, optimizer state, lr and loss scale are put
    back bit for bit, so the trunk continues as if the branch never ran.
    """
    steps = max(1, round(config.cooldown_epochs * run.steps_per_epoch))
    model_state = {k: v.clone() for k, v in run.model.state_dict().items()}
    # clone() keeps each moment's strides, which the fused AdamW needs to match its parameter's.
    optim_state = {
        p: {k: v.clone() if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in st.items()}
        for p, st in run.optimizer.state.items()
    }
    lrs = [g["lr"] for g in run.optimizer.param_groups]
    scaler_state = run.scaler.state_dict() if run.scaler is not None else None
    try:
        seed = _cooldown_seed(config.seed, epoch)
        run.aug_gen.manual_seed(seed)  # reseeded from _aug_seed before the trunk's next epoch
        set_train_mode(run.model, config.frozen_layers)
        _train_epoch(
            run,
            config,
            features,
            torch.Generator().manual_seed(seed),
            steps=steps,
            scheduler=_LinearCooldown(run.optimizer, steps),
        )  # type: ignore[arg-type]
        return _validate(run, config, features), steps
    finally:
        run.model.load_state_dict(model_state)
        for p in list(run.optimizer.state):
            if p not in optim_state:
                del run.optimizer.state[p]
        run.optimizer.state.update(optim_state)
        for group, lr in zip(run.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        if run.scaler is not None and scaler_state is not None:
            run.scaler.load_state_dict(scaler_state)


def _aug_seed(seed: int, epoch: int) -> int:
    """Seed of the augmentation generator for ``epoch`` (0-based) of a run seeded ``seed``."""
    return (seed + 1) * 1_000_003 + epoch


def _cooldown_seed(seed: int, epoch: int) -> int:
    """Seed of the shuffle and augmentation of the cooldown branch after ``epoch`` (0-based)."""
    return (seed + 1) * 2_000_003 + epoch


def _bn_seed(seed: int, epoch: int) -> int:
    """Seed of the batches schedule-free's BatchNorm statistics are recomputed on after ``epoch``."""
    return (seed + 1) * 3_000_017 + epoch


def _cached_features(
    prefix: nn.Module,
    dd: Any,
    config: TrainConfig,
    device: torch.device,
    transform: Callable[[Tensor], Tensor],
    amp_dtype: torch.dtype | None,
) -> tuple[Tensor, Tensor] | None:
    """(train, val) prefix outputs, or None when they would not fit the memory budget."""
    # The size probe runs the uncompiled prefix: a batch of one would be one more compiled graph
    # (dynamo specialises size-1 dimensions) used exactly once.
    eager = getattr(prefix, "_orig_mod", prefix)
    with torch.no_grad():
        eager.eval()
        with _autocast(device, amp_dtype):
            probe = eager(transform(dd.train_x[:1].to(device)))
    n = len(dd.train_y) + len(dd.val_y)
    need = n * probe.numel() * probe.element_size()
    budget = FEATURE_CACHE_MAX_BYTES
    if device.type == "cuda":
        budget = min(budget, int(0.4 * torch.cuda.mem_get_info(device)[0]))
    if need > budget:
        return None
    kw: dict[str, Any] = {
        "batch_size": config.eval_batch_size,
        "device": device,
        "transform": transform,
        "amp_dtype": amp_dtype,
    }
    return compute_features(prefix, dd.train_x, **kw), compute_features(prefix, dd.val_x, **kw)


# ------------------------------------------------------------------------------------- model instances

# torch.compile is slow to warm up, so a worker keeps one compiled model per shape of network and
# loads each trial's fresh weights into it instead of compiling a new one.
_COMPILED: dict[tuple, tuple[nn.Module, nn.Module, nn.Module]] = {}
# The backend of torch.compile: inductor, unless a caller (the train bench's --compile-backend, a CPU
# test tracing without codegen) asks for another within `compile_with(...)`.
_COMPILE_BACKEND: contextvars.ContextVar[str | Callable[..., Any]] = contextvars.ContextVar(
    "compile_backend", default="inductor"
)
# Graphs one compiled unit may hold before dynamo gives up on it and runs it eagerly. A unit sees
# train (grad) and eval (no_grad, inference_mode) modes, each at a static batch size first and a
# dynamic one after the first other size (automatic dynamic shapes): 6 graphs; the rest is margin.
RECOMPILE_LIMIT = 12


@contextlib.contextmanager
def compile_with(backend: str | Callable[..., Any]) -> Iterator[None]:
    """Compile with ``backend`` (a name torch.compile knows, or a backend callable) inside the block."""
    token = _COMPILE_BACKEND.set(backend)
    try:
        yield
    finally:
        _COMPILE_BACKEND.reset(token)


def compile_unit(module: nn.Module) -> nn.Module:
    """``torch.compile(module)`` with recompiles counted for this module alone.

    Every compiled nn.Sequential runs the same code object (Sequential.forward), and by default its
    compiled entries share one recompile_limit (8): the prefixes and rests of all frozen-k variants,
    in all modes and batch sizes, would count against it together, and after a few trials the next
    variants would silently run uncompiled. ``isolate_recompiles`` gives each unit its own count.
    """
    return torch.compile(
        module, backend=_COMPILE_BACKEND.get(), isolate_recompiles=True, recompile_limit=RECOMPILE_LIMIT
    )


def clear_caches() -> None:
    """Drop the per-process caches (device-resident data, compiled models) and free their memory,
    e.g. after a CUDA out-of-memory error or before switching to a very different study.

    Call it outside any ``except`` block: while an exception is being handled its traceback keeps
    the failed run's frames, and with them its model, optimizer state and activations, alive.
    """
    if _COMPILED:
        _COMPILED.clear()
        torch._dynamo.reset()  # the code caches of the dropped modules, whose regions are never used again
    clear_device_cache()
    gc.collect()  # modules and autograd graphs can sit in reference cycles
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def prepare_model(
    config: TrainConfig, device: torch.device, *, pretrained: bool = True, channels_last: bool | None = None
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(model, prefix, rest) on ``device`` with the first ``frozen_layers`` units frozen.

    ``rest(prefix(x)) == model(x)``; with config.compile they are compiled, and cached per process.
    ``pretrained=False`` skips loading config.weights (for when a checkpoint overwrites them).
    ``channels_last`` (default: on CUDA) lays the weights out as the convolutions want them.
    """
    fresh = build_model(
        config.arch, weights=config.weights if pretrained else "none", num_classes=config.num_classes, stem=config.stem
    )
    k = config.frozen_layers
    if channels_last is None:
        channels_last = device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if config.compile:
        key = (config.arch, config.stem, config.num_classes, k, str(device), channels_last, _COMPILE_BACKEND.get())
        if key not in _COMPILED:
            model = fresh.to(device, memory_format=memory_format)
            prefix, rest = split_model(model, k)
            _COMPILED[key] = (model, compile_unit(prefix) if k > 0 else prefix, compile_unit(rest))
        model, prefix, rest = _COMPILED[key]
        model.load_state_dict(fresh.state_dict())
    else:
        model = fresh.to(device, memory_format=memory_format)
        prefix, rest = split_model(model, k)
    freeze_prefix(model, k)
    for p in model.parameters():
        p.grad = None
    return model, prefix, rest


# ----------------------------------------------------------------------------------------- checkpoints


def _to_cpu(obj: Any) -> Any:
    """Deep copy with every tensor cloned to the CPU (the live ones keep changing after this).

    Tensors are stored contiguous (NCHW), whatever the layout of the device that wrote them.
    """
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give every optimizer state tensor its parameter's memory layout (after ``load_state_dict``).

    ``load_state_dict`` moves state to the parameter's device and dtype but keeps the strides it was
    saved with: moments saved NCHW meet channels_last parameters on CUDA (whose fused AdamW refuses
    them) or the reverse on a CPU, whose fused AdamW then pairs the wrong elements without a word.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for name, value in state.items():
                if isinstance(value, Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    state[name] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _checkpoint(config: TrainConfig, data: DataBundle, run: _Run, epoch: int, history: tuple[EpochResult, ...]) -> dict:
    """What ``fit`` hands ``on_epoch`` as ``checkpoint()``: the run's state after ``epoch`` epochs."""
    sched = run.scheduler.state_dict()
    # LambdaLR stores callable objects by their __dict__; keep plain values so weights_only loads work.
    sched["lr_lambdas"] = [dict(d) if d is not None else None for d in sched.get("lr_lambdas", [])]
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "config": asdict(config),
        "data_fingerprint": data.fingerprint,
        "model": _to_cpu(run.model.state_dict()),
        "optimizer": _to_cpu(run.optimizer.state_dict()),
        "scheduler": _to_cpu(sched),
        "history": [asdict(r) for r in history],
        # No augmentation state: its generator is reseeded from (seed, epoch) at every epoch.
        "rng": {"perm": run.perm_gen.get_state()},
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "ema": _to_cpu(run.ema.state_dict()) if run.ema is not None else None,
    }


_RESUME_MUST_MATCH = (
    "arch",
    "stem",
    "num_classes",
    "frozen_layers",
    "batch_size",
    "epochs",
    "schedule",
    "decay_fraction",
    "ema_halflife",
)


def _check_resume(resume: dict, config: TrainConfig, data: DataBundle) -> None:
    if resume.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"resume: unknown checkpoint format {resume.get('format')!r}; expected {CHECKPOINT_FORMAT}")
    # A checkpoint written before a setting existed ran with its default.
    saved = {f.name: f.default for f in dataclasses.fields(TrainConfig)} | resume.get("config", {})
    for name in _RESUME_MUST_MATCH:
        if saved.get(name) != getattr(config, name):
            raise ValueError(
                f"resume: checkpoint has train.{name}={saved.get(name)!r} but this run has {getattr(config, name)!r}"
            )
    if resume.get("data_fingerprint") != data.fingerprint:
        raise ValueError(
            f"resume: checkpoint was made on data {resume.get('data_fingerprint')!r}, this data is {data.fingerprint!r}"
        )
    if not 0 <= int(resume["epoch"]) <= config.epochs:
        raise ValueError(f"resume: checkpoint epoch {resume['epoch']} is outside 0..{config.epochs}")
