"""Training throughput: the article's DataLoader pipeline against this engine, in one run.

Same model, data, device, batch size and number of steps for both. The "seed" pipeline is the usual
tutorial recipe: a Dataset of PIL images, RandomCrop(32, padding=4) + RandomHorizontalFlip +
ToTensor + Normalize per sample, a torchvision DataLoader, fp32, every layer trained. The engine is
``sweep.train``: uint8 data resident on the device, batched augmentation, device settings of
``fit`` (bf16 + channels_last on CUDA and on CPUs with native bf16). On a CPU also
``cpu_bf16_ratio``: the engine's CIFAR-stem step in bf16 + channels_last over the same step in
fp32. Also measured: both data pipelines alone, and what freezing buys (k=0 vs k=MAX_FROZEN, and
training the head on cached features when there is no augmentation).

Pipelines take turns in windows of 5 steps and each reports its median window, so background load
hits all of them alike. On a small shared CPU machine ``--threads 1`` gives steadier figures: two
OpenMP threads that must wait for a core held by another process stall each other.

    sweep bench train --data-root /tmp/data/cifar10-jpeg --subset 5000 [--threads 1] [--data-only]
"""

from __future__ import annotations

import contextlib
import itertools
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sweep.data import IMAGENET_MEAN, IMAGENET_STD, DataBundle, device_data, load_data
from sweep.model import build_model, set_train_mode
from sweep.spec import MAX_FROZEN
from sweep.train import (
    TrainConfig,
    compile_with,
    compute_features,
    configure_device,
    cpu_has_native_bf16,
    make_optimizer,
    make_scheduler,
    make_transform,
    prepare_model,
    resolve_precision,
    tensor_batches,
    train_one_epoch,
    use_channels_last,
)
from sweep_bench import write_json


class ArticleDataset(torch.utils.data.Dataset):
    """HWC uint8 images turned into PIL images one at a time, as torchvision's CIFAR10 does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable[[Any], Tensor]) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _article_loader(data: DataBundle, batch_size: int, workers: int, device: torch.device) -> Any:
    import torchvision.transforms as T

    size = data.resolution
    transform = T.Compose(
        [
            T.RandomCrop(size, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    images = data.train_x.permute(0, 2, 3, 1).contiguous().numpy()
    ds = ArticleDataset(images, data.train_y.numpy(), transform)
    # persistent_workers: the batches are drawn endlessly, so the timed windows cross epochs; without
    # it every epoch boundary would fork the workers again inside a timed window.
    return torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )


def _forever(batches: Callable[[], Any]) -> Iterator[Any]:
    while True:
        yield from batches()


Runner = Callable[[int], None]  # runs n steps, synchronised at the end

BackendFlags = tuple[bool, bool, bool]  # cudnn.benchmark, TF32 matmuls, TF32 convolutions


def _backend_flags() -> BackendFlags:
    b = torch.backends
    return b.cudnn.benchmark, b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32


def _set_backend_flags(flags: BackendFlags) -> None:
    b = torch.backends
    b.cudnn.benchmark, b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = flags


def _under(flags: BackendFlags, run: Runner) -> Runner:
    """``run`` with the process-wide backend flags set to ``flags`` while it runs.

    The engine turns on cudnn.benchmark and TF32 for the whole process (``configure_device``); the
    tutorial's pipeline must be timed with the flags it would have on its own.
    """

    def wrapped(n: int) -> None:
        saved = _backend_flags()
        _set_backend_flags(flags)
        try:
            run(n)
        finally:
            _set_backend_flags(saved)

    return wrapped


def _interleaved(runs: dict[str, Runner], steps: int, batch_size: int, window: int) -> dict[str, float]:
    """Images/s of each runner: windows of ``window`` steps taken in turns, median per runner.

    Taking turns exposes every pipeline to the same background load (these machines are shared),
    and the median ignores a window hit by a burst of it.
    """
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for start in range(0, steps, window):
        n = min(window, steps - start)
        for name, run in runs.items():
            t0 = time.perf_counter()
            run(n)
            rates[name].append(n * batch_size / (time.perf_counter() - t0))
    return {name: statistics.median(r) for name, r in rates.items()}


def _article_batches(
    data: DataBundle, config: TrainConfig, device: torch.device, workers: int
) -> tuple[Iterator[Any], Callable[[], None]]:
    """Endless batches of the tutorial's DataLoader, and a function that stops its workers."""
    loader = _article_loader(data, config.batch_size, workers, device)
    batches = _forever(lambda: loader)
    return batches, batches.close  # closing the generator shuts the DataLoader workers down


