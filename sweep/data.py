"""Datasets as uint8 tensors, a decode-once cache, batched augmentation and device-resident batches.

Images are decoded (and resized to the sweep's resolution) once per machine into a cache file that
every later trial and worker loads memory-mapped. Training then works on uint8 tensors that live on
the device for the whole process: batches are index slices of a device ``randperm`` and augmentation
is a handful of batched tensor ops, so there is no DataLoader, no PIL and no per-sample Python.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sweep.errors import SpecError
from sweep.spec import DATASETS, check

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CACHE_DIR = "storage/cache"
SYNTHETIC_DEFAULT_SIZE = 2000
# The subset is a property of the data, not of a trial: a fixed seed keeps it identical for every
# trial (so its decoded images can be cached once), while `seed` only moves the validation split.
_SUBSET_SEED = 0
_CACHE_FORMAT = 1


class DataError(Exception):
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
    try:  # the spec's rules (sweep.spec.SETTINGS), for callers that did not come through a spec
        for key, value in (("data.name", name), ("data.resolution", resolution),
                           ("data.val_fraction", val_fraction), ("seed", seed)):
            check(key, value)
        if subset is not None:
            check("data.subset", subset)
    except SpecError as e:
        raise DataError(e.terse()) from None

    if name == "synthetic":
        n_train = subset if subset is not None and classes is None else SYNTHETIC_DEFAULT_SIZE
        train_x, train_y = make_synthetic(n_train, resolution, split="train")
        test_x, test_y = make_synthetic(max(n_train // 4, 10), resolution, split="test")
        names = SYNTHETIC_CLASSES
        train_hash, test_hash = _content_hash(train_x, train_y), _content_hash(test_x, test_y)
    else:
        # With a class filter the whole split is cached once and the subset taken after filtering.
        train = load_split(name, root, "train", resolution=resolution, cache_dir=cache_dir,
                           subset=subset if classes is None else None)
        test = load_split(name, root, "test", resolution=resolution, cache_dir=cache_dir)
        if train.classes != test.classes:
            raise DataError(
                f"data.root={str(root)!r}: train classes {list(train.classes)} differ from test classes "
                f"{list(test.classes)}; both folders need the same class sub-folders"
            )
        train_x, train_y, test_x, test_y = train.x, train.y, test.x, test.y
        names = train.classes
        train_hash, test_hash = train.hash, test.hash
    if classes is not None:
        (train_x, train_y), (test_x, test_y) = (select_classes(x, y, names, classes)
                                                for x, y in ((train_x, train_y), (test_x, test_y)))
        keep = _stratified_subset(train_y, subset)
        train_x, train_y = train_x[keep], train_y[keep]
        names = tuple(classes)

    train_idx, val_idx = _split_indices(train_y, val_fraction, seed)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DataError(
            f"data.val_fraction={val_fraction}: leaves {len(train_idx)} training and {len(val_idx)} "
            f"validation images out of {len(train_y)}; use more images or a different fraction"
        )
    key = f"{name}|{train_hash}|{test_hash}|{resolution}|{val_fraction!r}|{seed}|{','.join(names)}"
    if classes is not None:
        key += f"|{subset}"  # the subset is taken here, after the split's content hash
    return DataBundle(
        train_x=train_x[train_idx],
        train_y=train_y[train_idx],
        val_x=train_x[val_idx],
        val_y=train_y[val_idx],
        test_x=test_x,
        test_y=test_y,
        classes=names,
        fingerprint=hashlib.blake2b(key.encode(), digest_size=8).hexdigest(),
    )


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a data set: uint8 ``[N, 3, R, R]`` images, int64 labels, class names, content hash."""

    x: Tensor
    y: Tensor
    classes: tuple[str, ...]
    hash: str


def load_split(
    name: str, root: str | Path, split: str, *, resolution: int = 32, subset: int | None = None,
    cache_dir: str | Path | None = None,
) -> Split:
    """The "train" or "test" split of an image data set (cifar10 or imagefolder), through the cache."""
    if cache_dir is None:
        cache_dir = os.environ.get("SWEEP_CACHE_DIR", DEFAULT_CACHE_DIR)
    entry = _cached_split(name, Path(root), split, resolution, subset, Path(cache_dir))
    return Split(x=entry["x"], y=entry["y"], classes=tuple(entry["classes"]), hash=entry["hash"])


