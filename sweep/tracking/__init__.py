"""Experiment trackers: every worker's trials logged to MLflow and TensorBoard as they run.

A tracker is a listener on a trial's events (started, an epoch done, finished), never a step of
training: :func:`tracked` wraps the worker's events, each event becomes a frozen record on a queue,
and one thread per tracker logs the records. A tracker that fails (server down, folder unwritable,
package missing) says so in one line and is off for the rest of this worker; no trial notices.
``mlflow`` and ``tensorboard`` are imported on that thread, and only when the study's ``[tracking]``
names them, so ``sweep create`` / ``status`` and untracked workers never pay for them. The training
code (train, data, model) never imports this package.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from optuna.trial import TrialState

from sweep import record
from sweep.kept import kept_models
from sweep.show import first_line
from sweep.storage import mask_text, mask_url

if TYPE_CHECKING:
    import optuna

    from sweep.service.worker import WorkerEvents
    from sweep.spec import StudySpec

# How long a worker that is done waits for its trackers to log what is still queued.
CLOSE_TIMEOUT_S = 60.0
_STATES = TrialState.__members__  # the worker's state names (objective.Ending) are Optuna's


@dataclass(frozen=True)
class TrialStarted:
    """A trial began training: every hyperparameter it trains with (fixed and searched)."""

    study: str
    number: int
    params: dict[str, Any]
    time: float


@dataclass(frozen=True)
class EpochDone:
    """One epoch of a trial: its validation accuracy and how long it took."""

    number: int
    epoch: int
    val_accuracy: float
    seconds: float
    time: float


@dataclass(frozen=True)
class TrialFinished:
    """How a trial ended, as the storage has it after the worker told it."""

    study: str
    number: int
    state: TrialState
    value: float | None
    reason: str | None  # why it was pruned or failed
    test_accuracy: float | None
    kept_model: str | None  # the file (or artifact id) of its final model while the study keeps it
    epochs_run: int
    params: dict[str, Any]
    tags: dict[str, str]  # host, device, precision, retry_of: where and how it ran
    time: float


class TrackerDown(Exception):
    """A tracker cannot start here (package missing, folder unwritable), in one line."""


class Tracker(Protocol):
    """What a tracker does with a trial's events; every call may raise (the tracker is then off)."""

    def started(self, event: TrialStarted) -> None: ...

    def epoch(self, event: EpochDone) -> None: ...

    def finished(self, event: TrialFinished) -> None: ...

    def close(self) -> None: ...


class _Channel:
    """One tracker on a thread of its own, fed through a queue; off for good after its first error."""

    def __init__(self, label: str, make: Callable[[], Tracker], say: Callable[[str], None], secret: str) -> None:
        self.label = label
        self.make = make
        self.say = say
        self.secret = secret  # a URI whose password must never be printed
        self.queue: queue.SimpleQueue[Callable[[Tracker], None] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=f"sweep-{label.lower()}", daemon=True)
        self.thread.start()

    def send(self, call: Callable[[Tracker], None]) -> None:
        self.queue.put(call)

    def close(self, deadline: float) -> None:
        """Log what is queued until ``deadline`` (time.monotonic); then drop the rest."""
        self.queue.put(None)
        self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.thread.is_alive():  # a daemon thread: the process exits without it
            self.say(
                f"{self.label}: still logging after {CLOSE_TIMEOUT_S:.0f} s; the rest of this worker's "
                "updates are dropped"
            )

    def _run(self) -> None:
        tracker: Tracker | None = None
        try:
            tracker = self.make()
        except Exception as exc:  # noqa: BLE001 - any failure turns the tracker off, never the worker
            self._off(exc)
        while (call := self.queue.get()) is not None:
            if tracker is None:
                continue
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001
                self._off(exc)
                with contextlib.suppress(Exception):
                    tracker.close()
                tracker = None
        if tracker is not None:
            try:
                tracker.close()
            except Exception as exc:  # noqa: BLE001
                self._off(exc)

    def _off(self, exc: Exception) -> None:
        why = str(exc) if isinstance(exc, TrackerDown) else f"{type(exc).__name__}: {first_line(exc)}"
        if self.secret:
            why = mask_text(why, self.secret)
        self.say(f"{self.label} tracking off for this worker ({why}); the trials go on untracked")


