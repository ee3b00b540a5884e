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
    WarmupStableDecay,
    evaluate,
    fit,
    make_optimizer,
    train_one_epoch,
)

# Small enough for a few seconds per epoch on two CPU threads, big enough to learn something.
BASE = TrainConfig(weights="none", epochs=2, lr=2e-3, batch_size=32, resolution=16, eval_batch_size=256, seed=0)


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
    [
        ("arch", "vgg"),
        ("epochs", 0),
        ("lr", -1.0),
        ("frozen_layers", 6),
        ("aug_strength", 2.0),
        ("batch_size", 0),
        ("label_smoothing", 1.0),
        ("stem", "big"),
        ("lr", float("nan")),
    ],
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


def test_warmup_stable_decay_schedule() -> None:
    f = WarmupStableDecay(100, decay_fraction=0.2)
    values = [f(s) for s in range(100)]
    assert values[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # the same warm-up as cosine's
    assert values[5:81] == [1.0] * 76  # stable: the lr does not depend on the horizon until the decay
    decay = values[80:]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False)) and decay[-1] == pytest.approx(0.05)
    assert decay == pytest.approx([1 - i / 20 for i in range(20)])  # linear towards 0
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    assert isinstance(train_mod.make_scheduler(optimizer, 100, "wsd").lr_lambdas[0], WarmupStableDecay)
    with pytest.raises(ValueError, match="train.schedule"):
        train_mod.make_scheduler(optimizer, 100, "linear")


# wsd with both anytime estimates: the EMA every epoch, a cooldown branch of half an epoch after each
# epoch but the last.
WSD = replace(BASE, epochs=3, schedule="wsd", cooldown_epochs=0.5, ema_halflife=0.5)


@pytest.mark.parametrize("extra", [{}, {"frozen_layers": 2, "aug_strength": 0.0}], ids=["images", "features"])
def test_cooldown_branch_leaves_the_trunk_bit_identical(data: DataBundle, extra: dict) -> None:
    """The same run without branches trains the same trunk, bit for bit: weights, BatchNorm statistics,
    optimizer state, EMA, losses and accuracies (on images, and on cached features)."""
    runs = []
    for cooldown in (0.0, 0.5):
        ckpts: list[dict] = []
        result = fit(
            replace(WSD, cooldown_epochs=cooldown, **extra),
            data,
            "cpu",
            on_epoch=lambda r, ck, out=ckpts: out.append(ck()),
        )  # type: ignore[misc]
        runs.append((result, ckpts))
    (plain, plain_ck), (branched, branched_ck) = runs
    for a, b in zip(plain.history, branched.history, strict=True):
        assert (a.train_loss, a.trunk_accuracy, a.ema_accuracy) == (b.train_loss, b.trunk_accuracy, b.ema_accuracy)
    assert plain.test_accuracy == branched.test_accuracy
    for a_ck, b_ck in zip(plain_ck, branched_ck, strict=True):
        for part in ("model", "ema"):
            for key, value in a_ck[part].items():
                assert torch.equal(value, b_ck[part][key]), (part, key)
        a_state, b_state = a_ck["optimizer"]["state"], b_ck["optimizer"]["state"]
        assert all(torch.equal(a_state[i][n], b_state[i][n]) for i in a_state for n in a_state[i])
        assert a_ck["optimizer"]["param_groups"] == b_ck["optimizer"]["param_groups"]  # the lr too
    # The branch is measured and charged: half an epoch of steps after every epoch but the last.
    per_epoch = len(data.train_y) // WSD.batch_size
    assert [r.cooldown_steps for r in branched.history] == [round(0.5 * per_epoch)] * 2 + [0]
    assert all(r.cooldown_accuracy is not None and r.cooldown_seconds > 0 for r in branched.history[:-1])
    assert branched.history[-1].cooldown_accuracy is None
    assert [r.cooldown_accuracy for r in plain.history] == [None] * 3


