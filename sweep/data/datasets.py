"""Data sets as uint8 tensors: cifar10, imagefolder and synthetic, a decode-once cache, the splits.

Images are decoded (and resized to the sweep's resolution) once per machine into a cache file that
every later trial and worker loads memory-mapped; the subset and the validation split are stratified
and deterministic, and a bundle's fingerprint names exactly the images it holds.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sweep.atomic import torch_save_atomic
from sweep.errors import UserError
from sweep.spec import DATASETS, check

DEFAULT_CACHE_DIR = "storage/cache"
SYNTHETIC_DEFAULT_SIZE = 2000
# The subset is a property of the data, not of a trial: a fixed seed keeps it identical for every
# trial (so its decoded images can be cached once), while `seed` only moves the validation split.
_SUBSET_SEED = 0
_CACHE_FORMAT = 1


class DataError(UserError):
    """A data problem the user has to fix; the message is one line naming the field and the fix."""


@dataclass(frozen=True, eq=False)
class DataBundle:
    """Train/validation/test splits as uint8 ``[N, 3, H, W]`` CPU tensors with int64 labels."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: tuple[str, ...]
    fingerprint: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def resolution(self) -> int:
        return int(self.train_x.shape[-1])


# --------------------------------------------------------------------------------------------- loading


def load_data(
    name: str,
    root: str | Path,
    *,
    val_fraction: float,
    seed: int,
    resolution: int = 32,
    subset: int | None = None,
    cache_dir: str | Path | None = None,
    classes: Sequence[str] | None = None,
) -> DataBundle:
    """Load a data set as a :class:`DataBundle`, decoding images at most once per cache directory.

    The validation split is carved out of the training images (stratified, deterministic in
    ``seed``); the test split is never touched. ``subset`` keeps that many training images
    (stratified, the same for every seed) before the split; None keeps all. ``classes`` keeps only
    those classes (train and test), labelled in the order given; None keeps every class.
    """
    _check_arguments(name, resolution, val_fraction, seed, subset)
    # With a class filter the whole split is loaded (and cached once) and the subset taken after filtering.
    early_subset = subset if classes is None else None
    if name == "synthetic":
        train, test = _synthetic_splits(resolution, early_subset)
    else:
        train, test = _image_splits(name, root, resolution, cache_dir, early_subset)
    fingerprint_extra = ""
    if classes is not None:
        train, test = _keep_classes(train, test, classes, subset)
        fingerprint_extra = f"|{subset}"  # the subset is taken here, after the split's content hash
    return _carve_validation(name, train, test, resolution, val_fraction, seed, fingerprint_extra)


def _check_arguments(name: str, resolution: int, val_fraction: float, seed: int, subset: int | None) -> None:
    """The spec's rules (sweep.spec.SETTINGS), for callers that did not come through a spec."""
    for key, value in (
        ("data.name", name),
        ("data.resolution", resolution),
        ("data.val_fraction", val_fraction),
        ("seed", seed),
    ):
        check(key, value, error=DataError)
    if subset is not None:
        check("data.subset", subset, error=DataError)


