"""GPU slot planning (no GPU needed): children are pinned through the inherited device list."""

from __future__ import annotations

import pytest

from sweep.supervisor import cpu_slots, gpu_slots, physical_gpu


def test_gpu_slots_pin_one_gpu_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots = gpu_slots([0, 1], per_gpu=2)
    assert [s.label for s in slots] == ["gpu0.0", "gpu0.1", "gpu1.0", "gpu1.1"]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "0", "1", "1"]
    assert all(s.device == "cuda" for s in slots)


def test_inherited_visible_devices_are_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    # Slurm/Kubernetes handed this process physical GPUs 2 and 3: visible index 1 is physical 3.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert physical_gpu(0) == "2" and physical_gpu(1) == "3"
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in gpu_slots([0, 1], per_gpu=1)] == ["2", "3"]


def test_cpu_slots_hide_gpus() -> None:
    slots = cpu_slots(3)
    assert [s.label for s in slots] == ["cpu0", "cpu1", "cpu2"]
    assert all(s.env["CUDA_VISIBLE_DEVICES"] == "" and s.device == "cpu" for s in slots)


def test_gpus_are_counted_without_initialising_cuda_when_nvml_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    # cudaGetDeviceCount would initialise CUDA here, before `--gpu 1` sets CUDA_VISIBLE_DEVICES.
    import torch

    from sweep.supervisor import visible_gpus

    def init_cuda() -> int:
        raise AssertionError("CUDA initialised in the process that pins a GPU afterwards")

    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: -1)
    monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", init_cuda, raising=False)
    monkeypatch.setattr(torch.cuda, "_is_compiled", lambda: True)
    assert visible_gpus() == []  # counted by a child process: this machine has no GPU
