"""Several workers from one command: one child process per GPU slot (or per CPU worker), supervised.

Each child is an ordinary ``sweep worker`` (so any launcher — shell, systemd, Kubernetes, Slurm — can
start the same thing by hand), pinned to its GPU with CUDA_VISIBLE_DEVICES. The parent restarts a
child that crashes (a bounded number of times), and passes Ctrl-C / SIGTERM on: the first asks every
child to finish its epoch and hand its trial back, the second kills them.

Ctrl-C at a terminal reaches the whole process group, children included, and the supervisor forwards a
SIGTERM too: a child counting both as two signals would exit at once, its trial left RUNNING. So the
children of a supervisor start with SIGINT ignored and are told (SUPERVISED_ENV) that stopping is the
supervisor's: they ignore SIGINT throughout and take a repeated SIGTERM (systemd and Slurm signal every
process of a job) as the same stop. One Ctrl-C is one graceful stop; a second makes the supervisor
kill them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sweep.errors import EX_UNAVAILABLE

# Exit code of a worker whose CUDA context broke (EX_TEMPFAIL): the supervisor restarts it.
EXIT_DEVICE_LOST = 75
# Exit code of a worker that waited out an unreachable database for SWEEP_DB_PATIENCE (EX_UNAVAILABLE,
# sweep.outage): restarted after a backoff (OUTAGE_BACKOFF_S doubling, up to 5 min), OUTAGE_RESTARTS times.
EXIT_DB_UNAVAILABLE = EX_UNAVAILABLE
OUTAGE_BACKOFF_S = 10.0
OUTAGE_RESTARTS = 10
# Set to "1" in a supervised child's environment: its stop signals are the supervisor's to escalate.
SUPERVISED_ENV = "SWEEP_SUPERVISED"


@dataclass(frozen=True)
class Slot:
    """One child worker: a label for its output, its device and its extra environment."""

    label: str
    device: str
    env: dict[str, str]


def physical_gpu(index: int) -> str:
    """The CUDA_VISIBLE_DEVICES entry for visible GPU ``index``.

    Under Slurm or Kubernetes this process may already see a subset ("2,3"): index 0 is then "2".
    """
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    entries = [e.strip() for e in inherited.split(",") if e.strip()]
    return entries[index] if index < len(entries) else str(index)


def visible_gpus() -> list[int]:
    """Indices of the GPUs this process sees, counted without initialising CUDA in it.

    A later CUDA_VISIBLE_DEVICES (one pinned GPU) must still take effect when training starts in
    this process, and CUDA reads it once, at initialisation. NVML counts without initialising CUDA;
    where NVML is unavailable torch would fall back to cudaGetDeviceCount, which does initialise
    it (``--gpu 1`` would then train on GPU 0), so the count is taken in a child process instead.
    """
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    if not torch.cuda._is_compiled():
        return []
    n = torch.cuda._device_count_nvml()
    if n < 0:
        code = "import torch; print(torch.cuda.device_count())"
        try:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
            n = int(out.stdout.strip().splitlines()[-1])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            n = 0
    return list(range(n))


def gpu_slots(gpus: Sequence[int], per_gpu: int) -> list[Slot]:
    """One slot per (GPU, replica); each child sees only its GPU, as cuda:0."""
    return [
        Slot(
            label=f"gpu{g}" + (f".{r}" if per_gpu > 1 else ""),
            device="cuda",
            env={"CUDA_VISIBLE_DEVICES": physical_gpu(g)},
        )
        for g in gpus
        for r in range(per_gpu)
    ]


def cpu_slots(n: int) -> list[Slot]:
    """N CPU workers, none of which may see a GPU."""
    return [Slot(label=f"cpu{i}", device="cpu", env={"CUDA_VISIBLE_DEVICES": ""}) for i in range(n)]


def supervise(
    slots: Sequence[Slot],
    child_args: Callable[[Slot], list[str]],
    *,
    max_restarts: int = 3,
    log: Callable[[str], None] = print,
) -> int:
    """Run every slot as a child process until all finish; return 0 when every child ended cleanly."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    restarts: dict[str, int] = {s.label: 0 for s in slots}
    outages: dict[str, int] = {s.label: 0 for s in slots}
    later: dict[str, float] = {}  # label → when it restarts (an outage's backoff)
    results: dict[str, int] = {}
    signals_seen = 0
    last_signal = 0

    def start(slot: Slot) -> None:
        env = {**os.environ, **slot.env, "SWEEP_WORKER_LABEL": slot.label}
        env[SUPERVISED_ENV] = "1"
        # Ignored from the start: a Ctrl-C while the child still imports torch must not kill it either.
        procs[slot.label] = subprocess.Popen(
            [sys.executable, "-m", "sweep", *child_args(slot)], env=env, preexec_fn=_ignore_sigint
        )

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal signals_seen, last_signal
        signals_seen += 1
        last_signal = signum
        how = signal.SIGTERM if signals_seen == 1 else signal.SIGKILL
        log(
            "stopping workers: each finishes its epoch and hands its trial back"
            if signals_seen == 1
            else "stopping workers now"
        )
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(how)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for slot in slots:
            start(slot)
        by_label = {s.label: s for s in slots}
        while procs or later:
            for label, at in list(later.items()):
                if signals_seen:
                    del later[label]
                    results[label] = EXIT_DB_UNAVAILABLE
                elif time.monotonic() >= at:
                    del later[label]
                    start(by_label[label])
            for label, p in list(procs.items()):
                code = p.poll()
                if code is None:
                    continue
                del procs[label]
                if code == 0 or signals_seen or code == 2:
                    # 2 = a usage/config error: restarting would only repeat it.
                    results[label] = code
                    continue
                if code == EXIT_DB_UNAVAILABLE and outages[label] < OUTAGE_RESTARTS:
                    # Not a crash: the database is away. Later, not at once, and not counted as one.
                    outages[label] += 1
                    delay = min(OUTAGE_BACKOFF_S * 2 ** (outages[label] - 1), 300.0)
                    log(
                        f"[{label}] the database stayed unreachable; restarting it in {delay:.0f} s "
                        f"({outages[label]}/{OUTAGE_RESTARTS})"
                    )
                    later[label] = time.monotonic() + delay
                    continue
                restarts[label] += 1
                why = f"exited with code {code}"
                if code == EXIT_DEVICE_LOST:
                    why += " (its CUDA context broke; a new process gets a new one)"
                if restarts[label] > max_restarts:
                    log(f"[{label}] {why}, {restarts[label]} times; giving up on it")
                    results[label] = code
                    continue
                log(f"[{label}] {why}; restarting ({restarts[label]}/{max_restarts})")
                start(by_label[label])
            time.sleep(0.2)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if signals_seen > 1:
        return 128 + last_signal  # killed on the user's insistence: the shell's code for that signal
    return 0 if all(c == 0 for c in results.values()) else max(abs(c) for c in results.values())


def _ignore_sigint() -> None:
    """Run in a child between fork and exec: SIGINT ignored, which Python then leaves ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
