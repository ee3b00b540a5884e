"""What every use case shares: the service's error, and how a study, its stored spec, its data and a device
are found.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from sweep import record
from sweep.errors import UserError
from sweep.objective import gpu_visible, load_study_data
from sweep.spec import StudySpec, spec_from_dict
from sweep.storage import mask_url, open_storage, sqlite_path, study_names


class ServiceError(UserError, RuntimeError):
    """A problem the user can fix, phrased on one line."""


def quiet_optuna() -> None:
    """Keep Optuna to warnings: no per-trial info lines, no heartbeat or experimental-feature warnings."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # We drive heartbeats ourselves around ask/tell (see sweep.heartbeat); Optuna warns it expects optimize().
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def stored_spec_dict(storage: optuna.storages.BaseStorage, name: str, wait_s: float = 5.0) -> dict[str, Any]:
    study_id = storage.get_study_id_from_name(name)
    deadline = time.monotonic() + wait_s
    while True:
        attrs = storage.get_study_user_attrs(study_id)
        if record.SPEC.name in attrs:
            return attrs[record.SPEC.name]
        if time.monotonic() > deadline:  # a concurrent `create` is between its two writes
            raise ServiceError(f"study {name!r} exists but has no sweep spec; it was not made by `sweep create`")
        time.sleep(0.1)


def resolve_study_name(storage: optuna.storages.BaseStorage, name: str | None, storage_url: str) -> str:
    """The named study, or the only study in the storage; a clear error otherwise."""
    names = study_names(storage)
    if name is None:
        if len(names) == 1:
            return names[0]
        if not names:
            raise ServiceError(f"no studies in {mask_url(storage_url)}; create one: sweep create SPEC")
        raise ServiceError(f"STUDY is required: {mask_url(storage_url)} holds {', '.join(sorted(names))}")
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise ServiceError(f"study {name!r} not found in {mask_url(storage_url)}; studies there: {known}")
    return name


def load_spec_of(storage: optuna.storages.BaseStorage, name: str) -> StudySpec:
    """The resolved spec a study stores."""
    return spec_from_dict(stored_spec_dict(storage, name, wait_s=0.0))


def open_read_only(storage_url: str) -> optuna.storages.RDBStorage:
    """Storage for commands that only read (report, status, list): never creates a database."""
    quiet_optuna()
    return open_storage(storage_url, create=False)


def resolve_device(device: str) -> str:
    """``auto`` → cuda when a GPU is visible, else cpu; a bad choice is an error."""
    if device == "auto":
        return "cuda" if gpu_visible() else "cpu"
    if device.startswith("cuda") and not gpu_visible():
        raise ServiceError(f"--device {device}: no CUDA GPU is visible on this machine; use --device cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ServiceError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    return device


def load_spec_data(spec: StudySpec, storage_url: str) -> Any:
    """The study's data on this machine (decoded once per machine into the cache)."""
    return load_study_data(spec, cache_dir(storage_url))


def cache_dir(storage_url: str) -> Path:
    env = os.environ.get("SWEEP_CACHE_DIR")
    if env:
        return Path(env)
    path = sqlite_path(storage_url)
    return (path.parent if path is not None else Path("storage")) / "cache"
