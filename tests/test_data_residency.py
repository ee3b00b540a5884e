"""sweep.data.residency: shuffled batch indices and the device-resident copy of a data set."""

from __future__ import annotations

import torch

from sweep.data import batch_indices, device_data, load_data


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