def _synthetic_splits(resolution: int, subset: int | None) -> tuple[Split, Split]:
    n_train = subset if subset is not None else SYNTHETIC_DEFAULT_SIZE
    train_x, train_y = make_synthetic(n_train, resolution, split="train")
    test_x, test_y = make_synthetic(max(n_train // 4, 10), resolution, split="test")
    return (
        Split(x=train_x, y=train_y, classes=SYNTHETIC_CLASSES, hash=_content_hash(train_x, train_y)),
        Split(x=test_x, y=test_y, classes=SYNTHETIC_CLASSES, hash=_content_hash(test_x, test_y)),
    )


def _image_splits(
    name: str, root: str | Path, resolution: int, cache_dir: str | Path | None, subset: int | None
) -> tuple[Split, Split]:
    train = load_split(name, root, "train", resolution=resolution, cache_dir=cache_dir, subset=subset)
    test = load_split(name, root, "test", resolution=resolution, cache_dir=cache_dir)
    if train.classes != test.classes:
        raise DataError(
            f"data.root={str(root)!r}: train classes {list(train.classes)} differ from test classes "
            f"{list(test.classes)}; both folders need the same class sub-folders"
        )
    return train, test


def _keep_classes(train: Split, test: Split, classes: Sequence[str], subset: int | None) -> tuple[Split, Split]:
    """Both splits cut to ``classes`` (relabelled in that order), then train cut to ``subset``.

    The hashes stay those of the unfiltered splits: the fingerprint adds the class names and subset.
    """
    train_x, train_y = select_classes(train.x, train.y, train.classes, classes)
    test_x, test_y = select_classes(test.x, test.y, train.classes, classes)
    keep = _stratified_subset(train_y, subset)
    names = tuple(classes)
    return (
        Split(x=train_x[keep], y=train_y[keep], classes=names, hash=train.hash),
        Split(x=test_x, y=test_y, classes=names, hash=test.hash),
    )


def _carve_validation(
    name: str, train: Split, test: Split, resolution: int, val_fraction: float, seed: int, fingerprint_extra: str
) -> DataBundle:
    """The bundle: validation carved out of ``train`` (stratified in ``seed``), ``test`` as it is."""
    train_idx, val_idx = _split_indices(train.y, val_fraction, seed)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DataError(
            f"data.val_fraction={val_fraction}: leaves {len(train_idx)} training and {len(val_idx)} "
            f"validation images out of {len(train.y)}; use more images or a different fraction"
        )
    key = f"{name}|{train.hash}|{test.hash}|{resolution}|{val_fraction!r}|{seed}|{','.join(train.classes)}"
    return DataBundle(
        train_x=train.x[train_idx],
        train_y=train.y[train_idx],
        val_x=train.x[val_idx],
        val_y=train.y[val_idx],
        test_x=test.x,
        test_y=test.y,
        classes=train.classes,
        fingerprint=hashlib.blake2b((key + fingerprint_extra).encode(), digest_size=8).hexdigest(),
    )


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a data set: uint8 ``[N, 3, R, R]`` images, int64 labels, class names, content hash."""

    x: Tensor
    y: Tensor
    classes: tuple[str, ...]
    hash: str


def load_split(
    name: str,
    root: str | Path,
    split: str,
    *,
    resolution: int = 32,
    subset: int | None = None,
    cache_dir: str | Path | None = None,
) -> Split:
    """The "train" or "test" split of an image data set (cifar10 or imagefolder), through the cache."""
    if cache_dir is None:
        cache_dir = os.environ.get("SWEEP_CACHE_DIR", DEFAULT_CACHE_DIR)
    entry = _cached_split(name, Path(root), split, resolution, subset, Path(cache_dir))
    return Split(x=entry["x"], y=entry["y"], classes=tuple(entry["classes"]), hash=entry["hash"])


def select_classes(x: Tensor, y: Tensor, names: Sequence[str], classes: Sequence[str]) -> tuple[Tensor, Tensor]:
    """The images of ``classes`` (names from ``names``), relabelled 0..len(classes)-1 in that order."""
    unknown = [c for c in classes if c not in names]
    if unknown or len(set(classes)) != len(classes) or len(classes) < 2:
        raise DataError(
            f"data.classes={list(classes)!r}: need two or more distinct classes of this data set ({', '.join(names)})"
        )
    relabel = torch.full((len(names),), -1, dtype=torch.int64)
    for i, c in enumerate(classes):
        relabel[names.index(c)] = i
    new_y = relabel[y]
    keep = torch.nonzero(new_y >= 0).squeeze(1)
    return x[keep], new_y[keep]


def check_data(name: str, root: str | Path) -> str | None:
    """Cheap pre-flight (lists folders, decodes nothing): a problem message, or None if usable.

    ``synthetic`` is always fine; ``cifar10`` is reported fine even when absent because it will be
    downloaded (which fails offline, with a clear :class:`DataError` at load time).
    """
    if name not in DATASETS:
        return f"data.name={name!r}: unknown data set; choose one of {', '.join(DATASETS)}"
    if name != "imagefolder":
        return None
    root = Path(root)
    if not root.is_dir():
        return f"data.root={str(root)!r}: folder not found; it must contain train/ and test/ (or val/)"
    train_dir, test_dir = root / "train", _test_dir(root)
    if not train_dir.is_dir():
        return f"data.root={str(root)!r}: no train/ folder; expected train/<class>/<image> files"
    if test_dir is None:
        return f"data.root={str(root)!r}: no test/ or val/ folder; expected test/<class>/<image> files"
    train_classes, test_classes = _class_dirs(train_dir), _class_dirs(test_dir)
    if len(train_classes) < 2:
        return f"data.root={str(root)!r}: {train_dir} has {len(train_classes)} class folders; need at least 2"
    if train_classes != test_classes:
        return (
            f"data.root={str(root)!r}: class folders differ between {train_dir.name}/ and {test_dir.name}/ "
            f"({train_classes} vs {test_classes})"
        )
    for folder in (train_dir, test_dir):
        for cls in train_classes:
            if not _has_image(folder / cls):
                return f"data.root={str(root)!r}: {folder / cls} contains no image files (jpg, png, ...)"
    return None


def _test_dir(root: Path) -> Path | None:
    for name in ("test", "val"):
        if (root / name).is_dir():
            return root / name
    return None


def _class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _has_image(folder: Path) -> bool:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    for _dirpath, _dirs, files in os.walk(folder):
        if any(f.lower().endswith(IMG_EXTENSIONS) for f in files):
            return True
    return False


# ----------------------------------------------------------------------------------------------- cache


def _cached_split(name: str, root: Path, split: str, resolution: int, subset: int | None, cache_dir: Path) -> dict:
    """One split as {x, y, classes, hash}, decoded on the first call and memory-mapped afterwards."""
    root = root.expanduser().resolve()
    # Every image file's path, size and mtime_ns: an image added, removed or overwritten in place
    # (which leaves its folder's mtime alone) gets a new cache entry; stat only, nothing is decoded.
    source = f"{name}|{root}|{split}|{resolution}|{subset}|{_source_stamp(name, root, split)}"
    digest = hashlib.blake2b(source.encode(), digest_size=8).hexdigest()
    path = cache_dir / f"{name}-{split}-{resolution}px-{subset or 'all'}-{digest}.pt"
    if path.is_file():
        entry = _load_entry(path)
        if entry is not None:
            return entry
    x, y, classes = _decode_split(name, root, split, resolution, subset)
    entry = {"format": _CACHE_FORMAT, "x": x, "y": y, "classes": list(classes), "hash": _content_hash(x, y)}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        torch_save_atomic(entry, path)  # racing workers each write a whole entry
    except OSError:
        return entry  # a read-only (or full) cache costs speed, not correctness
    return _load_entry(path) or entry


def _load_entry(path: Path) -> dict | None:
    """A cache entry whose images still hash to the hash stored with them; None: decode again.

    The hash is checked on every load (a pass over the memory-mapped pixels, ~0.3 s for CIFAR-10's
    150 MB): a file damaged on disk, or written by another build, must not train a sweep on wrong pixels.
    """
    try:
        entry = torch.load(path, mmap=True, weights_only=True)
        if entry.get("format") == _CACHE_FORMAT and entry.get("hash") == _content_hash(entry["x"], entry["y"]):
            return entry
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError):
        pass  # unreadable (e.g. from an older torch): rebuilt by the caller
    return None


def _source_stamp(name: str, root: Path, split: str) -> str:
    """A digest of every file under the split's folder: relative path, size and mtime_ns."""
    if name != "imagefolder":
        return ""  # cifar10: torchvision checks its files' MD5 when it decodes them
    folder = root / "train" if split == "train" else _test_dir(root)
    if folder is None or not folder.is_dir():
        return "missing"
    h = hashlib.blake2b(digest_size=16)
    for dirpath, dirs, files in os.walk(folder):
        dirs.sort()  # os.walk descends in this order: the digest does not depend on the directory's order
        for f in sorted(files):
            file = os.path.join(dirpath, f)
            st = os.stat(file)
            h.update(f"{os.path.relpath(file, folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _content_hash(x: Tensor, y: Tensor) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(str(tuple(x.shape)).encode())
    # The arrays' buffers, not .tobytes() copies: a memory-mapped entry is hashed on every load.
    h.update(x.contiguous().numpy())
    h.update(y.contiguous().numpy())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- decode


def _decode_split(
    name: str, root: Path, split: str, resolution: int, subset: int | None
) -> tuple[Tensor, Tensor, list[str]]:
    if name == "cifar10":
        images, labels, classes = _read_cifar10(root, split)
        keep = _stratified_subset(torch.as_tensor(labels), subset)
        x = torch.from_numpy(images[keep.numpy()]).permute(0, 3, 1, 2).contiguous()
        if resolution != x.shape[-1]:
            x = resize_uint8(x, resolution)
        return x, torch.as_tensor(labels, dtype=torch.int64)[keep], classes
    paths, labels, classes = _list_imagefolder(root, split)
    keep = _stratified_subset(torch.as_tensor(labels), subset).tolist()
    x = decode_images([paths[i] for i in keep], resolution)
    return x, torch.as_tensor([labels[i] for i in keep], dtype=torch.int64), classes


def _read_cifar10(root: Path, split: str) -> tuple[np.ndarray, list[int], list[str]]:
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(root), train=split == "train", download=True)
    except Exception as e:  # urllib/ssl/socket errors differ by platform; all mean "no data here"
        raise DataError(
            f"data.root={str(root)!r}: CIFAR-10 not found and download failed ({type(e).__name__}, "
            "offline?); download it on a machine with internet into that folder, or use data.name=imagefolder/synthetic"
        ) from e
    return ds.data, list(ds.targets), list(ds.classes)


def _list_imagefolder(root: Path, split: str) -> tuple[list[str], list[int], list[str]]:
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise DataError(f"data.root={str(root)!r}: folder not found; it must contain train/ and test/ (or val/)")
    folder = root / "train" if split == "train" else _test_dir(root)
    if folder is None or not folder.is_dir():
        want = "train/" if split == "train" else "test/ (or val/)"
        raise DataError(f"data.root={str(root)!r}: no {want} folder; expected {want}<class>/<image> files")
    try:
        ds = ImageFolder(str(folder))
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"data.root={str(root)!r}: {folder}: {str(e).splitlines()[0]}") from e
    if len(ds.classes) < 2:
        raise DataError(f"data.root={str(root)!r}: {folder} has {len(ds.classes)} class folder(s); need at least 2")
    return [p for p, _ in ds.samples], [t for _, t in ds.samples], list(ds.classes)


def decode_image(path: str, resolution: int) -> np.ndarray:
    """Decode one image to RGB ``[resolution, resolution, 3]`` uint8: shorter side resized, centre crop."""
    from PIL import Image, ImageOps

    try:
        opened = Image.open(path)
    except Image.DecompressionBombError as exc:
        # PIL's own guard (over twice Image.MAX_IMAGE_PIXELS): an unreadable image like any other,
        # so callers report it in one line instead of it escaping as an unknown exception type.
        raise ValueError(str(exc)) from None
    with opened as im:
        if im.size != (resolution, resolution):
            im.draft("RGB", (resolution, resolution))  # JPEG: let the decoder downscale for free
        im = im.convert("RGB")
        if im.size != (resolution, resolution):
            im = ImageOps.fit(im, (resolution, resolution), method=Image.Resampling.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


def decode_images(paths: Sequence[str], resolution: int) -> Tensor:
    """Decode many images into one uint8 ``[N, 3, R, R]`` tensor (threads: PIL releases the GIL)."""
    out = np.empty((len(paths), resolution, resolution, 3), dtype=np.uint8)

    def work(start: int) -> None:
        for i in range(start, min(start + 512, len(paths))):
            try:
                out[i] = decode_image(paths[i], resolution)
            except (OSError, ValueError) as e:
                raise DataError(f"data.root: cannot read image {paths[i]} ({e}); remove or replace it") from e

    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, range(0, len(paths), 512)))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def resize_uint8(x: Tensor, resolution: int) -> Tensor:
    """Resize a uint8 batch (antialiased bilinear) to ``resolution`` x ``resolution``."""
    y = torch.nn.functional.interpolate(
        x.float(), size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
    )
    return y.round_().clamp_(0, 255).to(torch.uint8)


