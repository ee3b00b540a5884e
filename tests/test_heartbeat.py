"""sweep.heartbeat: a trial's heartbeat thread beats, runs its check, and stops with its block."""

from __future__ import annotations

import threading
import time

from sweep.heartbeat import beating


class _Storage:
    """The two storage calls the heartbeat makes, counted."""

    def __init__(self, interval: float | None) -> None:
        self.interval = interval
        self.beats: list[int] = []

    def get_heartbeat_interval(self) -> float | None:
        return self.interval

    def record_heartbeat(self, trial_id: int) -> None:
        self.beats.append(trial_id)


def test_beats_until_the_block_ends_and_runs_the_check_after_each_beat() -> None:
    storage = _Storage(0.01)
    checks: list[int] = []
    with beating(storage, 7, on_beat=lambda: checks.append(len(storage.beats))):  # type: ignore[arg-type]
        deadline = time.monotonic() + 5
        while len(checks) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert not any(t.name == "heartbeat-7" for t in threading.enumerate())
    after = len(storage.beats)
    time.sleep(0.05)
    assert len(storage.beats) == after >= 3 and set(storage.beats) == {7}
    assert checks[:3] == [1, 2, 3]  # each check follows its beat


def test_a_failing_beat_or_check_does_not_end_the_thread() -> None:
    storage = _Storage(0.01)
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        raise RuntimeError("database unreachable")

    with beating(storage, 1, on_beat=flaky):  # type: ignore[arg-type]
        deadline = time.monotonic() + 5
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(calls) >= 3


def test_without_an_interval_nothing_beats() -> None:
    storage = _Storage(None)
    with beating(storage, 1):  # type: ignore[arg-type]
        time.sleep(0.02)
    assert storage.beats == []


def test_a_trial_just_beaten_beats_first_after_one_interval() -> None:
    storage = _Storage(0.5)
    with beating(storage, 3, beaten=True):  # type: ignore[arg-type]
        time.sleep(0.2)
        early = list(storage.beats)
    assert early == []  # the gate's beat stands for the first one
    fresh = _Storage(0.5)
    with beating(fresh, 3):  # type: ignore[arg-type]
        deadline = time.monotonic() + 5
        while not fresh.beats and time.monotonic() < deadline:
            time.sleep(0.01)
    assert fresh.beats == [3]
