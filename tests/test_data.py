"""sweep.data: augmentation, splits, synthetic data, image folders, the decode cache, errors."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sweep import data as data_mod
from sweep.data import (
    DataError,
    augment,
    augment_view,
    augmentation,
    batch_indices,
    check_data,
    datasets,
    device_data,
    load_data,
    make_synthetic,
    normalize,
    random_crop,
)

COLOURS = {"bird": (220, 30, 30), "cat": (30, 220, 30), "dog": (30, 30, 220)}


def write_folder(root: Path, per_class: dict[str, int], *, split: str = "train") -> None:
    """Solid-colour images per class, in mixed sizes and formats (png and jpg)."""
    sizes = [(20, 30), (40, 40), (50, 24), (16, 16)]
    for cls, n in per_class.items():
        folder = root / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = Image.new("RGB", sizes[i % len(sizes)], COLOURS[cls])
            ext = "png" if i % 2 else "jpg"
            img.save(folder / f"{i:04d}.{ext}")


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    write_folder(root, {"bird": 8, "cat": 8, "dog": 8}, split="train")
    write_folder(root, {"bird": 2, "cat": 2, "dog": 2}, split="test")
    return root


def pattern(n: int, h: int = 8, w: int = 8) -> torch.Tensor:
    """n copies of an image whose pixels are all distinct and non-zero."""
    img = (torch.arange(h * w) + 1).reshape(1, 1, h, w).repeat(n, 3, 1, 1)
    return img.to(torch.uint8)


# ------------------------------------------------------------------------------------------ augmentation


def test_augment_strength_zero_is_identity() -> None:
    x = pattern(4)
    assert augment(x, 0.0) is x


@pytest.mark.parametrize("strength", [0.25, 0.5, 0.75, 1.0])
def test_augment_shapes_dtype_and_determinism(strength: float) -> None:
    x, _ = make_synthetic(16, 32)
    a = augment(x, strength, torch.Generator().manual_seed(0))
    b = augment(x, strength, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert not torch.equal(a, x)


def test_augment_rejects_out_of_range_strength() -> None:
    with pytest.raises(ValueError, match="aug_strength"):
        augment(pattern(2), 1.5)


def test_random_crop_shifts_content_by_at_most_the_padding() -> None:
    pad, n, h, w = 2, 400, 8, 8
    x = pattern(n, h, w)
    out = random_crop(x, pad, torch.Generator().manual_seed(0))
    src = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    shifts = set()
    for i in range(n):
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[i], src[i, :, dy:dy + h, dx:dx + w])
        ]
        assert len(matches) == 1, "each output must be exactly one shifted window of the padded image"
        shifts.add((matches[0][0] - pad, matches[0][1] - pad))
    # every shift from -pad to +pad in both directions occurs, and nothing further
    assert shifts == {(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)}


def test_augment_padding_follows_strength() -> None:
    # strength 0.5 at 32 px pads by 4: a marker pixel moves by at most 4 (flip aside).
    x = torch.zeros(200, 3, 32, 32, dtype=torch.uint8)
    x[:, :, 16, 16] = 255
    out = augment(x, 0.5, torch.Generator().manual_seed(1))
    rows = out[:, 0].amax(dim=2).argmax(dim=1)
    assert set(rows.tolist()) == set(range(12, 21))


def test_flip_flips_some_images_and_keeps_others() -> None:
    x = pattern(64)
    # 0.05 -> round(8 * 0.05) = 0 px padding: the only op left is the flip
    out = augment(x, 0.05, torch.Generator().manual_seed(0))
    same = [torch.equal(out[i], x[i]) for i in range(64)]
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(64)]
    assert all(s or f for s, f in zip(same, flipped, strict=True))
    assert 10 < sum(flipped) < 54


def test_strong_augmentation_adds_cutout() -> None:
    x = torch.full((32, 3, 32, 32), 10, dtype=torch.uint8)
    out = augment(x, 1.0, torch.Generator().manual_seed(0))
    fill = torch.tensor(augmentation._MEAN_UINT8, dtype=torch.uint8)[:, None, None]
    holes = (out == fill).all(dim=1)
    assert holes.any(dim=(1, 2)).float().mean() > 0.5


@pytest.mark.parametrize(("h", "w", "pad"), [(8, 8, 4), (6, 10, 3), (12, 16, 8), (5, 7, 1)])
def test_random_crop_is_a_window_of_the_padded_image_for_any_size(h: int, w: int, pad: int) -> None:
    # odd widths and paddings take the byte-wise copy, multiples of 2/4/8 the wider ones
    x = torch.randint(1, 256, (40, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    out = random_crop(x, pad, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.is_contiguous()
    src = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    for i in range(len(x)):
        windows = [src[i, :, dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
        assert sum(torch.equal(out[i], win) for win in windows) == 1


def test_crop_and_flip_cover_every_shift_and_both_orientations() -> None:
    pad, n, h, w = 4, 600, 32, 32
    x = torch.randint(1, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = augment(x, 0.5, torch.Generator().manual_seed(0))  # 4 px padding, then a random flip
    src = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    seen = set()
    for i in range(n):
        hits = [
            (dy - pad, dx - pad, flipped)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for window in [src[i, :, dy:dy + h, dx:dx + w]]
            for flipped in (False, True)
            if torch.equal(out[i], window.flip(2) if flipped else window)
        ]
        assert len(hits) == 1, "each output must be one window of the padded image, mirrored or not"
        seen.add(hits[0])
    assert {(dy, dx) for dy, dx, _ in seen} == {(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)}
    flips = sum(f for *_, f in seen)
    assert 0 < flips < len(seen)


def test_augment_view_matches_augment_and_leaves_the_input_alone() -> None:
    x, _ = make_synthetic(32, 32)
    before = x.clone()
    for strength in (0.05, 0.5, 1.0):
        view = augment_view(x, strength, torch.Generator().manual_seed(7))
        copy = augment(x, strength, torch.Generator().manual_seed(7))
        assert torch.equal(view, copy) and copy.is_contiguous()
    assert torch.equal(x, before)


def test_strong_augmentation_stays_in_range_and_keeps_strength_half_geometry() -> None:
    # the jitter changes values (within uint8) but not where the content is
    x = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    out = augment(x, 0.75, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert len(torch.unique(out.float().mean(dim=(1, 2, 3)))) > 32  # per-image brightness/contrast


def test_normalize_matches_the_reference_formula() -> None:
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean = torch.tensor(data_mod.IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(data_mod.IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(normalize(x), (x.float() / 255 - mean) / std, atol=1e-5, rtol=1e-5)
    cl = normalize(x.contiguous(memory_format=torch.channels_last))
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, normalize(x))
    f = torch.rand(2, 3, 4, 4)
    g = f.clone()
    normalize(f)
    assert torch.equal(f, g), "a float input must not be changed in place"


def test_normalize_maps_mean_colour_to_zero() -> None:
    x = torch.tensor(augmentation._MEAN_UINT8, dtype=torch.uint8)[None, :, None, None].expand(2, 3, 4, 4)
    out = normalize(x)
    assert out.dtype == torch.float32
    assert out.abs().max() < 0.02
    assert normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8)).max() < -1.7


# --------------------------------------------------------------------------------------------- splitting


def test_stratified_split_is_disjoint_complete_and_deterministic() -> None:
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    tr, va = datasets._split_indices(labels, 0.2, seed=3)
    assert len(va) == 20 and len(tr) == 80
    assert set(tr.tolist()).isdisjoint(va.tolist())
    assert sorted(tr.tolist() + va.tolist()) == list(range(100))
    assert torch.bincount(labels[va]).tolist() == [12, 6, 2]
    tr2, va2 = datasets._split_indices(labels, 0.2, seed=3)
    assert torch.equal(va, va2) and torch.equal(tr, tr2)
    _, va3 = datasets._split_indices(labels, 0.2, seed=4)
    assert not torch.equal(va, va3)


def test_validation_comes_from_train_never_test() -> None:
    a = load_data("synthetic", "unused", val_fraction=0.25, seed=0, resolution=16, subset=200)
    b = load_data("synthetic", "unused", val_fraction=0.5, seed=0, resolution=16, subset=200)
    assert len(a.train_y) + len(a.val_y) == 200 and len(a.val_y) == 50
    assert len(b.val_y) == 100
    assert torch.equal(a.test_x, b.test_x) and len(a.test_y) == 50
    assert torch.bincount(a.val_y, minlength=10).tolist() == [5] * 10


# --------------------------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_seed_moves_only_the_split() -> None:
    a = load_data("synthetic", "x", val_fraction=0.2, seed=0, resolution=16, subset=100)
    b = load_data("synthetic", "y", val_fraction=0.2, seed=0, resolution=16, subset=100)
    c = load_data("synthetic", "x", val_fraction=0.2, seed=1, resolution=16, subset=100)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert torch.equal(a.test_x, c.test_x)
    assert a.train_x.dtype == torch.uint8 and a.train_x.shape[1:] == (3, 16, 16)
    assert a.train_y.dtype == torch.int64 and a.num_classes == 10


def test_synthetic_default_size() -> None:
    d = load_data("synthetic", "", val_fraction=0.1, seed=0)
    assert len(d.train_y) + len(d.val_y) == 2000 and len(d.test_y) == 500
    assert d.train_x.shape[-1] == 32


def test_synthetic_classes_differ_in_colour() -> None:
    x, y = make_synthetic(500, 16)
    means = torch.stack([x[y == c].float().mean(dim=(0, 2, 3)) for c in range(10)])
    assert torch.cdist(means, means).add(torch.eye(10) * 1e3).min() > 5


# ------------------------------------------------------------------------------------------- imagefolder


def test_imagefolder_loads_png_and_jpg_of_any_size(folder: Path, tmp_path: Path) -> None:
    d = load_data("imagefolder", folder, val_fraction=0.25, seed=0, resolution=12, cache_dir=tmp_path / "c")
    assert d.classes == ("bird", "cat", "dog")
    assert d.train_x.shape == (18, 3, 12, 12) and d.val_x.shape == (6, 3, 12, 12)
    assert d.test_x.shape == (6, 3, 12, 12)
    assert torch.bincount(d.val_y).tolist() == [2, 2, 2]
    # labels follow the folders: every image has its class colour (JPEG is within a few levels)
    for x, y in ((d.train_x, d.train_y), (d.test_x, d.test_y)):
        for img, label in zip(x, y, strict=True):
            want = torch.tensor(COLOURS[d.classes[label]], dtype=torch.float32)
            assert (img.float().mean(dim=(1, 2)) - want).abs().max() < 8


def test_imagefolder_uses_val_when_there_is_no_test(tmp_path: Path) -> None:
    root = tmp_path / "r"
    write_folder(root, {"bird": 4, "cat": 4}, split="train")
    write_folder(root, {"bird": 1, "cat": 1}, split="val")
    d = load_data("imagefolder", root, val_fraction=0.25, seed=0, resolution=8, cache_dir=tmp_path / "c")
    assert len(d.test_y) == 2 and check_data("imagefolder", root) is None


def test_subset_is_stratified_and_independent_of_seed(folder: Path, tmp_path: Path) -> None:
    kw = {"val_fraction": 0.5, "resolution": 8, "subset": 12, "cache_dir": tmp_path / "c"}
    a = load_data("imagefolder", folder, seed=0, **kw)
    b = load_data("imagefolder", folder, seed=1, **kw)
    assert len(a.train_y) + len(a.val_y) == 12
    assert torch.bincount(torch.cat([a.train_y, a.val_y])).tolist() == [4, 4, 4]
    pool_a = sorted(map(bytes, torch.cat([a.train_x, a.val_x]).flatten(1).numpy()))
    pool_b = sorted(map(bytes, torch.cat([b.train_x, b.val_x]).flatten(1).numpy()))
    assert pool_a == pool_b


def test_cache_decodes_once(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = datasets.decode_image

    def counting(path: str, resolution: int) -> np.ndarray:
        calls.append(path)
        return real(path, resolution)

    monkeypatch.setattr(datasets, "decode_image", counting)
    cache = tmp_path / "cache"
    a = load_data("imagefolder", folder, val_fraction=0.25, seed=0, resolution=12, cache_dir=cache)
    assert len(calls) == 30
    b = load_data("imagefolder", folder, val_fraction=0.25, seed=5, resolution=12, cache_dir=cache)
    assert len(calls) == 30, "second load must come from the cache"
    assert torch.equal(a.test_x, b.test_x)
    assert sorted(p.suffix for p in cache.iterdir()) == [".pt", ".pt"]  # no temporary files left
    load_data("imagefolder", folder, val_fraction=0.25, seed=0, resolution=10, cache_dir=cache)
    assert len(calls) == 60, "another resolution is another cache entry"


def test_cache_dir_from_environment(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEP_CACHE_DIR", str(tmp_path / "envcache"))
    load_data("imagefolder", folder, val_fraction=0.25, seed=0, resolution=8)
    assert len(list((tmp_path / "envcache").glob("*.pt"))) == 2


def test_cache_notices_added_images(folder: Path, tmp_path: Path) -> None:
    kw = {"val_fraction": 0.25, "seed": 0, "resolution": 8, "cache_dir": tmp_path / "c"}
    assert len(load_data("imagefolder", folder, **kw).train_y) == 18
    Image.new("RGB", (9, 9), COLOURS["cat"]).save(folder / "train" / "cat" / "extra.png")
    assert len(load_data("imagefolder", folder, **kw).train_y) + 6 == 25


# ------------------------------------------------------------------------------------------------ errors


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="data.root=.*nope.*not found") as e:
        load_data("imagefolder", missing, val_fraction=0.2, seed=0, cache_dir=tmp_path)
    assert "\n" not in str(e.value)
    assert "not found" in (check_data("imagefolder", missing) or "")


def test_missing_split_folder(tmp_path: Path) -> None:
    root = tmp_path / "r"
    write_folder(root, {"bird": 2, "cat": 2}, split="train")
    with pytest.raises(DataError, match="no test/"):
        load_data("imagefolder", root, val_fraction=0.5, seed=0, resolution=8, cache_dir=tmp_path / "c")
    assert "test/" in (check_data("imagefolder", root) or "")


def test_class_mismatch_between_train_and_test(tmp_path: Path) -> None:
    root = tmp_path / "r"
    write_folder(root, {"bird": 2, "cat": 2, "dog": 2}, split="train")
    write_folder(root, {"bird": 1, "cat": 1}, split="test")
    with pytest.raises(DataError, match="classes"):
        load_data("imagefolder", root, val_fraction=0.5, seed=0, resolution=8, cache_dir=tmp_path / "c")
    assert "differ" in (check_data("imagefolder", root) or "")


def test_single_class_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "r"
    write_folder(root, {"bird": 3}, split="train")
    write_folder(root, {"bird": 1}, split="test")
    with pytest.raises(DataError, match="at least 2"):
        load_data("imagefolder", root, val_fraction=0.5, seed=0, resolution=8, cache_dir=tmp_path / "c")
    assert "at least 2" in (check_data("imagefolder", root) or "")


def test_cifar10_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.cifar as cifar

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as e:
        load_data("cifar10", tmp_path / "data", val_fraction=0.1, seed=0, cache_dir=tmp_path / "c")
    msg = str(e.value)
    assert "data.root=" in msg and "data" in msg and "download" in msg and "synthetic" in msg
    assert "\n" not in msg
    assert check_data("cifar10", tmp_path / "data") is None  # may still download on another machine


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "mnist"}, "data.name"),
        ({"val_fraction": 0.0}, "data.val_fraction"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"resolution": 4}, "data.resolution"),
        ({"subset": 1}, "data.subset"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict, field: str) -> None:
    args = {"name": "synthetic", "root": "", "val_fraction": 0.2, "seed": 0, "resolution": 16, "subset": 50}
    args.update(kwargs)
    with pytest.raises(DataError, match=field.replace(".", r"\.")):
        load_data(**args)


def test_check_data_happy_paths(folder: Path) -> None:
    assert check_data("synthetic", "anything") is None
    assert check_data("imagefolder", folder) is None
    assert "data.name" in (check_data("svhn", folder) or "")


# ------------------------------------------------------------------------------------------------ device


def test_batch_indices_cover_an_epoch() -> None:
    idx = batch_indices(100, 32, torch.Generator().manual_seed(0))
    assert [len(i) for i in idx] == [32, 32, 32]  # ragged tail dropped
    assert len(set(torch.cat(idx).tolist())) == 96
    again = batch_indices(100, 32, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(idx, again, strict=True))
    assert [len(i) for i in batch_indices(10, 32, torch.Generator())] == [10]
    assert [len(i) for i in batch_indices(100, 32, torch.Generator(), drop_last=False)] == [32, 32, 32, 4]


def test_device_data_is_cached_per_fingerprint() -> None:
    d = load_data("synthetic", "", val_fraction=0.2, seed=0, resolution=8, subset=50)
    a, b = device_data(d, "cpu"), device_data(d, torch.device("cpu"))
    assert a is b and a.resident
    xb, yb = next(a.train_batches(8, torch.Generator().manual_seed(0)))
    assert xb.shape == (8, 3, 8, 8) and yb.shape == (8,)


def test_device_data_fetch_and_batches_are_row_copies() -> None:
    bundle = load_data("synthetic", "", val_fraction=0.2, seed=0, subset=50)
    dd = device_data(bundle, "cpu")
    idx = torch.tensor([5, 0, 7, 7, 3])
    x, y = dd.fetch(dd.train_x, dd.train_y, idx)
    assert torch.equal(x, bundle.train_x[idx]) and torch.equal(y, bundle.train_y[idx])
    seen = torch.cat([yb for _, yb in dd.train_batches(8, torch.Generator().manual_seed(0), drop_last=False)])
    assert torch.equal(seen.sort().values, bundle.train_y.sort().values)


def test_cifar10_from_local_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real torchvision CIFAR10 reader on tiny stand-in batch files (md5 checks patched out)."""
    import pickle

    import torchvision.datasets.cifar as cifar

    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        labels = list(range(10)) * 2
        entry = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": labels}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    opened: list[bool] = []
    real_init = cifar.CIFAR10.__init__

    def counting_init(self: object, *args: object, **kwargs: object) -> None:
        opened.append(True)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(cifar.CIFAR10, "__init__", counting_init)
    kw = {"val_fraction": 0.1, "seed": 0, "cache_dir": tmp_path / "c"}
    d = load_data("cifar10", tmp_path / "data", **kw)
    assert d.classes == tuple(f"c{i}" for i in range(10))
    assert len(d.train_y) + len(d.val_y) == 100 and len(d.test_y) == 20 and d.train_x.shape[1:] == (3, 32, 32)
    assert opened == [True, True]
    again = load_data("cifar10", tmp_path / "data", **kw)
    assert opened == [True, True], "second load must come from the cache"
    assert again.fingerprint == d.fingerprint
    small = load_data("cifar10", tmp_path / "data", resolution=16, subset=50, **kw)
    assert small.train_x.shape[1:] == (3, 16, 16) and len(small.train_y) + len(small.val_y) == 50