def select_classes(
    x: Tensor, y: Tensor, names: Sequence[str], classes: Sequence[str]
) -> tuple[Tensor, Tensor]:
    """The images of ``classes`` (names from ``names``), relabelled 0..len(classes)-1 in that order."""
    unknown = [c for c in classes if c not in names]
    if unknown or len(set(classes)) != len(classes) or len(classes) < 2:
        raise DataError(
            f"data.classes={list(classes)!r}: need two or more distinct classes of this data set "
            f"({', '.join(names)})"
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


def _cached_split(
    name: str, root: Path, split: str, resolution: int, subset: int | None, cache_dir: Path
) -> dict:
    """One split as {x, y, classes, hash}, decoded on the first call and memory-mapped afterwards."""
    root = root.expanduser().resolve()
    # Folder mtimes change when files are added or removed, so a changed image folder gets a new
    # cache entry without listing (let alone decoding) its files on every load.
    source = f"{name}|{root}|{split}|{resolution}|{subset}|{_source_stamp(name, root, split)}"
    digest = hashlib.blake2b(source.encode(), digest_size=8).hexdigest()
    path = cache_dir / f"{name}-{split}-{resolution}px-{subset or 'all'}-{digest}.pt"
    if path.is_file():
        try:
            entry = torch.load(path, mmap=True, weights_only=True)
            if entry.get("format") == _CACHE_FORMAT:
                return entry
        except (RuntimeError, OSError, EOFError, ValueError):
            pass  # unreadable (e.g. from an older torch): rebuild it below
    x, y, classes = _decode_split(name, root, split, resolution, subset)
    entry = {"format": _CACHE_FORMAT, "x": x, "y": y, "classes": list(classes), "hash": _content_hash(x, y)}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _atomic_save(entry, path)
    except OSError:
        return entry  # a read-only cache costs speed, not correctness
    return torch.load(path, mmap=True, weights_only=True)


def _source_stamp(name: str, root: Path, split: str) -> str:
    if name != "imagefolder":
        return ""
    folder = root / "train" if split == "train" else _test_dir(root)
    if folder is None or not folder.is_dir():
        return "missing"
    stamps = [f"{folder.stat().st_mtime_ns}"]
    stamps += [f"{e.name}:{e.stat().st_mtime_ns}" for e in sorted(os.scandir(folder), key=lambda e: e.name)]
    return ";".join(stamps)


def _atomic_save(obj: dict, path: Path) -> None:
    # Save to a temporary file in the same folder then rename: concurrent workers either see the
    # whole file or none of it, and two workers racing to build the same entry are both fine.
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _content_hash(x: Tensor, y: Tensor) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(str(tuple(x.shape)).encode())
    h.update(x.contiguous().numpy().tobytes())
    h.update(y.contiguous().numpy().tobytes())
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
        raise DataError(
            f"data.root={str(root)!r}: folder not found; it must contain train/ and test/ (or val/)"
        )
    folder = root / "train" if split == "train" else _test_dir(root)
    if folder is None or not folder.is_dir():
        want = "train/" if split == "train" else "test/ (or val/)"
        raise DataError(f"data.root={str(root)!r}: no {want} folder; expected {want}<class>/<image> files")
    try:
        ds = ImageFolder(str(folder))
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"data.root={str(root)!r}: {folder}: {str(e).splitlines()[0]}") from e
    if len(ds.classes) < 2:
        raise DataError(
            f"data.root={str(root)!r}: {folder} has {len(ds.classes)} class folder(s); need at least 2"
        )
    return [p for p, _ in ds.samples], [t for _, t in ds.samples], list(ds.classes)


