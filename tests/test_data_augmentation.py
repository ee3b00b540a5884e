"""sweep.data.augmentation: crop, flip, jitter and cutout on uint8 batches, and normalize."""

from __future__ import annotations

import pytest
import torch

from sweep import data as data_mod
from sweep.data import augment, augment_view, augmentation, make_synthetic, normalize, random_crop


def pattern(n: int, h: int = 8, w: int = 8) -> torch.Tensor:
    """n copies of an image whose pixels are all distinct and non-zero."""
    img = (torch.arange(h * w) + 1).reshape(1, 1, h, w).repeat(n, 3, 1, 1)
    return img.to(torch.uint8)


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
            if torch.equal(out[i], src[i, :, dy : dy + h, dx : dx + w])
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
        windows = [src[i, :, dy : dy + h, dx : dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
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
            for window in [src[i, :, dy : dy + h, dx : dx + w]]
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