# --------------------------------------------------------------------------------------- class filter


def test_classes_keeps_those_classes_labelled_in_the_given_order(folder: Path, tmp_path: Path) -> None:
    d = load_data("imagefolder", folder, val_fraction=0.25, seed=0, resolution=8, cache_dir=tmp_path / "c",
                  classes=["dog", "bird"])
    assert d.classes == ("dog", "bird") and d.num_classes == 2
    assert len(d.train_y) + len(d.val_y) == 16 and len(d.test_y) == 4
    for x, y in ((d.train_x, d.train_y), (d.test_x, d.test_y)):
        for img, label in zip(x, y, strict=True):
            want = torch.tensor(COLOURS[d.classes[label]], dtype=torch.float32)
            assert (img.float().mean(dim=(1, 2)) - want).abs().max() < 8
    every = load_data("imagefolder", folder, val_fraction=0.25, seed=0, resolution=8, cache_dir=tmp_path / "c")
    assert every.fingerprint != d.fingerprint


def test_classes_then_subset_is_stratified_over_the_kept_classes(folder: Path, tmp_path: Path) -> None:
    d = load_data("imagefolder", folder, val_fraction=0.5, seed=0, resolution=8, cache_dir=tmp_path / "c",
                  classes=["cat", "dog"], subset=10)
    assert torch.bincount(torch.cat([d.train_y, d.val_y])).tolist() == [5, 5]


def test_unknown_class_is_one_line(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.classes=\['cat', 'cow'\].*bird, cat, dog") as e:
        load_data("imagefolder", folder, val_fraction=0.25, seed=0, resolution=8, cache_dir=tmp_path / "c",
                  classes=["cat", "cow"])
    assert "\n" not in str(e.value)