def _article_load_runner(batches: Iterator[Any], device: torch.device) -> Runner:
    def load(n: int) -> None:
        for _ in range(n):
            x, y = next(batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        _sync(device)

    return load


def _article_train_runner(batches: Iterator[Any], config: TrainConfig, device: torch.device) -> Runner:
    """The tutorial's training step: fp32, Adam, every layer trained."""
    torch.manual_seed(config.seed)
    model = build_model(config.arch, weights="none", num_classes=config.num_classes, stem=config.stem).to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    criterion = nn.CrossEntropyLoss()

    def train(n: int) -> None:
        for _ in range(n):
            x, y = next(batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        loss.item()

    return train


def _data_rates(
    data: DataBundle,
    config: TrainConfig,
    device: torch.device,
    batches: int,
    warmup: int,
    workers: int,
    repeats: int = 3,
) -> tuple[float, float]:
    """(tutorial, engine) images/s of the data pipelines alone, median of ``repeats`` turns each.

    Each tutorial turn gets a fresh DataLoader whose workers are stopped afterwards, so they do not
    keep prefetching (and taking CPU) while the engine is timed.
    """
    engine = _engine_data_runner(data, config, device)
    engine(warmup)
    seed_rates, engine_rates = [], []
    for _ in range(repeats):
        it, close = _article_batches(data, config, device, workers)
        load = _article_load_runner(it, device)
        load(warmup)  # worker start-up
        seed_rates.append(_interleaved({"seed": load}, batches, config.batch_size, batches)["seed"])
        close()
        engine_rates.append(_interleaved({"engine": engine}, batches, config.batch_size, batches)["engine"])
    return statistics.median(seed_rates), statistics.median(engine_rates)


def _engine_transform(config: TrainConfig, device: torch.device) -> Callable[[Tensor], Tensor]:
    channels_last = use_channels_last(device, configure_device(device, config.precision, config.stem))
    return make_transform(
        config.resolution,
        aug_strength=config.aug_strength,
        generator=torch.Generator(device=device).manual_seed(1),
        channels_last=channels_last,
    )


def _engine_data_runner(data: DataBundle, config: TrainConfig, device: torch.device) -> Runner:
    """The engine's batching + augmentation + normalisation alone."""
    dd = device_data(data, device)
    gen = torch.Generator().manual_seed(0)
    transform = _engine_transform(config, device)
    batches = _forever(lambda: dd.train_batches(config.batch_size, gen))

    def load(n: int) -> None:
        for _ in range(n):
            x, _y = next(batches)
            out = transform(x)
        out.sum().item()

    return load


def _engine_runner(data: DataBundle, config: TrainConfig, device: torch.device, steps: int) -> Runner:
    """Training steps of ``sweep.train`` for ``config`` (prefix under no_grad when frozen)."""
    amp_dtype = configure_device(device, config.precision, config.stem)
    torch.manual_seed(config.seed)
    model, prefix, rest = prepare_model(config, device, channels_last=use_channels_last(device, amp_dtype))
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, 10 * steps)
    dd = device_data(data, device)
    gen = torch.Generator().manual_seed(0)
    batches = _forever(lambda: dd.train_batches(config.batch_size, gen))
    kw: dict[str, Any] = {
        "transform": _engine_transform(config, device),
        "prefix": prefix if config.frozen_layers else None,
        "amp_dtype": amp_dtype,
    }

    def train(n: int) -> None:
        set_train_mode(model, config.frozen_layers)
        train_one_epoch(rest, optimizer, scheduler, itertools.islice(batches, n), **kw)  # ends in .item()

    return train


def _time_cached(
    data: DataBundle, config: TrainConfig, device: torch.device, steps: int, warmup: int, window: int
) -> tuple[float, float]:
    """(feature extraction images/s, head training images/s on cached features), k=MAX_FROZEN, aug=0."""
    amp_dtype = configure_device(device, config.precision, config.stem)
    channels_last = use_channels_last(device, amp_dtype)
    torch.manual_seed(config.seed)
    model, prefix, rest = prepare_model(config, device, channels_last=channels_last)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, 10 * (steps + warmup))
    dd = device_data(data, device)
    transform = make_transform(config.resolution, channels_last=channels_last)
    _sync(device)
    t0 = time.perf_counter()
    feats = compute_features(
        prefix, dd.train_x, batch_size=config.eval_batch_size, device=device, transform=transform, amp_dtype=amp_dtype
    )
    _sync(device)
    extract_ips = len(feats) / (time.perf_counter() - t0)
    gen = torch.Generator().manual_seed(0)
    batches = _forever(lambda: tensor_batches(feats, dd.train_y, config.batch_size, gen))
    rest.train()

    def train(n: int) -> None:
        train_one_epoch(rest, optimizer, scheduler, itertools.islice(batches, n), amp_dtype=amp_dtype)

    train(warmup)
    return extract_ips, _interleaved({"cached": train}, steps, config.batch_size, window)["cached"]


