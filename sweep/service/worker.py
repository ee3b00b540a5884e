"""``sweep worker``: pull trials from the budget gate and run them, telling the storage how each ended."""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep import control, provenance, record
from sweep.artifacts import ORPHAN_MIN_AGE_S, remove_orphans
from sweep.heartbeat import beating
from sweep.kept import reconcile
from sweep.objective import (
    LOST,
    Ending,
    Progress,
    StopFlag,
    TrialOutcome,
    first_line,
    free_memory,
    lost_to_a_peer,
    preflight,
    run_trial,
    set_threads,
)
from sweep.outage import DatabaseUnavailable, Patience, patience_s
from sweep.record import Reason
from sweep.search import build_pruner, build_sampler
from sweep.service.common import cache_dir, load_spec_of, quiet_optuna, resolve_device, resolve_study_name
from sweep.service.gate import BudgetGate, Decision
from sweep.spec import StudySpec
from sweep.storage import artifact_store, open_storage, patiently, retry_on_locked
from sweep.tracking import tracked

if TYPE_CHECKING:
    from sweep.objectstore import ArtifactStore


@dataclass
class WorkerSummary:
    """What one worker did."""

    study: str
    device: str
    states: Counter[str] = field(default_factory=Counter)
    stopped: bool = False
    # The CUDA context broke (record.Reason.DEVICE): the process must exit and be restarted.
    device_lost: str | None = None
    paused: bool = False  # the study was paused while this worker ran
    # The circuit breaker tripped: BREAKER_TRIPS trials in a row failed with this error.
    tripped: str | None = None
    lost: int = 0  # trials a peer failed while this worker could not reach the database (not counted)
    # Writes failed on a full disk DISK_FULL_STOPS times: the artifact folder, for the user to free.
    disk_full: str | None = None

    @property
    def trials(self) -> int:
        return sum(self.states.values())


@dataclass
class WorkerEvents(Progress):
    """Callbacks for the worker's display (all optional): a trial's progress, and its end."""

    trial_finished: Callable[[int, str, float | None, str | None], None] = lambda number, state, value, why: None


def run_worker(
    study_name: str | None,
    *,
    storage_url: str,
    device: str = "auto",
    n_trials: int | None = None,
    threads: int | None = None,
    stop: StopFlag | None = None,
    events: WorkerEvents | None = None,
    poll_s: float = 5.0,
    artifacts: str | None = None,
    wait_paused: bool = False,
) -> WorkerSummary:
    """Pull trials until the study's budget is spent (or ``n_trials`` for this worker).

    ``artifacts`` is where epoch checkpoints go (see ``sweep.storage.artifact_store``). While the
    study is paused (``sweep pause``) the worker hands its trial back after the current epoch and
    returns, or with ``wait_paused`` polls every ``poll_s`` until ``sweep resume``. An unreachable
    database is waited out for SWEEP_DB_PATIENCE (sweep.outage), then DatabaseUnavailable.
    """
    quiet_optuna()
    events = events or WorkerEvents()
    stop = stop or StopFlag()
    patience = Patience(patience_s(), say=events.message, stop=stop.event)
    storage = open_storage(storage_url, heartbeat=True, create=False, patience=patience)
    name = resolve_study_name(storage, study_name, storage_url)
    spec = load_spec_of(storage, name)
    store = artifact_store(storage_url, artifacts)  # a missing bucket fails before any data is loaded
    device = _worker_device(device, threads, events)
    data = _worker_data(spec, storage_url, events)
    study = _worker_study(name, storage, spec)
    store = _worker_store(storage, store, events)
    summary = WorkerSummary(study=name, device=device)
    gate = BudgetGate(study, spec)
    with tracked(spec, study, events) as events:  # the study's [tracking]: listeners on the trials' events
        runner = TrialRunner(study, spec, data, device, stop, events, storage, store)
        loop = _TrialLoop(gate, runner, events, summary, provenance.environment(), n_trials, poll_s, wait_paused)
        loop.run()
    return summary


def _worker_device(device: str, threads: int | None, events: WorkerEvents) -> str:
    """The device this worker trains on (``resolve_device``), said when it is the CPU; sets ``threads``."""
    device = resolve_device(device)
    if device == "cpu":
        events.message("no GPU in use: training on the CPU" + (f" with {threads} threads" if threads else ""))
    if threads:
        set_threads(threads)
    return device


