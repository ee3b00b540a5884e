"""sweep.model: building ResNets, loading weights, freezing a prefix of the network."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from sweep import model as model_mod
from sweep.model import (
    UNITS,
    WeightsError,
    build_model,
    check_weights,
    freeze_prefix,
    set_train_mode,
    split_model,
    trainable_parameters,
    unit_modules,
)
from sweep.spec import MAX_FROZEN
from sweep.train import TrainConfig, make_optimizer

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def unit_state(model: nn.Module, i: int) -> dict[str, torch.Tensor]:
    """Parameters and buffers (BatchNorm running stats) of unit i, cloned."""
    out = {}
    for j, m in enumerate(unit_modules(model)[i]):
        for name, t in m.state_dict().items():
            out[f"{j}.{name}"] = t.detach().clone()
    return out


def one_step(model: nn.Module, k: int, *, lr: float = 1e-2) -> None:
    torch.manual_seed(0)
    opt = torch.optim.AdamW(trainable_parameters(model), lr=lr)
    set_train_mode(model, k)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_units_and_max_frozen() -> None:
    assert UNITS == ("stem", "layer1", "layer2", "layer3", "layer4") and MAX_FROZEN == 5


@pytest.mark.parametrize("k", [0, 2, 5])
def test_frozen_units_keep_weights_and_batchnorm_stats(k: int) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", weights="none", num_classes=10)
    freeze_prefix(model, k)
    before = [unit_state(model, i) for i in range(len(UNITS))]
    fc_before = model.fc.weight.detach().clone()
    one_step(model, k)
    for i in range(len(UNITS)):
        after = unit_state(model, i)
        for name, t in before[i].items():
            if name.endswith("num_batches_tracked"):
                continue
            same = torch.equal(t, after[name])
            if i < k:
                assert same, f"frozen unit {UNITS[i]} changed: {name}"
            elif name.endswith(("weight", "running_mean", "running_var")):
                assert not same, f"trainable unit {UNITS[i]} did not change: {name}"
        for m in unit_modules(model)[i]:
            for p in m.parameters():
                assert (p.grad is None) == (i < k)
    assert not torch.equal(fc_before, model.fc.weight)


def test_set_train_mode_puts_only_frozen_units_in_eval() -> None:
    model = build_model("resnet18", weights="none", num_classes=10)
    set_train_mode(model, 2)
    assert not model.bn1.training and not model.layer1[0].bn1.training
    assert model.layer2[0].bn1.training and model.fc.training


def test_optimizer_gets_only_trainable_parameters() -> None:
    model = build_model("resnet18", weights="none", num_classes=10)
    freeze_prefix(model, 3)
    opt = make_optimizer(model, TrainConfig(frozen_layers=3))
    given = {id(p) for g in opt.param_groups for p in g["params"]}
    assert given == {id(p) for p in model.parameters() if p.requires_grad}
    frozen = {id(p) for i in range(3) for m in unit_modules(model)[i] for p in m.parameters()}
    assert given.isdisjoint(frozen) and given


def test_freeze_prefix_rejects_bad_k() -> None:
    model = build_model("resnet18", weights="none", num_classes=10)
    for k in (-1, 6):
        with pytest.raises(ValueError, match="frozen_layers"):
            freeze_prefix(model, k)
    freeze_prefix(model, 5)
    freeze_prefix(model, 0)  # unfreezes again
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_split_model_composes_to_the_model(stem: str) -> None:
    model = build_model("resnet18", weights="none", num_classes=10, stem=stem).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
        for k in range(MAX_FROZEN + 1):
            prefix, rest = split_model(model, k)
            torch.testing.assert_close(rest(prefix(x)), want)


def test_cifar_stem() -> None:
    model = build_model("resnet18", weights="none", num_classes=7, stem="cifar")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)


def test_resnet50_builds() -> None:
    model = build_model("resnet50", weights="none", num_classes=3)
    assert model.fc.out_features == 3


def test_bad_arch_and_stem() -> None:
    with pytest.raises(ValueError, match="model.arch='vgg16'"):
        build_model("vgg16", weights="none", num_classes=10)
    with pytest.raises(ValueError, match="model.stem"):
        build_model("resnet18", weights="none", num_classes=10, stem="tiny")


# --------------------------------------------------------------------------------------------- weights


@pytest.fixture()
def imagenet_like(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A state dict with the layout of torchvision's ImageNet weights (7x7 stem, 1000 classes)."""
    torch.manual_seed(1)
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    path = tmp_path / "r18.pt"
    torch.save(state, path)
    return path, state


def test_state_dict_path_loads_matching_keys(imagenet_like: tuple[Path, dict]) -> None:
    path, state = imagenet_like
    model = build_model("resnet18", weights=str(path), num_classes=10)
    own = model.state_dict()
    for key in ("conv1.weight", "layer3.1.conv2.weight", "layer4.0.bn1.running_var"):
        torch.testing.assert_close(own[key], state[key])
    assert own["fc.weight"].shape == (10, 512)  # the 1000-class head did not fit: fresh


def test_cifar_stem_starts_from_the_centre_of_the_7x7_kernel(imagenet_like: tuple[Path, dict]) -> None:
    path, state = imagenet_like
    model = build_model("resnet18", weights=str(path), num_classes=10, stem="cifar")
    torch.testing.assert_close(model.conv1.weight.detach(), state["conv1.weight"][:, :, 2:5, 2:5])
    torch.testing.assert_close(model.layer1[0].conv1.weight.detach(), state["layer1.0.conv1.weight"])


def test_checkpoint_dicts_and_compiled_prefixes_are_unwrapped(tmp_path: Path) -> None:
    src = build_model("resnet18", weights="none", num_classes=10)
    state = {f"_orig_mod.{k}": v for k, v in src.state_dict().items()}
    torch.save({"model": state, "epoch": 3}, tmp_path / "ck.pt")
    model = build_model("resnet18", weights=str(tmp_path / "ck.pt"), num_classes=10)
    torch.testing.assert_close(model.fc.weight, src.fc.weight)


def test_missing_weights_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.pt")
    with pytest.raises(WeightsError, match="model.weights=.*no such file") as e:
        build_model("resnet18", weights=missing, num_classes=10)
    assert "\n" not in str(e.value)
    assert "no such file" in (check_weights(missing) or "")


def test_unusable_weights_files(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot load"):
        build_model("resnet18", weights=str(tmp_path / "junk.pt"), num_classes=10)
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="no tensor matches"):
        build_model("resnet18", weights=str(tmp_path / "other.pt"), num_classes=10)


def test_check_weights(imagenet_like: tuple[Path, dict]) -> None:
    assert check_weights("none") is None
    assert check_weights("imagenet") is None
    assert check_weights(str(imagenet_like[0])) is None


def test_imagenet_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError) as e:
        build_model("resnet18", weights="imagenet", num_classes=10)
    msg = str(e.value)
    assert "model.weights='imagenet'" in msg and "model.weights=none" in msg and "\n" not in msg
    assert str(tmp_path / "hub") in msg


def test_imagenet_weights_from_the_torch_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, imagenet_like: tuple[Path, dict]
) -> None:
    # A file already in the hub cache is used without any download.
    _, state = imagenet_like
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / Path(url).name)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(model_mod.torch.hub, "download_url_to_file", None)
    model = build_model("resnet18", weights="imagenet", num_classes=10, stem="cifar")
    torch.testing.assert_close(model.layer2[0].conv1.weight.detach(), state["layer2.0.conv1.weight"])
    torch.testing.assert_close(model.conv1.weight.detach(), state["conv1.weight"][:, :, 2:5, 2:5])
