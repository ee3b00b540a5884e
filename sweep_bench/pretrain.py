"""A pretrained backbone made here: ResNet-18 (CIFAR stem) trained on five CIFAR-10 classes.

ImageNet weights cannot be downloaded on an offline machine, but a genuine transfer task can be
built from CIFAR-10 alone: pretrain on the *source* classes (airplane, automobile, bird, cat, deer),
fine-tune on the *target* classes (dog, frog, horse, ship, truck). ``sweep bench pretrain`` trains
the source model with the trial engine's own ``fit`` (same augmentation, optimizer and precision as
a trial), checkpoints every epoch and resumes from the checkpoint when run again, and writes:

- ``OUTPUT`` (``.pt``): a torchvision-compatible ResNet-18 state dict without the source classifier
  (``fc``), floating tensors in bf16 (half the bytes); ``model.weights = OUTPUT`` loads it back as
  float and the fine-tune gets a fresh ``fc`` for its own classes, as with ImageNet weights;
- ``OUTPUT`` with ``.json``: its SHA-256, the source-task test accuracy per epoch, the recipe.

Everything downstream names the weights by their SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from sweep.atomic import torch_save_atomic
from sweep.data import DataBundle, load_split, select_classes
from sweep.model import weights_sha256
from sweep.train import EpochResult, FitResult, TrainConfig, fit, resolve_precision

SOURCE_CLASSES = ("airplane", "automobile", "bird", "cat", "deer")
TARGET_CLASSES = ("dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class Recipe:
    """How the backbone is trained; the defaults are the committed backbone's recipe."""

    epochs: int = 10
    lr: float = 2e-3
    batch_size: int = 128
    aug_strength: float = 0.5  # crop (4 px pad) + flip, the usual CIFAR recipe
    weight_decay: float = 0.05
    seed: int = 0
    precision: str = "auto"


def source_bundle(root: str | Path, classes: tuple[str, ...], *, cache_dir: str | Path | None = None) -> DataBundle:
    """Every training image of ``classes`` to train on, and their test images to evaluate on.

    Nothing is tuned on the source task, so its test split doubles as the per-epoch validation.
    """
    train = load_split("imagefolder", root, "train", cache_dir=cache_dir)
    test = load_split("imagefolder", root, "test", cache_dir=cache_dir)
    train_x, train_y = select_classes(train.x, train.y, train.classes, classes)
    test_x, test_y = select_classes(test.x, test.y, test.classes, classes)
    key = f"pretrain|{train.hash}|{test.hash}|{','.join(classes)}"
    return DataBundle(
        train_x=train_x,
        train_y=train_y,
        val_x=test_x,
        val_y=test_y,
        test_x=test_x,
        test_y=test_y,
        classes=tuple(classes),
        fingerprint=hashlib.blake2b(key.encode(), digest_size=8).hexdigest(),
    )


def to_bf16(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors in bf16 (BatchNorm statistics included), others (step counters) as they are."""
    return {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}


def pretrain(
    root: str | Path,
    output: str | Path,
    *,
    recipe: Recipe = Recipe(),
    classes: tuple[str, ...] = SOURCE_CLASSES,
    cache_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or resume) the source backbone and write it with its metadata; returns the metadata."""
    output = Path(output)
    ckpt_path = output.with_name(output.name + ".ckpt")
    data = source_bundle(root, classes, cache_dir=cache_dir)
    config = _source_config(recipe, len(classes))
    resume = torch.load(ckpt_path, map_location="cpu", weights_only=True) if ckpt_path.is_file() else None
    if resume is not None:
        log(f"resuming from {ckpt_path} (epoch {resume['epoch']} of {recipe.epochs})")
    precision = resolve_precision(torch.device("cpu"), recipe.precision, "cifar")
    log(
        f"pretraining resnet18 (cifar stem) on {len(data.train_y)} images of {', '.join(classes)}; "
        f"test on {len(data.test_y)}; {recipe.epochs} epochs, {precision}, {torch.get_num_threads()} thread(s)"
    )
    final: dict[str, Any] = {}
    on_epoch = _checkpointing(ckpt_path, recipe.epochs, len(data.train_y), final, log)
    started = time.perf_counter()
    result = fit(config, data, "cpu", on_epoch=on_epoch, resume=resume)
    if "model" not in final:  # resumed from a checkpoint of the last epoch: nothing left to train
        final["model"] = resume["model"] if resume is not None else {}
    # The source head would fit a five-class target by shape and be loaded: leave it out.
    backbone = {k: v for k, v in final["model"].items() if not k.startswith("fc.")}
    torch_save_atomic(to_bf16(backbone), output)
    meta = _metadata(output, classes, data, result, recipe, started)
    output.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    ckpt_path.unlink(missing_ok=True)
    log(f"wrote {output} (sha256 {meta['sha256'][:16]}…), source test accuracy {result.test_accuracy:.4f}")
    return meta


def _source_config(recipe: Recipe, num_classes: int) -> TrainConfig:
    return TrainConfig(
        arch="resnet18",
        weights="none",
        stem="cifar",
        num_classes=num_classes,
        epochs=recipe.epochs,
        lr=recipe.lr,
        batch_size=recipe.batch_size,
        frozen_layers=0,
        aug_strength=recipe.aug_strength,
        weight_decay=recipe.weight_decay,
        seed=recipe.seed,
        precision=recipe.precision,
    )


def _checkpointing(
    ckpt_path: Path, epochs: int, train_images: int, final: dict[str, Any], log: Callable[[str], None]
) -> Callable[[EpochResult, Callable[[], dict]], None]:
    """``fit``'s on_epoch: checkpoint, keep the last epoch's model in ``final["model"]``, log the epoch."""

    def on_epoch(result: EpochResult, checkpoint: Callable[[], dict]) -> None:
        state = checkpoint()
        torch_save_atomic(state, ckpt_path)  # every epoch: a killed run loses at most one
        if result.epoch == epochs:
            final["model"] = state["model"]
        rate = train_images / result.seconds
        log(
            f"epoch {result.epoch}/{epochs}: loss {result.train_loss:.3f}, "
            f"source test accuracy {result.val_accuracy:.4f}, {result.seconds:.0f} s ({rate:.0f} img/s incl. eval)"
        )

    return on_epoch


def _metadata(
    output: Path, classes: tuple[str, ...], data: DataBundle, result: FitResult, recipe: Recipe, started: float
) -> dict[str, Any]:
    return {
        "file": output.name,
        "sha256": weights_sha256(str(output)),
        "arch": "resnet18",
        "stem": "cifar",
        "classes": list(classes),
        "train_images": len(data.train_y),
        "test_images": len(data.test_y),
        "test_accuracy": result.test_accuracy,
        "history": [asdict(r) for r in result.history],
        "recipe": asdict(recipe),
        "precision": result.precision,
        "data_fingerprint": data.fingerprint,
        "seconds_this_run": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
    }
