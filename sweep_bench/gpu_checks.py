"""Checks of the trial engine that only a GPU can settle, for ``scripts/gpu-bench``.

OOM recovery: a worker runs two trials of one study, the first sized to run out of GPU memory (batch
2048 at 768 px), the second small. After the first has failed with reason ``oom`` the memory it held
must be back with the CUDA driver (``memory_reserved``), and the second must complete with its data
resident on the GPU, not in host memory. On a machine without CUDA it reports itself skipped.

    sweep bench gpu-checks --json out.json
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sweep_bench import write_json


def oom_recovery(folder: Path) -> dict[str, Any]:
    """Figures of one OOM trial followed by a small one, through the worker's own trial runner."""
    import optuna
    import torch

    from sweep.data import residency
    from sweep.service import WorkerEvents, create_study, run_worker

    url = f"sqlite:///{folder / 'oom.db'}"
    overrides = [
        "n_trials=2",
        "epochs=1",
        "data.subset=4000",
        "params.batch_size.choices=[64, 2048]",
        "params.frozen_layers.high=0",
        'params.resolution={type="categorical", choices=[32, 768]}',
        "train.stem=cifar",
    ]
    create_study("demo", storage_url=url, name="oom", overrides=overrides)
    study = optuna.load_study(study_name="oom", storage=url)
    study.enqueue_trial({"lr": 1e-3, "batch_size": 2048, "frozen_layers": 0, "aug_strength": 0.0, "resolution": 768})
    study.enqueue_trial({"lr": 1e-3, "batch_size": 64, "frozen_layers": 0, "aug_strength": 0.0, "resolution": 32})
    after: dict[str, Any] = {}

    def finished(number: int, state: str, value: float | None, why: str | None) -> None:
        if number == 0:  # called once the runner has cleaned up after the trial
            after.update(reason=why, reserved=torch.cuda.memory_reserved(), allocated=torch.cuda.memory_allocated())

    run_worker("oom", storage_url=url, device="cuda", events=WorkerEvents(trial_finished=finished))
    trials = optuna.load_study(study_name="oom", storage=url).trials
    resident = [d.resident for d in residency._DEVICE_CACHE.values()]
    return {
        "oom_trial_reason": after.get("reason"),
        "reserved_after_oom_bytes": after.get("reserved"),
        "allocated_after_oom_bytes": after.get("allocated"),
        "next_trial_state": trials[1].state.name if len(trials) > 1 else None,
        "data_resident_after_oom": all(resident) if resident else None,
        "passed": after.get("reason") == "oom"
        and (after.get("reserved") or 0) < (1 << 30)
        and len(trials) > 1
        and trials[1].state.name == "COMPLETE"
        and all(resident),
    }


def run_gpu_checks(json_path: Path | None = None) -> dict[str, Any]:
    """Run the checks (``sweep bench gpu-checks``), print and write their figures; skipped without CUDA."""
    import torch

    if not torch.cuda.is_available():
        result: dict[str, Any] = {"skipped": "no CUDA device"}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = {"oom_recovery": oom_recovery(Path(tmp)), "device_name": torch.cuda.get_device_name()}
    print(result)
    write_json(result, json_path)
    return result