def test_every_rung_value_is_recorded_and_rung_value_picks_what_the_pruner_sees(data: DataBundle) -> None:
    by_choice = {v: fit(replace(WSD, rung_value=v), data, "cpu") for v in ("trunk", "ema", "cooldown")}
    trunk = by_choice["trunk"].history
    for choice, result in by_choice.items():
        for r, t in zip(result.history, trunk, strict=True):
            # The choice changes what is reported, never what is trained.
            assert (r.trunk_accuracy, r.ema_accuracy, r.cooldown_accuracy) == (
                t.trunk_accuracy,
                t.ema_accuracy,
                t.cooldown_accuracy,
            )
            assert r.ema_accuracy is not None and 0 <= r.ema_accuracy <= 1
            expected = {"trunk": r.trunk_accuracy, "ema": r.ema_accuracy, "cooldown": r.cooldown_accuracy}[choice]
            assert r.val_accuracy == (r.trunk_accuracy if r.epoch == WSD.epochs else expected)
        assert result.val_accuracy == trunk[-1].trunk_accuracy
    # The default (cosine, no average) measures only the trunk.
    plain = fit(replace(BASE, epochs=1), data, "cpu").history[0]
    assert plain.trunk_accuracy == plain.val_accuracy and plain.ema_accuracy is None and plain.cooldown_steps == 0


@pytest.mark.parametrize(
    ("changes", "needs"),
    [
        ({"rung_value": "ema"}, "ema_halflife"),
        ({"rung_value": "cooldown", "cooldown_epochs": 0.5}, "schedule = 'wsd'"),
        ({"rung_value": "cooldown", "schedule": "wsd"}, "cooldown_epochs > 0"),
    ],
)
def test_rung_value_needs_its_measurement(changes: dict, needs: str) -> None:
    with pytest.raises(ValueError, match=f"train.rung_value=.*{needs}"):
        replace(BASE, **changes)


def test_wsd_resume_continues_exactly(data: DataBundle) -> None:
    """Checkpoint after epoch 1, resume: the same history (every rung value), weights and EMA."""
    config = replace(WSD, frozen_layers=1, aug_strength=0.5)
    checkpoints: dict[int, dict] = {}
    full = fit(config, data, "cpu", on_epoch=lambda r, ck: checkpoints.__setitem__(r.epoch, roundtrip(ck())))  # type: ignore[operator]
    assert checkpoints[1]["ema"] and checkpoints[1]["config"]["schedule"] == "wsd"
    final: dict[int, dict] = {}
    resumed = fit(
        config,
        data,
        "cpu",
        on_epoch=lambda r, ck: final.__setitem__(r.epoch, ck()),  # type: ignore[operator]
        resume=checkpoints[1],
    )
    assert sorted(final) == [2, 3]
    for a, b in zip(full.history[1:], resumed.history[1:], strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-6)
        assert (a.trunk_accuracy, a.ema_accuracy, a.cooldown_accuracy) == (
            b.trunk_accuracy,
            b.ema_accuracy,
            b.cooldown_accuracy,
        )
    assert resumed.test_accuracy == full.test_accuracy
    for part in ("model", "ema"):
        for key, value in checkpoints[3][part].items():
            torch.testing.assert_close(final[3][part][key], value, msg=f"{part}.{key}")
    with pytest.raises(ValueError, match="schedule"):
        fit(replace(config, schedule="cosine", cooldown_epochs=0.0), data, "cpu", resume=checkpoints[1])


def test_a_checkpoint_from_before_the_schedule_setting_resumes_as_cosine(data: DataBundle) -> None:
    got: list[dict] = []
    config = replace(BASE, epochs=2, frozen_layers=5)
    fit(config, data, "cpu", on_epoch=lambda r, ck: got.append(ck()))
    old = dict(
        got[0],
        config={
            k: v
            for k, v in got[0]["config"].items()
            if k not in ("schedule", "decay_fraction", "ema_halflife", "cooldown_epochs", "rung_value")
        },
    )
    old.pop("ema")
    old["history"] = [{k: r[k] for k in ("epoch", "train_loss", "val_accuracy", "seconds")} for r in old["history"]]
    resumed = fit(config, data, "cpu", resume=old)
    assert [r.epoch for r in resumed.history] == [1, 2] and resumed.history[0].trunk_accuracy is None


