"""The heartbeat of a running trial: how peers notice a worker that died (kill -9, power loss)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def beating(
    storage: Any, trial_id: int, on_beat: Callable[[], None] = lambda: None, *, beaten: bool = False
) -> Iterator[None]:
    """Record a heartbeat for ``trial_id`` every storage heartbeat interval while the block runs.

    ``storage`` is an Optuna RDB storage opened with heartbeats (without, nothing beats).
    ``on_beat`` runs after every beat (the pause check of a running trial). ``beaten``: the trial
    was beaten (and the study's pause checked) a moment ago, as the budget gate does for the trial
    it hands out, so the first beat waits one interval: a beat per trial fewer for the server.
    """
    interval = storage.get_heartbeat_interval()
    if not interval:
        yield
        return
    done = threading.Event()

    def beat() -> None:
        if beaten:
            done.wait(interval)
        while not done.is_set():
            with contextlib.suppress(Exception):  # a missed beat is retried; grace covers several
                storage.record_heartbeat(trial_id)
            with contextlib.suppress(Exception):  # a missed check is made on the next beat
                on_beat()
            done.wait(interval)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)
