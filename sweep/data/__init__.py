"""Data for training: data sets as uint8 tensors, batched augmentation, device-resident batches.

Images are decoded once per machine into a cache (:mod:`~sweep.data.datasets`); training then works
on uint8 tensors that live on the device for the whole process (:mod:`~sweep.data.residency`):
batches are index slices of a device ``randperm`` and augmentation is a handful of batched tensor ops
(:mod:`~sweep.data.augmentation`), so there is no DataLoader, no PIL and no per-sample Python. The
public names of the three modules are re-exported here; import from ``sweep.data``.
"""

from sweep.data.augmentation import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    augment,
    augment_view,
    normalize,
    random_crop,
)
from sweep.data.datasets import (
    DEFAULT_CACHE_DIR,
    SYNTHETIC_CLASSES,
    SYNTHETIC_DEFAULT_SIZE,
    DataBundle,
    DataError,
    Split,
    check_data,
    decode_image,
    decode_images,
    load_data,
    load_split,
    make_synthetic,
    resize_uint8,
    select_classes,
)
from sweep.data.residency import DeviceData, batch_indices, clear_device_cache, device_data

__all__ = [
    "DEFAULT_CACHE_DIR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_DEFAULT_SIZE",
    "DataBundle",
    "DataError",
    "DeviceData",
    "Split",
    "augment",
    "augment_view",
    "batch_indices",
    "check_data",
    "clear_device_cache",
    "decode_image",
    "decode_images",
    "device_data",
    "load_data",
    "load_split",
    "make_synthetic",
    "normalize",
    "random_crop",
    "resize_uint8",
    "select_classes",
]