def test_schedule_free_evaluates_its_average_and_resumes_exactly(data: DataBundle) -> None:
    pytest.importorskip("schedulefree")
    config = replace(BASE, epochs=3, schedule="schedulefree", frozen_layers=1, aug_strength=0.5, ema_halflife=0.5)
    checkpoints: dict[int, dict] = {}
    full = fit(config, data, "cpu", on_epoch=lambda r, ck: checkpoints.__setitem__(r.epoch, roundtrip(ck())))  # type: ignore[operator]
    assert full.history[-1].val_accuracy > 0.35, full.history
    assert checkpoints[1]["optimizer"]["param_groups"][0]["train_mode"]  # saved as it trains: resumable
    resumed = fit(config, data, "cpu", resume=checkpoints[1])
    for a, b in zip(full.history[1:], resumed.history[1:], strict=True):
        assert (a.trunk_accuracy, a.ema_accuracy) == (b.trunk_accuracy, b.ema_accuracy)
    assert resumed.test_accuracy == full.test_accuracy
    # The run's output is the average x (BatchNorm statistics recomputed): the last checkpoint holds it,
    # and it is what the test accuracy was measured on.
    model = build_model("resnet18", weights="none", num_classes=10)
    model.load_state_dict(checkpoints[3]["model"])
    assert evaluate(model, data.test_x, data.test_y, batch_size=256, device="cpu") == full.test_accuracy
    factors = [
        train_mod.make_scheduler(
            torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), 100, "schedulefree"
        ).lr_lambdas[0](s)
        for s in range(100)
    ]
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]) and factors[5:] == [1.0] * 95


def test_schedule_free_without_its_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "schedulefree", None)  # import fails as when not installed
    with pytest.raises(ValueError, match=r"pip install 'sweep\[schedulefree\]'"):
        make_optimizer(nn.Linear(2, 2), replace(BASE, schedule="schedulefree"))


def test_recompute_batch_norm_averages_the_batches_statistics() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    module[1].running_mean.fill_(5.0)
    batches = [(torch.randn(8, 3), torch.zeros(8)) for _ in range(3)]
    train_mod.recompute_batch_norm(module, batches)
    with torch.no_grad():
        means = torch.stack([module[0](x).mean(0) for x, _ in batches])
    torch.testing.assert_close(module[1].running_mean, means.mean(0))
    assert module[1].momentum == 0.1 and not module.training


def test_train_bench_smoke(tmp_path: Path) -> None:
    from sweep_bench.train import run_train_bench

    out = run_train_bench(
        "cpu", steps=2, batch_size=16, json_path=tmp_path / "b.json", subset=100, warmup=1, seed_workers=0
    )
    saved = json.loads((tmp_path / "b.json").read_text())
    for key in (
        "seed_images_per_s",
        "engine_images_per_s",
        "epoch_ratio",
        "data_pipeline_ratio",
        "frozen_saving_ratio",
        "device",
    ):
        assert key in out and saved[key] == out[key]
    assert out["engine_images_per_s"] > 0 and out["device"] == "cpu"


# ------------------------------------------------------------------------------------------- precision


