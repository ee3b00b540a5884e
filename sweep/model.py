"""torchvision ResNets for fine-tuning: weights, a CIFAR stem, and freezing a prefix of the network.

A ResNet is treated as five units in forward order, ``UNITS = (stem, layer1, layer2, layer3, layer4)``
(the stem is conv1 + bn1; its ReLU and max-pool have no parameters). ``frozen_layers = k`` freezes
the first k units, so k=0 trains everything and k=MAX_FROZEN=5 trains only the classifier head.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

from sweep.errors import SpecError, UserError
from sweep.spec import check

log = logging.getLogger(__name__)

# MAX_FROZEN (the spec's bound on frozen_layers) is len(UNITS); tests/test_spec.py holds them equal.
UNITS = ("stem", "layer1", "layer2", "layer3", "layer4")
_WEIGHT_ENUMS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
}


class WeightsError(UserError):
    """Pretrained weights cannot be loaded; the message is one line naming the field and the fix."""


def build_model(arch: str, *, weights: str, num_classes: int, stem: str = "imagenet") -> nn.Module:
    """A torchvision ResNet with a fresh ``fc`` for ``num_classes``.

    ``weights``: "imagenet" (torchvision's IMAGENET1K_V1, from the torch hub cache or downloaded),
    "none" (random init) or a path to a state dict; from a state dict every tensor whose name and
    shape match is loaded (a "model"/"state_dict" entry of a checkpoint dict is unwrapped).
    ``stem="cifar"`` swaps the 7x7/2 conv + max-pool for a 3x3/1 conv and no pool, for small
    images; its kernel is initialised from the centre 3x3 of a pretrained 7x7 kernel if there is one.
    """
    # The spec's rules, for callers that did not come through a spec.
    check("model.arch", arch, error=ValueError)
    check("train.stem", stem, "model.stem", error=ValueError)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r}: need an integer >= 2")
    model: nn.Module = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()

    if weights == "none":
        return model
    state = _imagenet_state(arch) if weights == "imagenet" else _file_state(weights)
    loaded, skipped = load_matching(model, state)
    if not loaded:
        raise WeightsError(
            f"model.weights={weights!r}: no tensor matches a {arch} by name and shape; is it a state dict of a {arch}?"
        )
    log.info(
        "weights %s: loaded %d tensors, kept %d fresh (%s)",
        weights,
        len(loaded),
        len(skipped),
        ", ".join(skipped[:6]) + (" ..." if len(skipped) > 6 else ""),
    )
    return model


def load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Copy tensors of ``state`` into ``model`` where name and shape match; returns (loaded, skipped).

    A 7x7 ``conv1.weight`` is cropped to its centre when the model has a 3x3 (CIFAR) stem.
    """
    own = model.state_dict()
    state = {_strip_prefix(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    w = state.get("conv1.weight")
    target = own.get("conv1.weight")
    if w is not None and target is not None and w.shape[-1] == 7 and target.shape[-1] == 3:
        state["conv1.weight"] = w[..., 2:5, 2:5]
    take = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(take, strict=False)
    return sorted(take), sorted(k for k in own if k not in take)


def _strip_prefix(key: str) -> str:
    # DataParallel/DDP ("module.") and torch.compile ("_orig_mod.") wrap the names of a plain model.
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    enum = getattr(torchvision.models, _WEIGHT_ENUMS[arch]).IMAGENET1K_V1
    try:
        return enum.get_state_dict(progress=False)
    except Exception as e:  # URLError, socket/ssl errors, HTTP errors, a truncated file ...
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        raise WeightsError(
            f"model.weights='imagenet': {arch} ImageNet weights are not in the torch cache ({cached}) "
            f"and the download failed ({type(e).__name__}, offline?); copy that file there, or use "
            "model.weights=none or a path to a state dict"
        ) from e


def _file_state(weights: str) -> dict[str, torch.Tensor]:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"model.weights={weights!r}: no such file; use 'imagenet', 'none' or a path to a state dict (.pt)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, unsupported globals, truncated zip ...
        raise WeightsError(
            f"model.weights={weights!r}: cannot load as a state dict ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"model.weights={weights!r}: file holds a {type(obj).__name__}, not a state dict")
    return obj


def weights_sha256(weights: str) -> str | None:
    """SHA-256 of a weights file (how results name the backbone they started from); None for
    "imagenet" and "none". Hashed once per file version per process."""
    if weights in ("imagenet", "none"):
        return None
    path = Path(weights).expanduser().resolve()
    st = path.stat()
    return _sha256(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_weights(weights: str) -> str | None:
    """Cheap pre-flight: a problem message, or None.

    "imagenet" always passes, even when the weights are not cached and the machine is offline: the
    download is attempted (and fails with a clear :class:`WeightsError`) when the model is built.
    """
    if weights in ("imagenet", "none"):
        return None
    if not Path(weights).expanduser().is_file():
        return f"model.weights={weights!r}: no such file; use 'imagenet', 'none' or a path to a state dict (.pt)"
    return None


# --------------------------------------------------------------------------------------------- freezing


def unit_modules(model: nn.Module) -> list[list[nn.Module]]:
    """The modules of each of the five :data:`UNITS`, in forward order."""
    return [[model.conv1, model.bn1], [model.layer1], [model.layer2], [model.layer3], [model.layer4]]


def _check_k(k: int) -> None:
    try:
        check("train.frozen_layers", k)
    except SpecError as e:
        raise ValueError(f"{e.terse()} (number of frozen units of {', '.join(UNITS)})") from None


def freeze_prefix(model: nn.Module, k: int) -> None:
    """Freeze the first ``k`` units (requires_grad=False) and unfreeze the rest."""
    _check_k(k)
    for i, modules in enumerate(unit_modules(model)):
        for m in modules:
            for p in m.parameters():
                p.requires_grad_(i >= k)
    for p in model.fc.parameters():
        p.requires_grad_(True)


def set_train_mode(model: nn.Module, k: int) -> None:
    """``model.train()`` except the first ``k`` units, kept in eval mode so that their BatchNorm
    layers normalise with (and do not update) their running statistics."""
    _check_k(k)
    model.train()
    for modules in unit_modules(model)[:k]:
        for m in modules:
            m.eval()


def split_model(model: nn.Module, k: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(frozen prefix, trainable rest) sharing the model's modules; ``rest(prefix(x)) == model(x)``.

    Lets the trainer run the prefix under ``torch.no_grad()`` (no activations kept for backward)
    or even once for the whole data set.
    """
    _check_k(k)
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    units: list[nn.Module] = [stem, model.layer1, model.layer2, model.layer3, model.layer4]
    head = [model.avgpool, nn.Flatten(1), model.fc]
    return nn.Sequential(*units[:k]), nn.Sequential(*units[k:], *head)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with requires_grad (what the optimizer gets)."""
    return [p for p in model.parameters() if p.requires_grad]