def _channels(spec: StudySpec, study: str, say: Callable[[str], None]) -> list[_Channel]:
    """A channel per tracker the spec names (none: an empty list)."""
    out = []
    if spec.tracking.mlflow:
        uri = spec.tracking.mlflow

        def mlflow() -> Tracker:
            from sweep.tracking.mlflow_runs import MlflowTracker

            return MlflowTracker(uri, study)

        out.append(_Channel(f"MLflow ({mask_url(uri)})", mlflow, say, uri))
    if spec.tracking.tensorboard:
        folder = spec.tracking.tensorboard

        def tensorboard() -> Tracker:
            from sweep.tracking.tensorboard_runs import TensorBoardTracker

            return TensorBoardTracker(folder, study)

        out.append(_Channel(f"TensorBoard ({folder})", tensorboard, say, ""))
    return out


class _Listener:
    """Turns the worker's events into records for the channels; never raises into the worker."""

    def __init__(
        self, spec: StudySpec, study: optuna.Study, channels: list[_Channel], say: Callable[[str], None]
    ) -> None:
        self.spec = spec
        self.study = study
        self.channels = channels
        self.say = say
        self.failed = False  # reading a finished trial back failed once (said once)

    def _send(self, call: Callable[[Tracker], None]) -> None:
        for channel in self.channels:
            channel.send(call)

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        event = TrialStarted(self.study.study_name, number, self.spec.fixed_params() | params, time.time())
        self._send(lambda t: t.started(event))

    def epoch_done(self, number: int, epoch: int, epochs: int, acc: float, secs: float) -> None:
        event = EpochDone(number, epoch, acc, secs, time.time())
        self._send(lambda t: t.epoch(event))

    def trial_finished(self, number: int, state: str, value: float | None, why: str | None) -> None:
        try:
            event = self._finished(number, why)
        except Exception as exc:  # noqa: BLE001 - the storage hiccuped: log what the worker said
            if not self.failed:
                self.say(
                    f"trackers: trial {number} not read back ({type(exc).__name__}: {first_line(exc)}); "
                    "logging what the worker saw"
                )
                self.failed = True
            event = TrialFinished(
                self.study.study_name,
                number,
                _STATES.get(state, TrialState.FAIL),
                value,
                why,
                None,
                None,
                0,
                {},
                {},
                time.time(),
            )
        self._send(lambda t: t.finished(event))

    def _finished(self, number: int, why: str | None) -> TrialFinished:
        """The trial as the storage has it now (told, its model kept or not)."""
        storage, study_id = self.study._storage, self.study._study_id
        frozen = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number))
        attrs = frozen.user_attrs
        epochs_run = record.epochs_run(frozen) or 0
        if why is None and frozen.state is TrialState.PRUNED:
            why = f"pruner at epoch {epochs_run}"
        kept = next(
            (k.path or k.artifact_id for k in kept_models(storage.get_study_user_attrs(study_id)) if k.trial == number),
            None,
        )
        tags = {
            a.name: str(attrs[a.name])
            for a in (record.HOST, record.DEVICE, record.PRECISION, record.RETRY_OF)
            if attrs.get(a.name) is not None
        }
        return TrialFinished(
            self.study.study_name,
            number,
            frozen.state,
            frozen.value,
            why,
            record.test_accuracy(frozen),
            kept,
            epochs_run,
            self.spec.fixed_params() | frozen.params,
            tags,
            time.time(),
        )

    def close(self) -> None:
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        for channel in self.channels:
            channel.close(deadline)


def _then(first: Callable[..., None], second: Callable[..., None]) -> Callable[..., None]:
    def both(*args: Any) -> None:
        first(*args)
        second(*args)

    return both


@contextlib.contextmanager
def tracked(spec: StudySpec, study: optuna.Study, events: WorkerEvents) -> Iterator[WorkerEvents]:
    """``events`` with the study's trackers listening too; on exit they log what is queued and close.

    Without a ``[tracking]`` entry this yields ``events`` as they are, and starts nothing.
    """
    channels = _channels(spec, study.study_name, events.message) if spec.tracking.enabled else []
    if not channels:
        yield events
        return
    listener = _Listener(spec, study, channels, events.message)
    try:
        yield dataclasses.replace(
            events,
            trial_started=_then(events.trial_started, listener.trial_started),
            epoch_done=_then(events.epoch_done, listener.epoch_done),
            trial_finished=_then(events.trial_finished, listener.trial_finished),
        )
    finally:
        listener.close()