def _worker_data(spec: StudySpec, storage_url: str, events: WorkerEvents) -> Any:
    """The study's data, checked with its model (``preflight``) and described to the user."""
    # Data and weights are resolved here, on the worker, before it takes a trial.
    events.message(f"loading data {spec.data.name!r} from {spec.data.root!r}")
    data = preflight(spec, cache_dir(storage_url))  # a DataError or WeightsError: one line, exit 2
    events.message(
        f"data: {len(data.train_y)} train / {len(data.val_y)} val / {len(data.test_y)} test images, "
        f"{data.num_classes} classes"
    )
    return data


def _worker_store(storage: optuna.storages.BaseStorage, store: ArtifactStore, events: WorkerEvents) -> ArtifactStore:
    """The artifact store (``sweep.storage.artifact_store``), cleared of what crashes left in it."""
    from sweep.objectstore import describe

    try:
        orphans = remove_orphans(storage, store, min_age_s=ORPHAN_MIN_AGE_S)
    except Exception as exc:  # noqa: BLE001 - a read-only folder, a bucket gone: checkpoints say so per trial
        events.message(f"artifact store {describe(store)} not cleaned up: {first_line(exc)}")
        return store
    if orphans.files:
        events.message(
            f"removed {len(orphans.files)} artifact files no trial refers to "
            f"({orphans.bytes / 1e6:.1f} MB) from {describe(store)}"
        )
    return store


def _worker_study(name: str, storage: optuna.storages.BaseStorage, spec: StudySpec) -> optuna.Study:
    """The study with the spec's sampler and pruner, the sampler reseeded for this process."""
    # Each worker process gets its own sampler stream; identical seeds in parallel workers would
    # propose the same first configurations twice.
    study = optuna.load_study(study_name=name, storage=storage, sampler=build_sampler(spec), pruner=build_pruner(spec))
    with contextlib.suppress(AttributeError, TypeError):
        study.sampler.reseed_rng()
    return study


# Exit code of a worker that stopped on a full disk (EX_CANTCREAT): its trials went back to the queue.
EXIT_DISK_FULL = 73
# Writes failing on a full disk (ENOSPC, EDQUOT) after which a worker takes no more trials: one may be a
# peak (a peer's checkpoint written at the same moment); a second says the disk stays full, and every
# trial from now on would run without checkpoints or kept models.
DISK_FULL_STOPS = 2
# Consecutive trials failing with the same error (not a training outcome) that stop a worker: a broken
# install, a missing file or a bad argument fails every trial alike, and would fail the whole budget.
BREAKER_TRIPS = 3


@dataclass
class _Breaker:
    """Counts this worker's consecutive trials failing with the same error (``Reason.ERROR``).

    Errors are compared with their digits masked: a trial number or an address in the message must
    not make the same failure look new. OOM, divergence, stops and completions reset the count.
    """

    trips: int = BREAKER_TRIPS
    error: str | None = None
    count: int = 0

    def tripped(self, outcome: TrialOutcome) -> bool:
        """Record ``outcome``; True when it is the ``trips``-th same error in a row."""
        if outcome.cause is not Reason.ERROR:
            self.error, self.count = None, 0
            return False
        error = re.sub(r"\d+", "#", outcome.detail)
        self.count = self.count + 1 if error == self.error else 1
        self.error = error
        return self.count >= self.trips


