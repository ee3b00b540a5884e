"""Batched, on-device augmentation of uint8 images and their normalization for the network.

A handful of whole-batch tensor ops with no host synchronisation and no per-sample Python: crop and
flip are one gather over a strided view, jitter and cutout are broadcasts (the README says what
``aug_strength`` means).
"""

from __future__ import annotations

import functools
import threading

import torch
from torch import Tensor

from sweep.spec import check

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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
    check("train.aug_strength", strength, error=ValueError)
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
    images = buf[: halves * plane].view(halves, b, c, hp, wp)[:, :, :, pad : pad + h, pad : pad + w]
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
