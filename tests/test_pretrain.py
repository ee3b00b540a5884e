"""sweep bench pretrain: the source backbone is written as a bf16 state dict, resumes, and loads back."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sweep.cli import app
from sweep.model import build_model, weights_sha256
from sweep_bench.pretrain import SOURCE_CLASSES, TARGET_CLASSES, Recipe, pretrain

pytestmark = pytest.mark.usefixtures("torch_one_thread")
RECIPE = Recipe(epochs=2, batch_size=8, precision="fp32")  # fp32: bit-exact resume on any CPU


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ten CIFAR-10 class folders with a few noisy 32 px images each, train and test."""
    root = tmp_path_factory.mktemp("cifar")
    g = torch.Generator().manual_seed(0)
    for c, name in enumerate(SOURCE_CLASSES + TARGET_CLASSES):
        for split, n in (("train", 6), ("test", 2)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                noise = torch.randint(0, 60, (32, 32, 3), generator=g)
                pixels = (noise + torch.tensor([25 * c, 120, 250 - 25 * c])).clamp(0, 255).to(torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return root


def test_backbone_is_a_bf16_state_dict_without_the_source_head(cifar_like: Path, tmp_path: Path) -> None:
    out = tmp_path / "bb.pt"
    lines: list[str] = []
    meta = pretrain(cifar_like, out, recipe=RECIPE, cache_dir=tmp_path / "c", log=lines.append)
    state = torch.load(out, weights_only=True)
    assert not any(k.startswith("fc.") for k in state)
    assert state["layer1.0.conv1.weight"].dtype == torch.bfloat16 and state["conv1.weight"].shape == (64, 3, 3, 3)
    assert meta["sha256"] == weights_sha256(str(out)) == json.loads(out.with_suffix(".json").read_text())["sha256"]
    assert meta["classes"] == list(SOURCE_CLASSES) and meta["train_images"] == 30 and meta["test_images"] == 10
    assert [h["epoch"] for h in meta["history"]] == [1, 2] and 0 <= meta["test_accuracy"] <= 1
    assert not out.with_name(out.name + ".ckpt").exists()
    assert any("epoch 2/2" in line for line in lines)
    # model.weights = <path>: loaded as float; a fresh head for the target's classes
    model = build_model("resnet18", weights=str(out), num_classes=5, stem="cifar")
    torch.testing.assert_close(model.layer1[0].conv1.weight.detach(), state["layer1.0.conv1.weight"].float())
    assert model.fc.weight.dtype == torch.float32 and model.fc.out_features == 5


@pytest.mark.slow
def test_a_killed_pretraining_resumes_to_the_same_weights(cifar_like: Path, tmp_path: Path) -> None:
    whole = pretrain(cifar_like, tmp_path / "a" / "bb.pt", recipe=RECIPE, cache_dir=tmp_path / "c", log=lambda s: None)

    class Killed(Exception):
        pass

    def die_after_epoch_1(line: str) -> None:
        if line.startswith("epoch 1/"):
            raise Killed

    out = tmp_path / "b" / "bb.pt"
    with pytest.raises(Killed):
        pretrain(cifar_like, out, recipe=RECIPE, cache_dir=tmp_path / "c", log=die_after_epoch_1)
    assert out.with_name(out.name + ".ckpt").is_file() and not out.exists()
    lines: list[str] = []
    resumed = pretrain(cifar_like, out, recipe=RECIPE, cache_dir=tmp_path / "c", log=lines.append)
    assert any(line.startswith("resuming from") for line in lines)
    assert resumed["sha256"] == whole["sha256"]
    curve = [(h["train_loss"], h["val_accuracy"]) for h in resumed["history"]]
    assert curve == [(h["train_loss"], h["val_accuracy"]) for h in whole["history"]]
    # a checkpoint of another recipe is refused, not silently mixed in
    with pytest.raises(Killed):
        pretrain(cifar_like, out, recipe=RECIPE, cache_dir=tmp_path / "c", log=die_after_epoch_1)
    with pytest.raises(ValueError, match="resume: checkpoint has train.epochs=2"):
        pretrain(cifar_like, out, recipe=replace(RECIPE, epochs=3), cache_dir=tmp_path / "c", log=lambda s: None)


def test_cli_pretrain_bad_data_root_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["bench", "pretrain", "--data-root", str(tmp_path / "nope"), "--output", str(tmp_path / "bb.pt")]
    )
    assert result.exit_code == 2, result.output
    assert "data.root" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "bb.pt").exists()
