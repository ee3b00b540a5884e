"""sweep.train: fit learns, reports each epoch, resumes exactly, freezes, diverges loudly."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from sweep import train as train_mod
from sweep.data import DataBundle, load_data
from sweep.model import build_model, freeze_prefix, split_model, unit_modules
from sweep.train import (
    Diverged,
    EpochResult,
    FitResult,
    TrainConfig,
    WarmupCosine,
    evaluate,
    fit,
    make_optimizer,
    train_one_epoch,
)

# Small enough for a few seconds per epoch on two CPU threads, big enough to learn something.
BASE = TrainConfig(epochs=2, lr=2e-3, batch_size=32, resolution=16, eval_batch_size=256, seed=0)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def data() -> DataBundle:
    return load_data("synthetic", "", val_fraction=0.2, seed=0, resolution=16, subset=320)


def roundtrip(checkpoint: dict) -> dict:
    """What a caller does with a checkpoint: torch.save it, load it back with weights_only."""
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_fit_learns_and_reports_every_epoch(data: DataBundle) -> None:
    seen: list[EpochResult] = []
    result = fit(replace(BASE, epochs=3), data, "cpu", on_epoch=lambda r, ck: seen.append(r))
    assert isinstance(result, FitResult)
    assert [r.epoch for r in seen] == [1, 2, 3] and result.history == tuple(seen)
    assert result.val_accuracy == seen[-1].val_accuracy
    assert result.val_accuracy > 0.35, f"synthetic data should be learnable, got {result.history}"
    assert 0.0 <= result.test_accuracy <= 1.0 and result.test_accuracy > 0.25
    assert seen[-1].train_loss < seen[0].train_loss
    assert all(r.seconds > 0 for r in seen)


def test_exception_in_on_epoch_propagates(data: DataBundle) -> None:
    class Prune(Exception):
        pass

    calls = []

    def on_epoch(result: EpochResult, checkpoint: object) -> None:
        calls.append(result.epoch)
        raise Prune()

    with pytest.raises(Prune):
        fit(replace(BASE, frozen_layers=5), data, "cpu", on_epoch=on_epoch)
    assert calls == [1]


def test_resume_continues_exactly(data: DataBundle) -> None:
    config = replace(BASE, frozen_layers=1, aug_strength=0.75)
    checkpoints: dict[int, dict] = {}

    def keep(result: EpochResult, checkpoint: object) -> None:
        checkpoints[result.epoch] = roundtrip(checkpoint())  # type: ignore[operator]

    full = fit(config, data, "cpu", on_epoch=keep)
    resumed_epochs: list[int] = []
    final: dict[int, dict] = {}

    def keep_resumed(result: EpochResult, checkpoint: object) -> None:
        resumed_epochs.append(result.epoch)
        final[result.epoch] = checkpoint()  # type: ignore[operator]

    resumed = fit(config, data, "cpu", on_epoch=keep_resumed, resume=checkpoints[1])
    assert resumed_epochs == [2]
    assert [r.epoch for r in resumed.history] == [1, 2]
    assert resumed.history[0] == full.history[0]
    assert resumed.history[1].train_loss == pytest.approx(full.history[1].train_loss, rel=1e-6)
    assert resumed.history[1].val_accuracy == full.history[1].val_accuracy
    assert resumed.test_accuracy == full.test_accuracy
    for key, value in checkpoints[2]["model"].items():
        torch.testing.assert_close(final[2]["model"][key], value, msg=key)


def test_resume_rejects_a_different_run(data: DataBundle) -> None:
    got: list[dict] = []
    fit(replace(BASE, epochs=1, frozen_layers=5), data, "cpu", on_epoch=lambda r, ck: got.append(ck()))
    with pytest.raises(ValueError, match="frozen_layers"):
        fit(replace(BASE, epochs=1, frozen_layers=4), data, "cpu", resume=got[0])


def test_frozen_prefix_is_not_trained(data: DataBundle) -> None:
    config = replace(BASE, epochs=1, frozen_layers=2)
    torch.manual_seed(config.seed)
    initial = build_model("resnet18", weights="none", num_classes=10).state_dict()
    got: list[dict] = []
    fit(config, data, "cpu", on_epoch=lambda r, ck: got.append(ck()))
    trained = got[0]["model"]
    for key, value in initial.items():
        frozen = key.startswith(("conv1.", "bn1.", "layer1."))
        if key.endswith("num_batches_tracked") or not value.is_floating_point():
            continue
        assert torch.equal(trained[key], value) == frozen, key


def test_train_one_epoch_leaves_frozen_grads_empty(data: DataBundle) -> None:
    model = build_model("resnet18", weights="none", num_classes=10)
    freeze_prefix(model, 3)
    prefix, rest = split_model(model, 3)
    opt = make_optimizer(model, BASE)
    x = train_mod.normalize(data.train_x[:64])
    batches = [(x[:32], data.train_y[:32]), (x[32:], data.train_y[32:64])]
    loss = train_one_epoch(rest, opt, None, batches, prefix=prefix)
    assert math.isfinite(loss)
    for i, modules in enumerate(unit_modules(model)):
        for m in modules:
            assert all((p.grad is None) == (i < 3) for p in m.parameters())


def test_nan_loss_raises_diverged(data: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    def poisoned(x: torch.Tensor) -> torch.Tensor:
        return torch.full(x.shape, float("nan"))

    monkeypatch.setattr(train_mod, "normalize", poisoned)
    calls = []
    with pytest.raises(Diverged, match="lr"):
        fit(replace(BASE, frozen_layers=5), data, "cpu", on_epoch=lambda r, ck: calls.append(r))
    assert calls == []


def test_cached_features_match_the_plain_path(data: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    config = replace(BASE, frozen_layers=3, aug_strength=0.0)
    computed = []
    real = train_mod.compute_features
    monkeypatch.setattr(train_mod, "compute_features", lambda *a, **k: computed.append(1) or real(*a, **k))
    cached = fit(config, data, "cpu")
    assert computed == [1, 1]  # train and val features, once for the whole run
    monkeypatch.setattr(train_mod, "FEATURE_CACHE_MAX_BYTES", 0)  # too big: run the prefix every step
    plain = fit(config, data, "cpu")
    assert computed == [1, 1]
    for a, b in zip(cached.history, plain.history, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
        assert a.val_accuracy == pytest.approx(b.val_accuracy, abs=1.5 / len(data.val_y))
    assert cached.test_accuracy == pytest.approx(plain.test_accuracy, abs=1.5 / len(data.test_y))


def test_input_resolution_differs_from_data(data: DataBundle) -> None:
    result = fit(replace(BASE, epochs=1, frozen_layers=5, resolution=24), data, "cpu")
    assert len(result.history) == 1 and 0 <= result.test_accuracy <= 1


def test_num_classes_must_match_the_data(data: DataBundle) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        fit(replace(BASE, num_classes=5), data, "cpu")


@pytest.mark.parametrize(
    ("field", "value"),
    [("arch", "vgg"), ("epochs", 0), ("lr", -1.0), ("frozen_layers", 6), ("aug_strength", 2.0),
     ("batch_size", 0), ("label_smoothing", 1.0), ("stem", "big"), ("lr", float("nan"))],
)
def test_config_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"train.{field}="):
        replace(BASE, **{field: value})


def test_evaluate_counts_correct_predictions() -> None:
    class Oracle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.one_hot(x[:, 0, 0, 0].long(), 4).float()

    x = torch.tensor([0, 1, 2, 3, 0, 1]).float()[:, None, None, None].expand(6, 3, 2, 2)
    y = torch.tensor([0, 1, 2, 0, 0, 0])
    assert evaluate(Oracle(), x, y, batch_size=4, device="cpu") == pytest.approx(4 / 6)


def test_warmup_cosine_schedule() -> None:
    f = WarmupCosine(100)
    values = [f(s) for s in range(100)]
    assert values[0] == pytest.approx(0.2) and max(values) == 1.0
    assert values[-1] < 0.01 and all(a >= b for a, b in zip(values[5:], values[6:], strict=False))


def test_train_bench_smoke(tmp_path: Path) -> None:
    from sweep.bench.train import run_train_bench

    out = run_train_bench("cpu", steps=2, batch_size=16, json_path=tmp_path / "b.json", subset=100,
                          warmup=1, seed_workers=0)
    saved = json.loads((tmp_path / "b.json").read_text())
    for key in ("seed_images_per_s", "engine_images_per_s", "epoch_ratio", "data_pipeline_ratio",
                "frozen_saving_ratio", "device"):
        assert key in out and saved[key] == out[key]
    assert out["engine_images_per_s"] > 0 and out["device"] == "cpu"


# ------------------------------------------------------------------------------------------- precision


def test_auto_precision_is_bf16_only_where_it_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(train_mod, "cpu_has_native_bf16", lambda: True)
    assert train_mod.resolve_precision(cpu, "auto", "cifar") == "bf16"
    assert train_mod.resolve_precision(cpu, "auto", "imagenet") == "fp32"  # overhead-bound; see docstring
    assert train_mod.resolve_precision(cuda, "auto", "imagenet") == "bf16"
    monkeypatch.setattr(train_mod, "cpu_has_native_bf16", lambda: False)
    assert train_mod.resolve_precision(cpu, "auto", "cifar") == "fp32"  # emulated bf16 is slower
    assert train_mod.resolve_precision(cpu, "bf16", "imagenet") == "bf16"  # explicit wins
    assert train_mod.resolve_precision(cuda, "fp32", "cifar") == "fp32"
    with pytest.raises(ValueError, match="train.precision='fp16'"):
        train_mod.resolve_precision(cpu, "fp16")
    with pytest.raises(ValueError, match="train.precision"):
        replace(BASE, precision="half")


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_fit_trains_in_the_precision_it_reports(data: DataBundle, precision: str) -> None:
    seen: list[dict] = []
    config = replace(BASE, epochs=1, stem="cifar", precision=precision, frozen_layers=2, aug_strength=0.0)
    result = fit(config, data, "cpu", on_epoch=lambda r, ck: seen.append(ck()))
    assert result.precision == precision
    weight = seen[0]["model"]["layer3.0.conv1.weight"]
    # bf16 autocast runs with channels_last weights (what oneDNN's bf16 convolutions want)
    assert weight.is_contiguous(memory_format=torch.channels_last) == (precision == "bf16")
    assert weight.dtype == torch.float32  # autocast: the weights stay fp32
    assert result.val_accuracy > 0.2