def decode_image(path: str, resolution: int) -> np.ndarray:
    """Decode one image to RGB ``[resolution, resolution, 3]`` uint8: shorter side resized, centre crop."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
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


# ---------------------------------------------------------------------------------------- augmentation

_MEAN_UINT8 = tuple(round(255 * m) for m in IMAGENET_MEAN)
# normalize() as one multiply-add: (x / 255 - mean) / std == x * scale + bias.
_NORM_SCALE = tuple(1 / (255 * s) for s in IMAGENET_STD)
_NORM_BIAS = tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))


def augment(x: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Batched random augmentation of uint8 images ``[B, 3, H, W]``; returns uint8 of the same shape.

    ``strength`` in [0, 1] (sizes in pixels are for 32 px images and scale with H):

    * 0: identity (the input tensor itself is returned).
    * (0, 0.5]: random crop after zero padding of round(8 * s) px (4 px at 0.5, the usual CIFAR
      setting) and a random horizontal flip.
    * (0.5, 1]: with t = 2 * (s - 0.5), additionally brightness and contrast jitter of +-0.4 * t
      and a cutout square of side round(16 * t) px filled with the mean colour.

    ``generator`` must live on x's device; None uses the global RNG. Every step is a few whole-batch
    tensor ops with no host synchronisation, so on a GPU it stays asynchronous.
    """
    out = augment_view(x, strength, generator)
    return out if out is x else out.contiguous()