def run_train_bench(
    device: str = "cpu",
    *,
    steps: int = 20,
    batch_size: int = 128,
    json_path: Path | None = None,
    console: Any = None,
    data_root: str | Path | None = None,
    subset: int = 5000,
    arch: str = "resnet18",
    warmup: int = 2,
    seed_workers: int = 2,
    cache_dir: str | Path | None = None,
    data_only: bool = False,
    stem: str = "imagenet",
    compile: bool = False,
    compile_backend: str | None = None,
) -> dict:
    """Measure and print images/s of the tutorial pipeline and of this engine; returns the figures.

    ``data_root``: an ImageFolder root (e.g. the CIFAR-10 JPEGs) of which ``subset`` training
    images are used; None uses the synthetic set. ``seed_workers``: DataLoader workers of the
    tutorial pipeline (2, as in PyTorch's CIFAR-10 tutorial; on a 2-core machine also the fastest
    setting for it). ``data_only``: measure only the two data pipelines (seconds instead of a minute).
    ``compile_backend``: torch.compile's backend when ``compile`` (default inductor; eager: a dry run).
    """
    with compile_with(compile_backend) if compile_backend else contextlib.nullcontext():
        return _run_train_bench(
            device,
            steps=steps,
            batch_size=batch_size,
            json_path=json_path,
            console=console,
            data_root=data_root,
            subset=subset,
            arch=arch,
            warmup=warmup,
            seed_workers=seed_workers,
            cache_dir=cache_dir,
            data_only=data_only,
            stem=stem,
            compile=compile,
        )


def _run_train_bench(
    device: str,
    *,
    steps: int,
    batch_size: int,
    json_path: str | Path | None,
    console: Any,
    data_root: str | Path | None,
    subset: int,
    arch: str,
    warmup: int,
    seed_workers: int,
    cache_dir: str | Path | None,
    data_only: bool,
    stem: str,
    compile: bool,
) -> dict:
    dev = torch.device(device)
    stock_flags = _backend_flags()  # before the engine's configure_device changes them
    data, source = _bench_data(data_root, subset, cache_dir)
    config = _bench_config(data, arch, batch_size, stem, compile)
    say = _printer(console)
    say(
        f"train bench: {arch}, batch {batch_size}, {steps} timed steps, {data.resolution} px, {source}, "
        f"device {dev}, {torch.get_num_threads()} threads"
    )

    t_all = time.perf_counter()
    seed_data, engine_data = _data_rates(data, config, dev, 5 * steps, warmup, seed_workers)
    header = _header(dev, arch, batch_size, steps, data.resolution, source, seed_workers)
    if data_only:
        result = header | _data_only_figures(seed_data, engine_data, t_all)
        say(
            f"data pipeline only (augment + normalize + batch): seed {seed_data:,.0f} img/s, "
            f"engine {engine_data:,.0f} img/s, x{engine_data / seed_data:.1f}"
        )
    else:
        plan = _TrainPlan(data, config, dev, steps, warmup, seed_workers, stock_flags)
        result = header | _training_figures(plan, seed_data, engine_data, t_all, say)
        _report(result, console, say)
    _write_json(result, json_path)
    return result


def _bench_data(data_root: str | Path | None, subset: int, cache_dir: str | Path | None) -> tuple[DataBundle, str]:
    """The bench's data set and a line that names it."""
    if data_root is not None:
        data = load_data("imagefolder", data_root, val_fraction=0.1, seed=0, subset=subset, cache_dir=cache_dir)
        return data, f"imagefolder:{data_root} (subset {subset})"
    data = load_data("synthetic", "", val_fraction=0.1, seed=0, subset=subset)
    return data, f"synthetic (subset {subset})"