# ------------------------------------------------------------------------------------------- splitting


def _stratified_order(labels: Tensor, seed: int) -> Tensor:
    """A permutation whose every prefix has (within one image) the class proportions of the whole.

    Shuffle, rank each image within its class, and sort by rank / class size: taking the first k
    images then takes ~k * share(c) images of each class c.
    """
    n = len(labels)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    lab = labels[perm]
    order = torch.argsort(lab, stable=True)
    counts = torch.bincount(lab)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n) - starts[lab[order]]
    # (rank + 0.5) / count centres each class's images in [0, 1], so no class is favoured at k=1..C.
    key = (rank.double() + 0.5) / counts[lab].double()
    return perm[torch.argsort(key, stable=True)]


def _stratified_subset(labels: Tensor, subset: int | None) -> Tensor:
    if subset is None or subset >= len(labels):
        return torch.arange(len(labels))
    return torch.sort(_stratified_order(labels, _SUBSET_SEED)[:subset]).values


def _split_indices(labels: Tensor, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Stratified (train, val) indices; sorted so the order of images does not depend on the seed."""
    order = _stratified_order(labels, seed)
    n_val = int(round(val_fraction * len(labels)))
    return torch.sort(order[n_val:]).values, torch.sort(order[:n_val]).values


# ------------------------------------------------------------------------------------------- synthetic

SYNTHETIC_CLASSES = tuple(f"class{i}" for i in range(10))


def make_synthetic(n: int, resolution: int, *, split: str = "train") -> tuple[Tensor, Tensor]:
    """A learnable 10-class RGB set: a soft disc with a class-specific stripe angle and hue.

    Class c has stripes at angle c*18 degrees and hue c/10 (both jittered); position, size, stripe
    frequency and phase, background and pixel noise are random. Colour alone nearly separates the
    classes and orientation confirms them, so a small ResNet beats chance within an epoch or two.
    Deterministic in (n, resolution, split).
    """
    g = torch.Generator().manual_seed(1234 + (0 if split == "train" else 1))
    y = torch.arange(n) % 10
    y = y[torch.randperm(n, generator=g)]

    def u(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    yf = y.float()
    angle = yf * (math.pi / 10) + u(-0.08, 0.08, n)
    cycles = u(2.0, 4.0, n)
    phase = u(0.0, 2 * math.pi, n)
    cx, cy, radius = u(-0.3, 0.3, n), u(-0.3, 0.3, n), u(0.45, 0.8, n)
    hue = (yf / 10 + u(-0.03, 0.03, n)) % 1.0
    colour = _hue_to_rgb(hue) * u(0.7, 1.0, n, 1)  # [n, 3]
    background = u(0.0, 0.45, n, 3)

    coords = torch.linspace(-1.0, 1.0, resolution)
    yy, xx = coords[None, :, None], coords[None, None, :]  # [1, R, 1], [1, 1, R]
    c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    t = xx * c + yy * s
    stripes = 0.5 + 0.5 * torch.sin(math.pi * cycles[:, None, None] * t + phase[:, None, None])
    dist = torch.sqrt((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2)
    mask = torch.sigmoid((radius[:, None, None] - dist) * (resolution / 4))
    fg = colour[:, :, None, None] * (0.35 + 0.65 * stripes[:, None])
    img = background[:, :, None, None] * (1 - mask[:, None]) + fg * mask[:, None]
    img = img + 0.06 * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), y.to(torch.int64)


def _hue_to_rgb(h: Tensor) -> Tensor:
    k = (torch.tensor([5.0, 3.0, 1.0]) + h[:, None] * 6) % 6
    return 1 - torch.clamp(torch.minimum(k, 4 - k), 0, 1)