@dataclass
class _TrialLoop:
    """``run_worker``'s loop: take trials from the gate and run them until the budget, a stop, a pause
    or a broken CUDA context ends it; what happened goes into ``summary``."""

    gate: BudgetGate
    runner: TrialRunner
    events: WorkerEvents
    summary: WorkerSummary
    environment: dict[str, Any]
    n_trials: int | None
    poll_s: float
    wait_paused: bool
    said: str = ""  # the last waiting message: said once per wait
    breaker: _Breaker = field(default_factory=_Breaker)
    disk_errors: int = 0  # writes this worker saw fail on a full disk

    def run(self) -> None:
        """Take and run trials until one of the loop's endings."""
        while self.n_trials is None or self.summary.trials < self.n_trials:
            if self.runner.stop.is_set():
                self.summary.stopped = True
                return
            decision, trial = self.gate.take()
            if decision == Decision.DONE:
                return
            if decision == Decision.STOPPED:
                self.events.message("study stopped (sweep stop): no new trials; exiting (sweep extend reopens it)")
                return
            if decision in (Decision.PAUSED, Decision.WAIT):
                if not self._wait(decision):
                    return
                continue
            self.said = ""
            assert trial is not None
            if not self._run(trial):
                return

    def _wait(self, decision: Decision) -> bool:
        """Wait ``poll_s`` while paused or the budget is reached; False: the worker exits."""
        if decision == Decision.PAUSED:
            self.summary.paused = True
            if not self.wait_paused:
                self.events.message("study paused: no new trials until `sweep resume`; exiting")
                return False
        why = (
            "study paused: waiting for `sweep resume`"
            if decision == Decision.PAUSED
            else "budget reached; waiting for trials still running on other workers"
        )
        if why != self.said:
            self.events.message(why)
            self.said = why
        if self.runner.stop.event.wait(self.poll_s):
            self.summary.stopped = True
            return False
        return True

    def _run(self, trial: optuna.Trial) -> bool:
        """Run one trial and count it; False: the worker takes no more."""
        outcome = self.runner.run(trial, self._label(trial))
        self.events.trial_finished(trial.number, outcome.state.value, outcome.value, outcome.reason)
        go_on = self._count(outcome)
        self.disk_errors += outcome.disk_errors
        if go_on and self.disk_errors >= DISK_FULL_STOPS:
            self.summary.disk_full = str(getattr(self.runner.artifacts, "base_path", "the artifact folder"))
            return False
        return go_on

    def _count(self, outcome: TrialOutcome) -> bool:
        """Count a trial's outcome in the summary; False: the worker takes no more."""
        if outcome.cause is Reason.PAUSED:  # handed back (not counted): the gate now says paused
            return True
        if outcome.cause is Reason.LOST:  # the peer's retry counts it
            self.summary.lost += 1
            return True
        self.summary.states[outcome.state.value] += 1
        if outcome.cause is Reason.STOPPED:
            self.summary.stopped = True
            return False
        if outcome.device_lost:
            self.summary.device_lost = outcome.reason
            self.events.message("the CUDA context is broken: taking no more trials; exiting for a restart")
            return False
        if self.breaker.tripped(outcome):
            self.summary.tripped = outcome.detail
            return False
        return True

    def _label(self, trial: optuna.Trial) -> int | None:
        """Record who runs ``trial``; return the number of the trial it retries (None: a new one)."""
        system_attrs = self.runner.storage.get_trial_system_attrs(trial._trial_id)
        original = system_attrs.get(record.FAILED_TRIAL.name)
        if original is not None:
            trial.set_user_attr(record.RETRY_OF.name, original)
        trial.set_user_attr(record.PID.name, os.getpid())
        trial.set_user_attr(record.ENVIRONMENT.name, self.environment)
        return original


