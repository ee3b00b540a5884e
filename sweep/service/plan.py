"""``sweep worker``'s options turned into a plan: which GPUs, how many processes, threads each."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from sweep.errors import env_int
from sweep.service.common import ServiceError
from sweep.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL
from sweep.supervisor import Slot, cpu_slots, gpu_slots, physical_gpu, visible_gpus


@dataclass(frozen=True)
class WorkerPlan:
    """How ``sweep worker`` runs: one worker in this process, or supervised children (``slots``)."""

    device: str  # this process's worker (children: each slot's)
    threads: int | None  # CPU threads per worker (None: torch's default)
    env: dict[str, str] = field(default_factory=dict)  # set here before training: one pinned GPU
    slots: tuple[Slot, ...] = ()  # one child process each; empty: run in this process
    study: str | None = None
    child_options: tuple[str, ...] = ()  # every child's options after its --device

    def child_args(self, slot: Slot) -> list[str]:
        """The ``sweep`` arguments of the child that runs ``slot``."""
        return ["worker", *([self.study] if self.study else []), "--device", slot.device, *self.child_options]

    def pin_here(self) -> None:
        """Apply ``env`` to this process (CUDA reads CUDA_VISIBLE_DEVICES once, when it starts)."""
        os.environ.update(self.env)


def plan_workers(
    study: str | None,
    *,
    storage_url: str,
    gpu: Sequence[int] = (),
    all_gpus: bool = False,
    per_gpu: int = 1,
    device: str = "auto",
    workers: int = 1,
    threads: int | None = None,
    n_trials: int | None = None,
    artifacts: str | None = None,
    wait_paused: bool = False,
    visible: Callable[[], list[int]] = visible_gpus,
    cpu_count: int | None = None,
) -> WorkerPlan:
    """Turn ``sweep worker``'s options into a plan: which GPUs, how many processes, threads each.

    ``gpu``: GPU indices (one child per GPU and replica); ``all_gpus``: every visible GPU.
    GPUs are counted by ``visible`` without starting CUDA in this process, so that one pinned GPU
    (``env``) still takes effect. Threads default to the cores shared by the processes.
    """
    check_heartbeat_timing()
    gpus = list(gpu)
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    if all_gpus:
        gpus = visible()
        if not gpus:
            raise ServiceError("--gpus all: no CUDA GPU is visible on this machine")
    elif gpus:
        seen = visible()
        bad = [g for g in gpus if g not in seen]
        if bad:
            shown = ", ".join(map(str, seen)) or "none"
            raise ServiceError(f"--gpu {bad[0]}: no such GPU; visible GPUs: {shown}")
    processes = len(gpus) * per_gpu if gpus else (workers if device in ("auto", "cpu") else 1)
    if processes > 1:
        # The storage URL reaches each child through its environment, never its argv: a password in
        # /proc/PID/cmdline is readable by every local user (`ps`), the environment by the owner only.
        slots = tuple(
            replace(s, env={**s.env, "SWEEP_STORAGE": storage_url})
            for s in (gpu_slots(gpus, per_gpu) if gpus else cpu_slots(workers))
        )
        threads = threads if threads is not None else max(1, cores // len(slots))
        options = ["--threads", str(threads)]
        options += ["--artifacts", artifacts] if artifacts else []
        options += ["--wait"] if wait_paused else []
        options += ["--n-trials", str(n_trials)] if n_trials else []
        return WorkerPlan(device, threads, slots=slots, study=study, child_options=tuple(options))
    env: dict[str, str] = {}
    if gpus:  # one GPU: pinned in this very process; CUDA was only counted via NVML, not started
        env["CUDA_VISIBLE_DEVICES"] = physical_gpu(gpus[0])
        device = "cuda"
    if threads is None and device in ("auto", "cpu"):
        threads = max(1, cores)
    return WorkerPlan(device, threads, env=env)


def check_heartbeat_timing() -> None:
    """Refuse a grace period shorter than two heartbeat intervals (read as ``open_storage`` reads them).

    A trial is failed as stale after the grace period without a beat: with less than two intervals,
    one beat late by a moment (a slow query, a loaded machine) gets a live worker's trial failed and
    run twice.
    """
    interval = env_int("SWEEP_HEARTBEAT_INTERVAL", HEARTBEAT_INTERVAL)
    grace = env_int("SWEEP_GRACE_PERIOD", GRACE_PERIOD)
    if grace < 2 * interval:
        raise ServiceError(
            f"SWEEP_GRACE_PERIOD={grace} is less than twice SWEEP_HEARTBEAT_INTERVAL={interval}: one late "
            f"heartbeat would fail a live worker's trial; use a grace period of at least {2 * interval} s"
        )
