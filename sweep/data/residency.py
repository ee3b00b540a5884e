"""Device residency: a bundle's uint8 splits copied to the device once per process, batches as index
slices of a device ``randperm`` (or gathered in pinned host memory when the device is too small)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import Tensor

from sweep.data.datasets import DataBundle


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
