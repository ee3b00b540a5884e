"""service.plan_workers: `sweep worker`'s options → GPUs, processes, threads and child arguments (no GPU needed)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from sweep.service import ServiceError, WorkerPlan, plan_workers

URL = "sqlite:///storage/sweep.db"


def _plan(study: str | None = "s", *, gpus: tuple[int, ...] = (0, 1), **kw: Any) -> WorkerPlan:
    """A plan on a machine with 8 cores that sees ``gpus``."""
    return plan_workers(study, storage_url=URL, visible=lambda: list(gpus), cpu_count=8, **kw)


@pytest.fixture(autouse=True)
def _no_inherited_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_one_cpu_worker_runs_here_with_every_core() -> None:
    plan = _plan()
    assert plan == WorkerPlan("auto", 8)  # no slots: this process; auto resolves later
    assert _plan(threads=3).threads == 3
    assert _plan(device="cuda").threads is None  # a GPU worker keeps torch's default


def test_one_gpu_is_pinned_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = _plan(gpu=[1])
    assert plan.slots == () and plan.device == "cuda" and plan.env == {"CUDA_VISIBLE_DEVICES": "1"}
    assert plan.threads is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")  # Slurm handed us physical GPUs 4 and 5
    plan = _plan(gpu=[1])
    plan.pin_here()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"


def test_several_gpus_become_supervised_children_sharing_the_cores() -> None:
    plan = _plan(all_gpus=True, per_gpu=2, n_trials=3, artifacts="/shared/a", wait_paused=True)
    assert [s.label for s in plan.slots] == ["gpu0.0", "gpu0.1", "gpu1.0", "gpu1.1"]
    assert plan.threads == 2
    assert plan.child_args(plan.slots[0]) == [
        "worker",
        "s",
        "--device",
        "cuda",
        "--threads",
        "2",
        "--artifacts",
        "/shared/a",
        "--wait",
        "--n-trials",
        "3",
    ]


def test_cpu_workers_without_a_study_name() -> None:
    plan = _plan(None, workers=3, threads=1)
    assert [s.label for s in plan.slots] == ["cpu0", "cpu1", "cpu2"]
    assert plan.child_args(plan.slots[2]) == ["worker", "--device", "cpu", "--threads", "1"]
    # The storage URL (it may hold a password) goes by environment, never on a command line.
    assert all(s.env["SWEEP_STORAGE"] == URL for s in plan.slots)
    assert _plan(workers=3, device="cuda").slots == ()  # --workers counts CPU workers only


@pytest.mark.parametrize(
    ("kw", "visible", "message"),
    [
        ({"all_gpus": True}, (), "--gpus all: no CUDA GPU is visible on this machine"),
        ({"gpu": [0, 3]}, (0, 1), "--gpu 3: no such GPU; visible GPUs: 0, 1"),
        ({"gpu": [0]}, (), "--gpu 0: no such GPU; visible GPUs: none"),
    ],
)
def test_bad_gpu_choices_are_one_line(kw: dict[str, Any], visible: tuple[int, ...], message: str) -> None:
    with pytest.raises(ServiceError, match="^" + message.replace("(", r"\(")):
        _plan(gpus=visible, **kw)


@pytest.mark.parametrize(
    ("interval", "grace", "ok"), [("10", "19", False), ("1", "2", True), ("3", None, True), ("20", None, False)]
)
def test_a_grace_period_under_two_heartbeats_is_refused(
    monkeypatch: pytest.MonkeyPatch, interval: str, grace: str | None, ok: bool
) -> None:
    monkeypatch.setenv("SWEEP_HEARTBEAT_INTERVAL", interval)
    if grace is None:
        monkeypatch.delenv("SWEEP_GRACE_PERIOD", raising=False)  # the default, 30 s
    else:
        monkeypatch.setenv("SWEEP_GRACE_PERIOD", grace)
    if ok:
        _plan()
        return
    with pytest.raises(
        ServiceError,
        match=rf"^SWEEP_GRACE_PERIOD=\d+ is less than twice SWEEP_HEARTBEAT_INTERVAL="
        rf"{interval}: .* at least {2 * int(interval)} s$",
    ):
        _plan()