def augment_view(x: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """:func:`augment` without its final copy: the result may be a strided view.

    The network input is a float copy anyway (:func:`normalize`), and converting straight from the
    view saves one pass over the batch.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"train.aug_strength={strength!r}: must be between 0 and 1")
    if strength == 0:
        return x
    scale = x.shape[-2] / 32
    pad = int(round(8 * min(strength, 0.5) * scale))
    x = _crop_flip(x, pad, generator, flip=True)
    if strength > 0.5:
        t = 2 * (strength - 0.5)
        x = _jitter(x, 0.4 * t, generator)
        side = int(round(16 * t * scale))
        if side > 0:
            x = _cutout(x, side, generator)
    return x


def random_crop(x: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """Per-image random crop of the batch zero-padded by ``pad`` px (shifts of -pad..pad each way)."""
    return _crop_flip(x, pad, generator, flip=False).contiguous()


def _crop_flip(x: Tensor, pad: int, generator: torch.Generator | None, *, flip: bool) -> Tensor:
    """Random crop of the ``pad``-padded batch and (``flip``) random horizontal flip; a strided view.

    The batch is copied once into a zero-padded buffer (plus a mirrored copy when flipping). Every
    crop of image b, channel c is then a *contiguous* run of that buffer: ``H`` padded rows starting
    at row dy, column dx, of which the first ``W`` bytes of each row are kept. An overlapping
    ``as_strided`` view has one such run per start offset, so all crops (and the flip, which is just
    a start offset in the mirrored half) are a single ``index_select`` of B*C rows: a memcpy per
    row, instead of an index tensor and a gather per pixel (30x slower on CPU).
    """
    b, c, h, w = x.shape
    halves = 2 if flip else 1
    if pad == 0 and not flip:
        return x
    x = x.contiguous()
    hp, wp = h + 2 * pad, w + 2 * pad
    plane = b * c * hp * wp
    # 2 * pad spare bytes: the last row of the last run reaches that far past the buffer.
    buf = _zero_bordered(halves * plane + 2 * pad, (b, c, h, w, pad, halves), x.device)
    images = buf[: halves * plane].view(halves, b, c, hp, wp)[:, :, :, pad:pad + h, pad:pad + w]
    _copy_wide(images[0], x)
    if flip:
        _copy_wide(images[1], x.flip(3))
    dev = x.device
    if pad > 0:
        dy = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
        offset = dy * wp + dx
    else:
        offset = torch.zeros(b, dtype=torch.int64, device=dev)
    if flip:
        flipped = torch.rand(b, device=dev, generator=generator) < 0.5
        offset = offset + flipped * plane
    starts = (torch.arange(b * c, device=dev) * (hp * wp)).view(b, c) + offset[:, None]
    run = h * wp
    runs = buf.as_strided((buf.numel() - run + 1, run), (1, 1))
    return runs.index_select(0, starts.view(-1)).view(b, c, h, wp)[..., :w]


_SCRATCH = threading.local()


def _zero_bordered(numel: int, layout: tuple[int, ...], device: torch.device) -> Tensor:
    """A zeroed uint8 buffer for :func:`_crop_flip`, reused per thread on the CPU.

    Only the image interiors are ever written, so the zero borders of a reused buffer stay zero.
    A fresh 1-2 MB buffer costs a memset (and often page faults) on every batch on the CPU, a tenth
    of the whole augmentation; the CUDA caching allocator makes the fresh one cheap there, and
    a fresh one is safe across streams.
    """
    if device.type != "cpu":
        return torch.zeros(numel, dtype=torch.uint8, device=device)
    key = (numel, layout)
    cached = getattr(_SCRATCH, "buffer", None)
    if cached is None or cached[0] != key:
        cached = (key, torch.zeros(numel, dtype=torch.uint8))
        _SCRATCH.buffer = cached  # one per thread: a new batch shape replaces the old buffer
    return cached[1]


def _copy_wide(dst: Tensor, src: Tensor) -> None:
    """``dst.copy_(src)`` for uint8 tensors whose rows are only partly copied (a padded interior).

    A strided uint8 copy moves one byte per step; viewing both sides as the widest integer that
    divides the row width and offsets moves up to 8 bytes per step.
    """
    for dtype, size in ((torch.int64, 8), (torch.int32, 4), (torch.int16, 2)):
        if all(s % size == 0 for s in (*dst.stride()[:-1], dst.storage_offset(), dst.shape[-1])):
            dst.view(dtype).copy_(src.view(dtype))
            return
    dst.copy_(src)


def _jitter(x: Tensor, amount: float, generator: torch.Generator | None) -> Tensor:
    b = x.shape[0]
    f = x.to(torch.float32, memory_format=torch.contiguous_format)
    contrast = 1 + amount * (2 * torch.rand(b, 1, 1, 1, device=x.device, generator=generator) - 1)
    brightness = 1 + amount * (2 * torch.rand(b, 1, 1, 1, device=x.device, generator=generator) - 1)
    mean = f.mean(dim=(1, 2, 3), keepdim=True)
    # ((f - mean) * contrast + mean) * brightness as one per-image multiply-add, in place; + 0.5
    # then truncation by the uint8 cast rounds to the nearest integer.
    gain = contrast * brightness
    shift = mean * (1 - contrast) * brightness + 0.5
    return f.mul_(gain).add_(shift).clamp_(0, 255).to(torch.uint8)


def _cutout(x: Tensor, side: int, generator: torch.Generator | None) -> Tensor:
    """Fill a random square per image with the mean colour, in place on ``x`` (a fresh tensor)."""
    b, c, h, w = x.shape
    dev = x.device
    # Centres anywhere in the image, so the square is sometimes partly outside (DeVries & Taylor).
    cy = torch.randint(0, h, (b, 1, 1), device=dev, generator=generator)
    cx = torch.randint(0, w, (b, 1, 1), device=dev, generator=generator)
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    lo = side // 2
    rows = (ys >= cy - lo) & (ys < cy - lo + side)  # [B, H, 1]
    cols = (xs >= cx - lo) & (xs < cx - lo + side)  # [B, 1, W]
    hole = rows & cols
    # One masked_fill per channel (a scalar fill): far faster on CPU than torch.where over uint8.
    for ch, value in enumerate(_MEAN_UINT8):
        x[:, ch].masked_fill_(hole, value)
    return x


def normalize(x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 ``[B, 3, H, W]`` -> float, scaled to [0, 1] then standardised with ImageNet mean/std.

    One conversion and one in-place multiply-add; the memory format of ``x`` (e.g. channels_last)
    is kept, and ``x`` may be a strided view (converted without an extra copy).
    """
    scale = _constant(_NORM_SCALE, x.device, dtype)
    bias = _constant(_NORM_BIAS, x.device, dtype)
    out = x.to(dtype, copy=True)  # copy: float input must not be changed in place below
    # Two in-place passes over a cache-resident batch; addcmul(..., out=out) is ~5x slower on CPU.
    return out.mul_(scale).add_(bias)


@functools.lru_cache(maxsize=64)
def _constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    # Made once per device: torch.tensor(..., device="cuda") is a blocking copy that would stall
    # the GPU queue on every batch.
    return torch.tensor(values, dtype=dtype, device=device)[None, :, None, None]


# ------------------------------------------------------------------------------------ device residency


class DeviceData:
    """The bundle's uint8 splits moved to ``device`` once; batches are index slices, no DataLoader.

    When the data would take more than half of the free device memory it stays in (pinned) host
    memory instead and each batch is gathered there and copied asynchronously.
    """

    def __init__(self, bundle: DataBundle, device: str | torch.device) -> None:
        self.device = torch.device(device)
        self.fingerprint = bundle.fingerprint
        self.classes = bundle.classes
        tensors = [bundle.train_x, bundle.train_y, bundle.val_x, bundle.val_y, bundle.test_x, bundle.test_y]
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        self.resident = self.device.type == "cpu" or nbytes < 0.5 * _free_memory(self.device)
        if self.device.type == "cpu":
            moved = tensors  # already there (and memory-mapped from the cache where possible)
        elif self.resident:
            moved = [t.to(self.device, non_blocking=False) for t in tensors]
        else:
            moved = [t.pin_memory() for t in tensors]
        self.train_x, self.train_y, self.val_x, self.val_y, self.test_x, self.test_y = moved

    def fetch(self, x: Tensor, y: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Rows ``idx`` of (x, y) on the device."""
        # index_select copies whole rows (a memcpy per image); x[idx] goes through the generic
        # advanced-indexing kernel, which moves uint8 images a byte at a time (~30x slower on CPU).
        if self.resident:
            return x.index_select(0, idx), y.index_select(0, idx)
        idx = idx.cpu()
        return (
            x.index_select(0, idx).pin_memory().to(self.device, non_blocking=True),
            y.index_select(0, idx).pin_memory().to(self.device, non_blocking=True),
        )

    def train_batches(
        self, batch_size: int, generator: torch.Generator, *, drop_last: bool = True
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Shuffled training batches (see :func:`batch_indices`)."""
        where = self.train_x.device if self.resident else None
        for idx in batch_indices(len(self.train_y), batch_size, generator, drop_last=drop_last, device=where):
            yield self.fetch(self.train_x, self.train_y, idx)


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return 1 << 62


def batch_indices(
    n: int,
    batch_size: int,
    generator: torch.Generator,
    *,
    drop_last: bool = True,
    device: str | torch.device | None = None,
) -> list[Tensor]:
    """Index tensors of one shuffled epoch, drawn from a CPU ``generator`` (same on every device).

    The permutation is copied to ``device`` once per epoch: a blocking host-to-device copy per
    batch would synchronise the GPU every step. With ``drop_last`` the ragged tail is dropped (a
    tiny last batch is noisy for BatchNorm), unless there are fewer than ``batch_size`` images, in
    which case the epoch is a single batch.
    """
    perm = torch.randperm(n, generator=generator)
    if device is not None:
        perm = perm.to(device)
    if drop_last and n >= batch_size:
        n = n - n % batch_size
    return list(perm[:n].split(batch_size))


_DEVICE_CACHE: OrderedDict[tuple[str, str], DeviceData] = OrderedDict()
_DEVICE_CACHE_SIZE = 2


def device_data(bundle: DataBundle, device: str | torch.device) -> DeviceData:
    """The process-wide :class:`DeviceData` for (bundle fingerprint, device): copied once, then reused."""
    key = (bundle.fingerprint, str(torch.device(device)))
    if key in _DEVICE_CACHE:
        _DEVICE_CACHE.move_to_end(key)
        return _DEVICE_CACHE[key]
    while len(_DEVICE_CACHE) >= _DEVICE_CACHE_SIZE:  # a long-lived worker may switch data sets
        _DEVICE_CACHE.popitem(last=False)
    _DEVICE_CACHE[key] = data = DeviceData(bundle, device)
    return data


def clear_device_cache() -> None:
    """Forget the process-wide :class:`DeviceData` copies (their device memory is freed with them)."""
    _DEVICE_CACHE.clear()