def _bench_config(data: DataBundle, arch: str, batch_size: int, stem: str, compile: bool) -> TrainConfig:
    # Random init, lr 1e-3 and a 3-epoch schedule: what this bench has always timed (throughput does
    # not depend on them, the baseline in BENCHMARKS.md was measured with them).
    return TrainConfig(
        arch=arch,
        weights="none",
        epochs=3,
        lr=1e-3,
        num_classes=data.num_classes,
        batch_size=batch_size,
        aug_strength=0.5,
        resolution=data.resolution,
        eval_batch_size=max(batch_size, 512),
        stem=stem,
        compile=compile,
    )


def _data_only_figures(seed_data: float, engine_data: float, t_all: float) -> dict[str, Any]:
    return {
        "timing": "data: median of 3 runs, each the same number of batches for both pipelines",
        "seed_data_images_per_s": seed_data,
        "engine_data_images_per_s": engine_data,
        "data_pipeline_ratio": engine_data / seed_data,
        "seconds": time.perf_counter() - t_all,
    }


@dataclass(frozen=True)
class _TrainPlan:
    """What the timed training runs share."""

    data: DataBundle
    config: TrainConfig
    dev: torch.device
    steps: int
    warmup: int
    seed_workers: int
    stock_flags: BackendFlags

    @property
    def window(self) -> int:
        return max(1, min(5, self.steps))


def _training_runners(plan: _TrainPlan, seed_batches: Iterator[Any]) -> dict[str, Runner]:
    """The tutorial's step, the engine's at k=0 and k=MAX_FROZEN, and on a CPU fp32 and bf16 on the CIFAR stem."""
    data, config, dev, n = plan.data, plan.config, plan.dev, plan.steps + plan.warmup
    runs = {
        "seed": _under(plan.stock_flags, _article_train_runner(seed_batches, config, dev)),
        "engine": _engine_runner(data, config, dev, n),
        "frozen": _engine_runner(data, _with(config, frozen_layers=MAX_FROZEN), dev, n),
    }
    if dev.type == "cpu":
        # bf16 (+ channels_last) against fp32 on the CIFAR stem, where a CPU's bf16 units pay.
        cifar = _with(config, stem="cifar")
        runs["cpu_fp32"] = _engine_runner(data, _with(cifar, precision="fp32"), dev, n)
        runs["cpu_bf16"] = _engine_runner(data, _with(cifar, precision="bf16"), dev, n)
    return runs


def _training_rates(plan: _TrainPlan) -> dict[str, float]:
    """Images/s of every training runner, timed in turns."""
    seed_batches, close = _article_batches(plan.data, plan.config, plan.dev, plan.seed_workers)
    runs = _training_runners(plan, seed_batches)
    for run in runs.values():
        run(plan.warmup)  # first calls: worker start-up, allocator, oneDNN/cuDNN kernel choice
    train_ips = _interleaved(runs, plan.steps, plan.config.batch_size, plan.window)
    close()
    return train_ips


def _training_figures(
    plan: _TrainPlan, seed_data: float, engine_data: float, t_all: float, say: Callable[[str], None]
) -> dict[str, Any]:
    """Times the training steps and the cached-features path; the figures after the header."""
    train_ips = _training_rates(plan)
    seed_train, engine_train, frozen_train = train_ips["seed"], train_ips["engine"], train_ips["frozen"]
    cached = _with(_with(plan.config, frozen_layers=MAX_FROZEN), aug_strength=0.0)
    extract, cached_train = _time_cached(plan.data, cached, plan.dev, plan.steps, plan.warmup, plan.window)
    result = {
        "timing": f"training: median of {plan.window}-step windows, pipelines taking turns; data: median of 3 runs",
        "seed_images_per_s": seed_train,
        "engine_images_per_s": engine_train,
        "epoch_ratio": engine_train / seed_train,
        "seed_data_images_per_s": seed_data,
        "engine_data_images_per_s": engine_data,
        "data_pipeline_ratio": engine_data / seed_data,
        "frozen_images_per_s": frozen_train,
        "frozen_saving_ratio": frozen_train / engine_train,
        "feature_extraction_images_per_s": extract,
        "cached_features_images_per_s": cached_train,
        "cached_features_ratio": cached_train / engine_train,
        "seconds": time.perf_counter() - t_all,
    }
    config, dev = plan.config, plan.dev
    result["stem"], result["compile"] = config.stem, config.compile
    result["engine_precision"] = resolve_precision(dev, config.precision, config.stem)
    if dev.type == "cpu":
        _add_cpu_bf16(result, train_ips, say)
    if dev.type == "cuda" and config.stem == "cifar" and config.arch == "resnet18" and plan.data.resolution == 32:
        _add_h200_bound(result, say)
    return result