@dataclass
class TrialRunner:
    """Everything a worker needs to run one trial and tell the storage how it ended."""

    study: optuna.Study
    spec: StudySpec
    data: Any
    device: str
    stop: StopFlag
    progress: Progress
    storage: Any
    artifacts: Any

    def run(self, trial: optuna.Trial, original: int | None) -> TrialOutcome:
        """Run one trial; every ending is told to the storage: no result is ever lost."""
        outcome = self._run(trial, original)
        if outcome.oom:
            # Here, after run_trial returned and its exception was dropped: inside the except block
            # the traceback still held the failed trial's model, optimizer state and activations, so
            # nothing could be freed, and the next trial (or a sibling process on the GPU) would
            # see less free memory and fall back to host data or OOM on parameters that fit.
            free_memory()
        if outcome.state is Ending.COMPLETE:
            self._keep_best(trial)
        return outcome

    def _retry_as_dead_workers(self, frozen: optuna.trial.FrozenTrial) -> None:
        """Re-queue a FAILed trial as a dead worker's is (the storage's stale-trial retry: counted against
        max_retry, resumed from its checkpoint); unlike _HAND_BACK, which re-queues a stopped trial uncounted."""
        callback = self.storage.get_heartbeat_stale_trial_callback()
        if callback is not None:
            callback(self.study, frozen)

    def _keep_best(self, trial: optuna.Trial) -> None:
        if self.artifacts is None or self.spec.checkpoint.keep_best <= 0:
            return
        study = self.study
        # After the tell: the top K are read from the database (see sweep.kept).
        try:
            patiently(
                self.storage,
                lambda: retry_on_locked(
                    lambda: reconcile(
                        self.storage, study._study_id, study.study_name, self.artifacts, self.spec.checkpoint.keep_best
                    )
                ),
            )
        except Exception as exc:  # noqa: BLE001 - the result is told; the next completion reconciles
            self.progress.message(f"trial {trial.number}: kept models not updated ({type(exc).__name__}: {exc})")

    def _run(self, trial: optuna.Trial, original: int | None) -> TrialOutcome:
        pause = StopFlag()

        def check_pause() -> None:
            if control.is_paused(self.storage.get_study_user_attrs(self.study._study_id)):
                pause.set()

        # The trial comes from BudgetGate.take, which beat it and checked the pause a moment ago.
        with beating(self.storage, trial._trial_id, on_beat=check_pause, beaten=True):
            try:
                outcome = run_trial(
                    trial,
                    self.spec,
                    self.data,
                    self.device,
                    stop=_StopOrPause(event=self.stop.event, pause=pause),
                    progress=self.progress,
                    original_number=original,
                    artifacts=self.artifacts,
                )
            except KeyboardInterrupt:
                self._tell(trial, state=TrialState.FAIL)
                raise
            except DatabaseUnavailable:
                raise  # nothing can be told: the trial stays RUNNING, a peer fails it and retries it
            except Exception as exc:  # outside training (sampling, the storage): no fail_reason recorded
                if lost_to_a_peer(exc) or self._tell(trial, state=TrialState.FAIL) is None:
                    return LOST
                return TrialOutcome(Ending.FAIL, cause=Reason.ERROR, detail=first_line(exc))
            if outcome.cause is Reason.LOST:
                return outcome
            if outcome.state is not Ending.COMPLETE:
                return self._tell_ended_early(trial, outcome)
        if self._tell(trial, values=outcome.value) is None:
            return replace(LOST, disk_errors=outcome.disk_errors)
        return outcome

    def _tell(self, trial: optuna.Trial, **kwargs: Any) -> FrozenTrial | None:
        """Tell the storage how ``trial`` ended; None: a peer had failed it already (Reason.LOST)."""
        try:
            return retry_on_locked(lambda: self.study.tell(trial, **kwargs))
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            # Optuna refuses to tell a finished trial ("Cannot tell a FAIL trial"); read it fresh.
            if self.storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                raise
            return None

    def _tell_ended_early(self, trial: optuna.Trial, outcome: TrialOutcome) -> TrialOutcome:
        """Tell a pruned, failed or stopped trial; a stopped one goes back to the queue."""
        frozen = self._tell(trial, state=TrialState[outcome.state])
        if frozen is None:
            return replace(LOST, disk_errors=outcome.disk_errors)
        if outcome.cause is Reason.STOPPED:
            # Hand the trial back: the same params re-queued as WAITING, not counted twice; the
            # retry resumes from the checkpoint this epoch left. A hand-back is no failure, so
            # unlike a dead worker's trial (max_retry) it is re-queued however often it happens.
            _HAND_BACK(self.study, frozen)
            return outcome if self.stop.is_set() else replace(outcome, cause=Reason.PAUSED)
        if outcome.hand_back:
            self._retry_as_dead_workers(frozen)  # a broken CUDA context: counted as a retry (max_retry)
        return outcome


with warnings.catch_warnings():  # experimental since 2.8, the supported way in Optuna 5
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    _HAND_BACK = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None, inherit_intermediate_values=True)


@dataclass
class _StopOrPause(StopFlag):
    """The worker's stop flag (signals) or this trial's pause flag (``sweep pause`` seen on a beat)."""

    pause: StopFlag = field(default_factory=StopFlag)

    def is_set(self) -> bool:
        return self.event.is_set() or self.pause.is_set()
