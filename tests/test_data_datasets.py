"""sweep.data.datasets: splits, synthetic data, image folders, CIFAR-10, the decode cache, errors."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sweep.data import DataError, check_data, datasets, load_data, make_synthetic

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


@pytest.mark.faults
def test_cache_notices_an_image_overwritten_in_place(folder: Path, tmp_path: Path) -> None:
    """Same name, same folder (whose mtime does not change): the old pixels must not be served."""
    kw = {"val_fraction": 0.5, "seed": 0, "resolution": 8, "cache_dir": tmp_path / "c"}
    before = load_data("imagefolder", folder, **kw)
    assert not (before.test_x == 0).all(dim=(1, 2, 3)).any()  # solid colours: no all-black image yet
    folder_mtime = (folder / "test" / "bird").stat().st_mtime_ns
    Image.new("RGB", (16, 16), (0, 0, 0)).save(folder / "test" / "bird" / "0000.jpg")
    assert (folder / "test" / "bird").stat().st_mtime_ns == folder_mtime  # the old stamp could not see it
    after = load_data("imagefolder", folder, **kw)
    assert (after.test_x == 0).all(dim=(1, 2, 3)).sum() == 1
    assert after.fingerprint != before.fingerprint


@pytest.mark.faults
def test_cache_entry_whose_pixels_do_not_match_its_hash_is_decoded_again(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "c"
    kw = {"val_fraction": 0.5, "seed": 0, "resolution": 8, "cache_dir": cache}
    good = load_data("imagefolder", folder, **kw)
    good_test_x = good.test_x.clone()  # the bundle maps the file that is damaged below
    entry = next(cache.glob("imagefolder-test-*.pt"))
    damaged = torch.load(entry, weights_only=True)
    damaged["x"][0] = 0  # the stored hash is left as it was
    torch.save(damaged, entry)
    calls: list[str] = []
    real = datasets.decode_image
    monkeypatch.setattr(datasets, "decode_image", lambda path, r: calls.append(path) or real(path, r))
    again = load_data("imagefolder", folder, **kw)
    assert len(calls) == 6, "only the damaged split is decoded again"
    assert torch.equal(again.test_x, good_test_x) and again.fingerprint == good.fingerprint
    assert torch.load(entry, weights_only=True)["x"].equal(good_test_x)  # and rewritten whole


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
    d = load_data(
        "imagefolder",
        folder,
        val_fraction=0.25,
        seed=0,
        resolution=8,
        cache_dir=tmp_path / "c",
        classes=["dog", "bird"],
    )
    assert d.classes == ("dog", "bird") and d.num_classes == 2
    assert len(d.train_y) + len(d.val_y) == 16 and len(d.test_y) == 4
    for x, y in ((d.train_x, d.train_y), (d.test_x, d.test_y)):
        for img, label in zip(x, y, strict=True):
            want = torch.tensor(COLOURS[d.classes[label]], dtype=torch.float32)
            assert (img.float().mean(dim=(1, 2)) - want).abs().max() < 8
    every = load_data("imagefolder", folder, val_fraction=0.25, seed=0, resolution=8, cache_dir=tmp_path / "c")
    assert every.fingerprint != d.fingerprint


def test_classes_then_subset_is_stratified_over_the_kept_classes(folder: Path, tmp_path: Path) -> None:
    d = load_data(
        "imagefolder",
        folder,
        val_fraction=0.5,
        seed=0,
        resolution=8,
        cache_dir=tmp_path / "c",
        classes=["cat", "dog"],
        subset=10,
    )
    assert torch.bincount(torch.cat([d.train_y, d.val_y])).tolist() == [5, 5]


def test_unknown_class_is_one_line(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.classes=\['cat', 'cow'\].*bird, cat, dog") as e:
        load_data(
            "imagefolder",
            folder,
            val_fraction=0.25,
            seed=0,
            resolution=8,
            cache_dir=tmp_path / "c",
            classes=["cat", "cow"],
        )
    assert "\n" not in str(e.value)