def _add_cpu_bf16(result: dict[str, Any], train_ips: dict[str, float], say: Callable[[str], None]) -> None:
    result["cpu_native_bf16"] = cpu_has_native_bf16()
    result["cpu_fp32_cifar_images_per_s"] = train_ips["cpu_fp32"]
    result["cpu_bf16_cifar_images_per_s"] = train_ips["cpu_bf16"]
    result["cpu_bf16_ratio"] = train_ips["cpu_bf16"] / train_ips["cpu_fp32"]
    say(
        f"CIFAR stem, k=0: bf16 + channels_last {train_ips['cpu_bf16']:,.1f} img/s, fp32 "
        f"{train_ips['cpu_fp32']:,.1f} img/s: cpu_bf16_ratio x{result['cpu_bf16_ratio']:.2f}"
    )


def _add_h200_bound(result: dict[str, Any], say: Callable[[str], None]) -> None:
    # ~3.3 GFLOP per training image (CIFAR-stem ResNet-18, 32 px) at ~790 TFLOP/s bf16 (H200).
    result["bound_images_per_s"] = H200_BOUND_IMAGES_PER_S
    result["bound_fraction"] = result["engine_images_per_s"] / H200_BOUND_IMAGES_PER_S
    say(f"engine at {result['bound_fraction']:.1%} of the {H200_BOUND_IMAGES_PER_S:,} img/s H200 bf16 bound")


def _header(
    dev: torch.device, arch: str, batch_size: int, steps: int, resolution: int, source: str, seed_workers: int
) -> dict[str, Any]:
    return {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "arch": arch,
        "batch_size": batch_size,
        "steps": steps,
        "resolution": resolution,
        "data": source,
        "seed_dataloader_workers": seed_workers,
    }


H200_BOUND_IMAGES_PER_S = 237_000


def _write_json(result: dict, json_path: Path | None) -> None:
    write_json(result, json_path)


def _with(config: TrainConfig, **changes: Any) -> TrainConfig:
    return replace(config, **changes)


def _printer(console: Any) -> Callable[[str], None]:
    if console is not None:
        return console.print
    try:
        from rich.console import Console

        return Console().print
    except ImportError:
        return print


def _report(r: dict, console: Any, say: Callable[[str], None]) -> None:
    rows = [
        ("training step, k=0, aug 0.5", r["seed_images_per_s"], r["engine_images_per_s"], r["epoch_ratio"]),
        (
            "data pipeline only (augment + batch)",
            r["seed_data_images_per_s"],
            r["engine_data_images_per_s"],
            r["data_pipeline_ratio"],
        ),
    ]
    extra = [
        (f"engine, k={MAX_FROZEN} (head only), aug 0.5", r["frozen_images_per_s"], r["frozen_saving_ratio"]),
        (
            f"engine, k={MAX_FROZEN}, aug 0: head on cached features",
            r["cached_features_images_per_s"],
            r["cached_features_ratio"],
        ),
        (f"  one-off feature extraction, k={MAX_FROZEN}", r["feature_extraction_images_per_s"], None),
    ]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for name, seed, engine, ratio in rows:
            say(f"{name:45s} seed {seed:10.1f} img/s   engine {engine:10.1f} img/s   x{ratio:.2f}")
        for name, ips, ratio in extra:
            say(f"{name:45s} {ips:10.1f} img/s" + (f"   x{ratio:.2f} vs k=0" if ratio else ""))
        return
    out = console if console is not None else Console()
    table = Table(title=f"train throughput on {r['device']} ({r['device_name']})")
    for col in ("", "seed img/s", "engine img/s", "engine / seed"):
        table.add_column(col, justify="left" if not col else "right")
    for name, seed, engine, ratio in rows:
        table.add_row(name, f"{seed:,.0f}", f"{engine:,.0f}", f"x{ratio:.2f}")
    out.print(table)
    frozen = Table(title="freezing (engine)")
    for col in ("", "img/s", "vs k=0"):
        frozen.add_column(col, justify="left" if not col else "right")
    for name, ips, ratio in extra:
        frozen.add_row(name, f"{ips:,.0f}", f"x{ratio:.2f}" if ratio else "")
    out.print(frozen)