def test_auto_precision_is_bf16_only_where_it_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(train_mod, "cpu_has_native_bf16", lambda: True)
    assert train_mod.resolve_precision(cpu, "auto", "cifar") == "bf16"
    assert train_mod.resolve_precision(cpu, "auto", "imagenet") == "fp32"  # overhead-bound; see docstring
    monkeypatch.setattr(train_mod, "cuda_amp_dtype", lambda: torch.bfloat16)
    assert train_mod.resolve_precision(cuda, "auto", "imagenet") == "bf16"
    monkeypatch.setattr(train_mod, "cuda_amp_dtype", lambda: torch.float16)  # before Ampere
    assert train_mod.resolve_precision(cuda, "bf16", "cifar") == "fp16"
    monkeypatch.setattr(train_mod, "cpu_has_native_bf16", lambda: False)
    assert train_mod.resolve_precision(cpu, "auto", "cifar") == "fp32"  # emulated bf16 is slower
    assert train_mod.resolve_precision(cpu, "bf16", "imagenet") == "bf16"  # explicit wins
    assert train_mod.resolve_precision(cuda, "fp32", "cifar") == "fp32"
    with pytest.raises(ValueError, match="train.precision='fp16'"):
        train_mod.resolve_precision(cpu, "fp16")
    with pytest.raises(ValueError, match="train.precision"):
        replace(BASE, precision="half")


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_fit_trains_in_the_precision_it_reports(
    data: DataBundle, precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[nn.Module] = []
    real = train_mod.prepare_model

    def spy(*args: object, **kwargs: object) -> tuple[nn.Module, nn.Module, nn.Module]:
        out = real(*args, **kwargs)  # type: ignore[arg-type]
        built.append(out[0])
        return out

    monkeypatch.setattr(train_mod, "prepare_model", spy)
    config = replace(BASE, epochs=1, stem="cifar", precision=precision, frozen_layers=2, aug_strength=0.0)
    result = fit(config, data, "cpu")
    assert result.precision == precision
    weight = built[0].layer3[0].conv1.weight
    # bf16 autocast runs with channels_last weights (what oneDNN's bf16 convolutions want)
    assert weight.is_contiguous(memory_format=torch.channels_last) == (precision == "bf16")
    assert weight.dtype == torch.float32  # autocast: the weights stay fp32
    assert result.val_accuracy > 0.2


# ------------------------------------------------------------------ the CUDA path, exercised on the CPU


@pytest.fixture(scope="module")
def tiny() -> DataBundle:
    """48 train / 16 val images of 8 px: for runs whose cost is per graph or per step, not per image."""
    return load_data("synthetic", "", val_fraction=0.25, seed=0, resolution=8, subset=64)


TINY = TrainConfig(
    weights="none", epochs=1, lr=2e-3, batch_size=16, resolution=8, eval_batch_size=32, seed=0, aug_strength=0.0
)


@pytest.mark.slow
def test_compiled_units_keep_compiling_across_trials(tiny: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten trials of different k and batch size: every unit stays compiled and graphs are reused."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    monkeypatch.setattr(train_mod, "_COMPILED", {})
    # Exactly what one unit needs (see RECOMPILE_LIMIT), so that graphs counted across units would overflow.
    monkeypatch.setattr(train_mod, "RECOMPILE_LIMIT", 6)
    # Hitting a recompile limit (and falling back to eager with a mere warning) is an error here.
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    trials = [(0, 16), (2, 16), (5, 8), (1, 16), (3, 8), (4, 16), (2, 8), (0, 8), (5, 16), (3, 16)]

    def trial(k: int, batch: int) -> int:
        """Graphs compiled by one trial; odd k augment (prefix every step), even k use cached features."""
        before = counter.frame_count
        config = replace(TINY, compile=True, frozen_layers=k, batch_size=batch, aug_strength=0.5 * (k % 2))
        fit(config, tiny, "cpu")
        return counter.frame_count - before

    with train_mod.compile_with(counter):
        compiles = [trial(k, batch) for k, batch in trials]
    # A new variant compiles its graphs; a variant seen before re-traces each of its two units (prefix,
    # rest) at most once, for a new batch size (automatic dynamic shapes), and not at all for one seen.
    first_seen = [i for i, (k, _) in enumerate(trials) if k not in [kk for kk, _ in trials[:i]]]
    assert all(compiles[i] > 0 for i in first_seen), compiles
    assert all(compiles[i] <= 2 for i in range(len(trials)) if i not in first_seen), compiles
    assert max(compiles) <= 2 * train_mod.RECOMPILE_LIMIT
    with train_mod.compile_with(counter):
        assert trial(3, 16) == 0  # an 11th trial runs on graphs compiled before
    torch._dynamo.reset()


def test_labels_follow_the_features_to_their_device(tiny: DataBundle) -> None:
    # Features on one device, labels in (pinned) host memory: as on a GPU when the data set stays
    # on the host. The meta device stands in for CUDA: a cross-device index_select fails the same way.
    feats = torch.empty((len(tiny.train_y), 4, 2, 2), device="meta")
    batches = list(train_mod.tensor_batches(feats, tiny.train_y, 16, torch.Generator().manual_seed(0)))
    assert len(batches) == 3
    assert all(xb.device == yb.device == feats.device and len(yb) == 16 for xb, yb in batches)


def test_cached_features_stay_channels_last_and_are_filled_in_place(
    tiny: DataBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_model("resnet18", weights="none", num_classes=10).to(memory_format=torch.channels_last)
    prefix, _rest = split_model(model, 2)
    transform = train_mod.make_transform(8, channels_last=True)

    def no_cat(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("torch.cat needs the whole cache twice at its peak")

    monkeypatch.setattr(torch, "cat", no_cat)
    feats = train_mod.compute_features(
        prefix, tiny.train_x, batch_size=20, device=torch.device("cpu"), transform=transform
    )
    monkeypatch.undo()
    assert feats.shape[0] == len(tiny.train_x) and feats.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = prefix.eval()(transform(tiny.train_x))
    torch.testing.assert_close(feats, expected)
    idx = torch.tensor([5, 0, 17])
    rows = train_mod.select_rows(feats, idx)
    assert rows.is_contiguous(memory_format=torch.channels_last) and not rows.is_contiguous()
    torch.testing.assert_close(rows, feats[idx])


def _channels_last_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make fit lay out its model channels_last on the CPU, as it does on CUDA."""
    real = train_mod.prepare_model

    def prepare(*args: object, **kwargs: object) -> tuple[nn.Module, nn.Module, nn.Module]:
        model, prefix, rest = real(*args, **kwargs)  # type: ignore[arg-type]
        model.to(memory_format=torch.channels_last)  # in place: prefix and rest share its modules
        return model, prefix, rest

    monkeypatch.setattr(train_mod, "prepare_model", prepare)


def _as_written_on_cuda(ckpt: dict) -> dict:
    """A CPU checkpoint as a CUDA worker would have written it before: 16-byte Philox generator state,
    model and AdamW moments in the channels_last strides of its parameters."""

    def layout(v: object) -> object:
        if isinstance(v, torch.Tensor) and v.dim() == 4:
            return v.contiguous(memory_format=torch.channels_last)
        if isinstance(v, dict):
            return {k: layout(x) for k, x in v.items()}
        return v

    out = {**ckpt, "model": layout(ckpt["model"]), "optimizer": layout(ckpt["optimizer"])}
    return out | {"rng": {**ckpt["rng"], "aug": torch.zeros(16, dtype=torch.uint8)}}


def _final_weights(config: TrainConfig, data: DataBundle, resume: dict | None = None) -> dict:
    got: list[dict] = []
    fit(config, data, "cpu", on_epoch=lambda r, ck: got.append(ck()), resume=resume)
    return got[-1]["model"]


def test_resume_across_device_types(data: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    config = replace(BASE, frozen_layers=3, aug_strength=0.75)
    first: list[dict] = []
    fit(replace(config, epochs=1), data, "cpu", on_epoch=lambda r, ck: first.append(roundtrip(ck())))
    cpu_ckpt = {**first[0], "config": {**first[0]["config"], "epochs": config.epochs}}
    cpu_ckpt["rng"] = {**cpu_ckpt["rng"], "aug": torch.zeros(5056, dtype=torch.uint8)}  # a CPU generator's
    cuda_ckpt = roundtrip(_as_written_on_cuda(cpu_ckpt))
    # Either checkpoint resumed with NCHW parameters (the CPU) and with channels_last ones (as on
    # CUDA) continues the same run exactly: a generator state of the other device type is not needed.
    for layout in ("nchw", "channels_last"):
        if layout == "channels_last":
            _channels_last_model(monkeypatch)
        from_cpu = _final_weights(config, data, cpu_ckpt)
        from_cuda = _final_weights(config, data, cuda_ckpt)
        for key, value in from_cpu.items():
            torch.testing.assert_close(from_cuda[key], value, msg=f"{layout}: {key}", rtol=0, atol=0)


@pytest.mark.parametrize("saved_as", [torch.contiguous_format, torch.channels_last])
def test_optimizer_state_takes_its_parameters_layout(saved_as: torch.memory_format) -> None:
    # CUDA's fused AdamW refuses moments whose strides differ from their parameter's.
    live_as = torch.channels_last if saved_as == torch.contiguous_format else torch.contiguous_format
    model = build_model("resnet18", weights="none", num_classes=10).to(memory_format=saved_as)
    opt = make_optimizer(model, BASE)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    saved = roundtrip(opt.state_dict())
    model.to(memory_format=live_as)
    fresh = make_optimizer(model, BASE)
    fresh.load_state_dict(saved)
    train_mod.match_param_layout(fresh)
    conv = model.conv1.weight
    assert conv.is_contiguous(memory_format=live_as)
    for p in model.parameters():
        for name in ("exp_avg", "exp_avg_sq"):
            assert fresh.state[p][name].stride() == p.stride(), name
    torch.testing.assert_close(fresh.state[conv]["exp_avg"], opt.state[conv]["exp_avg"])


def test_cuda_amp_dtype_is_fp16_before_ampere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert train_mod.cuda_amp_dtype() == torch.float16  # emulated bf16 only
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert train_mod.cuda_amp_dtype() == torch.bfloat16


def test_fp16_trains_with_a_grad_scaler_that_is_checkpointed(tiny: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_mod, "configure_device", lambda device, precision, stem: torch.float16)
    config = replace(TINY, epochs=2, frozen_layers=5)  # head on cached features: fp16 on a CPU is slow
    got: list[dict] = []
    result = fit(config, tiny, "cpu", on_epoch=lambda r, ck: got.append(roundtrip(ck())))
    assert all(math.isfinite(r.train_loss) for r in result.history)
    steps = len(tiny.train_y) // config.batch_size
    assert [ck["scaler"]["_growth_tracker"] for ck in got] == [steps, 2 * steps]  # one update per step
    resumed: list[dict] = []
    fit(config, tiny, "cpu", on_epoch=lambda r, ck: resumed.append(ck()), resume=got[0])
    assert resumed[-1]["scaler"] == got[-1]["scaler"]


def test_train_bench_baseline_runs_with_its_own_backend_flags(tiny: DataBundle) -> None:
    from sweep_bench import train as bench

    stock = bench._backend_flags()
    seen: list[tuple[bool, bool, bool]] = []
    baseline = bench._under(stock, lambda n: seen.append(bench._backend_flags()))
    try:
        train_mod.configure_device(torch.device("cuda"))  # what the engine does to the whole process
        engine = bench._backend_flags()
        baseline(1)
        assert seen == [stock] and bench._backend_flags() == engine != stock
    finally:
        bench._set_backend_flags(stock)
    loader = bench._article_loader(tiny, 16, 1, torch.device("cpu"))
    assert loader.persistent_workers  # no re-fork of the workers at an epoch boundary inside a timed window
