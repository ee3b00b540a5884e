"""The use cases behind the CLI: create a study, run a worker, write a report, describe studies.

Nothing here prints: results come back as plain data and progress goes through callbacks, so the
CLI, the tests and a notebook can all drive the same code. Errors a user can fix are raised as
``ServiceError`` (or SpecError / StorageError) with one line that says what to do.
"""

from __future__ import annotations

import contextlib
import enum
import os
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep import control, provenance
from sweep.control import RETRY_KEY, SweepState
from sweep.heartbeat import beating
from sweep.kept import KeptModel, kept_models, reconcile
from sweep.objective import (
    Ending,
    Progress,
    Reason,
    Retrained,
    SetupError,
    StopFlag,
    TrialOutcome,
    first_line,
    free_memory,
    gpu_visible,
    load_study_data,
    preflight,
    retrain,
    run_trial,
    set_threads,
    trial_seed,
)
from sweep.search import build_pruner, build_sampler
from sweep.spec import StudySpec, load_spec, spec_from_dict
from sweep.storage import (
    artifact_store,
    budget_counts,
    budget_lock,
    mask_url,
    open_storage,
    pop_waiting_trial,
    retry_on_locked,
    sqlite_path,
    study_names,
)
from sweep.workers import Slot, cpu_slots, gpu_slots, physical_gpu, visible_gpus

if TYPE_CHECKING:
    from sweep.train import FitResult

SPEC_ATTR = "spec"
FINGERPRINT_ATTR = "spec_fingerprint"


class ServiceError(RuntimeError):
    """A problem the user can fix, phrased on one line."""


def quiet_optuna() -> None:
    """Keep Optuna to warnings: no per-trial info lines, no heartbeat or experimental-feature warnings."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # We drive heartbeats ourselves around ask/tell (see sweep.heartbeat); Optuna warns it expects optimize().
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


# --------------------------------------------------------------------------- create


@dataclass(frozen=True)
class CreateResult:
    """What ``create_study`` did."""

    name: str
    created: bool
    spec: StudySpec
    warnings: tuple[str, ...] = ()


def _local_warnings(spec: StudySpec) -> list[str]:
    """Data roots and weight files are resolved on the worker; warn when they are missing here."""
    from sweep.data import check_data
    from sweep.model import check_weights

    out = []
    problem = check_data(spec.data.name, spec.data.root)
    if problem:
        out.append(f"{problem} (not found on this machine; workers must have it)")
    problem = check_weights(spec.model.weights)
    if problem:
        out.append(f"{problem} (not found on this machine; workers must have it)")
    return out


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def create_study(
    spec_arg: str,
    *,
    storage_url: str,
    name: str | None = None,
    overrides: Sequence[str] = (),
    studies_dir: str | Path = "studies",
) -> CreateResult:
    """Validate the spec and create its study; identical re-creation is a no-op, a conflict an error."""
    quiet_optuna()
    spec = load_spec(spec_arg, overrides=list(overrides), name=name, studies_dir=studies_dir)
    storage = open_storage(storage_url)
    resolved = spec.to_dict()
    try:
        study = optuna.create_study(storage=storage, study_name=spec.name, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        existing = _resolved_again(_stored_spec_dict(storage, spec.name))
        if existing == resolved:
            return CreateResult(spec.name, created=False, spec=spec)
        where = ", ".join(_diff_keys(existing, resolved)[:6]) or "the spec"
        raise ServiceError(
            f"study {spec.name!r} already exists in {mask_url(storage_url)} with a different spec "
            f"(differs at {where}); pick another --name"
        ) from None
    try:
        # The spec goes in before anyone can use the study; a failure removes the half-made study.
        study.set_user_attr(SPEC_ATTR, resolved)
        study.set_user_attr(FINGERPRINT_ATTR, spec.fingerprint())
    except BaseException:
        with contextlib.suppress(Exception):
            optuna.delete_study(study_name=spec.name, storage=storage)
        raise
    return CreateResult(spec.name, created=True, spec=spec, warnings=tuple(_local_warnings(spec)))


def _resolved_again(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored spec with today's defaults filled in: a study made before a new spec key existed
    (e.g. ``checkpoint.keep_best``) still equals the same spec created again."""
    from sweep.spec import SpecError

    try:
        return spec_from_dict(stored).to_dict()
    except SpecError:
        return stored


def _stored_spec_dict(storage: optuna.storages.BaseStorage, name: str, wait_s: float = 5.0) -> dict[str, Any]:
    study_id = storage.get_study_id_from_name(name)
    deadline = time.monotonic() + wait_s
    while True:
        attrs = storage.get_study_user_attrs(study_id)
        if SPEC_ATTR in attrs:
            return attrs[SPEC_ATTR]
        if time.monotonic() > deadline:  # a concurrent `create` is between its two writes
            raise ServiceError(f"study {name!r} exists but has no sweep spec; it was not made by `sweep create`")
        time.sleep(0.1)


# --------------------------------------------------------------------------- load


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
    return spec_from_dict(_stored_spec_dict(storage, name, wait_s=0.0))


def open_read_only(storage_url: str) -> optuna.storages.RDBStorage:
    """Storage for commands that only read (report, status, list): never creates a database."""
    quiet_optuna()
    return open_storage(storage_url, create=False)


# --------------------------------------------------------------------------- worker


@dataclass
class WorkerSummary:
    """What one worker did."""

    study: str
    device: str
    states: Counter[str] = field(default_factory=Counter)
    stopped: bool = False
    # The CUDA context broke (objective.Reason.DEVICE): the process must exit and be restarted.
    device_lost: str | None = None
    paused: bool = False  # the study was paused while this worker ran

    @property
    def trials(self) -> int:
        return sum(self.states.values())


@dataclass
class WorkerEvents(Progress):
    """Callbacks for the worker's display (all optional): a trial's progress, and its end."""

    trial_finished: Callable[[int, str, float | None, str | None], None] = lambda number, state, value, why: None


def resolve_device(device: str) -> str:
    """``auto`` → cuda when a GPU is visible, else cpu; a bad choice is an error."""
    if device == "auto":
        return "cuda" if gpu_visible() else "cpu"
    if device.startswith("cuda") and not gpu_visible():
        raise ServiceError(f"--device {device}: no CUDA GPU is visible on this machine; use --device cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ServiceError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    return device


class Decision(enum.StrEnum):
    """What the budget gate tells a worker (equal to its plain string value)."""

    RUN = "run"  # a trial was taken
    WAIT = "wait"  # budget spent, but a running trial may still come back for a retry
    DONE = "done"  # budget spent, nothing running
    PAUSED = "paused"  # `sweep pause`: no trial is handed out


class BudgetGate:
    """Decides whether this worker may take another trial; only the decision and the trial's row are
    made under the budget lock (``take``).

    Every worker of the study queues on that lock, so whatever runs under it bounds the trials per
    second of the whole cluster: the stale-trial check runs before it (concurrent checks are safe: only
    one worker wins a stale trial's FAIL, and only the winner re-queues it), the sampler after it.
    """

    def __init__(self, study: optuna.Study, spec: StudySpec) -> None:
        self.study = study
        self.spec = spec
        self.storage = study._storage
        self.interval = float(getattr(self.storage, "get_heartbeat_interval", lambda: None)() or 0)
        self.last_stale_check = float("-inf")
        self._popped = False  # the last trial reserved was a WAITING one (_trial syncs the cache)

    def take(self) -> tuple[Decision, optuna.Trial | None]:
        """The worker's step: (RUN, trial) / (WAIT, None) / (DONE, None) / (PAUSED, None)."""
        self._check_stale()
        with budget_lock(self.storage, self.study.study_name):
            decision, trial_id = retry_on_locked(self._reserve)
        return decision, None if trial_id is None else self._trial(trial_id)

    def next_trial(self) -> tuple[Decision, optuna.Trial | None]:
        """``take`` for a caller that already holds the budget lock."""
        self._check_stale()
        decision, trial_id = self._reserve()
        return decision, None if trial_id is None else self._trial(trial_id)

    def _check_stale(self) -> None:
        now = time.monotonic()
        # Stale trials only appear after a grace period of several heartbeats: checking once per
        # heartbeat interval finds them as early, at a fraction of the cost per trial.
        if now - self.last_stale_check >= self.interval:
            optuna.storages.fail_stale_trials(self.study)
            self.last_stale_check = now

    def _reserve(self) -> tuple[Decision, int | None]:
        """The decision, and the id of the trial taken (a WAITING one popped, else a new one)."""
        attrs = self.storage.get_study_user_attrs(self.study._study_id)  # pause and budget: read fresh
        if control.is_paused(attrs):
            return Decision.PAUSED, None
        spent, waiting, running = budget_counts(self.storage, self.study._study_id, RETRY_KEY)
        if waiting or spent < control.budget(attrs, self.spec.n_trials):
            # What Study.ask does before it samples (its relative sampling is _trial's, outside the lock).
            trial_id = pop_waiting_trial(self.study)
            self._popped = trial_id is not None
            if trial_id is None:
                trial_id = self.storage.create_new_trial(self.study._study_id)
            if self.interval:
                # Beat at once: a trial whose worker dies before its heartbeat thread starts (in the
                # sampler, say) is then failed as stale and retried; without a beat no stale check
                # ever finds it, and the study would wait for it forever.
                self.storage.record_heartbeat(trial_id)
            return Decision.RUN, trial_id
        if running:
            # Budget spent, but a running trial may still die and come back for a retry.
            self.last_stale_check = float("-inf")
            return Decision.WAIT, None
        return Decision.DONE, None

    def _trial(self, trial_id: int) -> optuna.Trial:
        """The rest of Study.ask: the trial object, whose construction runs the sampler's relative sampling."""
        self.study._thread_local.cached_all_trials = None
        if self._popped:
            # Optuna's trial cache must know a trial before a param is written to it: a new trial is
            # registered by its creation, a WAITING one popped by id (pop_waiting_trial, under the
            # lock) by this read of the study's new and unfinished trials, after the lock (the first
            # time: all of them, which the sampler reads anyway).
            self.study._storage.get_all_trials(self.study._study_id, deepcopy=False, states=(TrialState.WAITING,))
        return optuna.Trial(self.study, trial_id)


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
    all_gpus: str | None = None,
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

    ``gpu``: GPU indices (one child per GPU and replica); ``all_gpus``: "all" = every visible GPU.
    GPUs are counted by ``visible`` without starting CUDA in this process, so that one pinned GPU
    (``env``) still takes effect. Threads default to the cores shared by the processes.
    """
    gpus = list(gpu)
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    if all_gpus is not None:
        if all_gpus != "all":
            raise ServiceError(
                f"--gpus {all_gpus!r}: only 'all' is allowed; use --gpu N (repeatable) for specific GPUs"
            )
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
        slots = tuple(gpu_slots(gpus, per_gpu) if gpus else cpu_slots(workers))
        threads = threads if threads is not None else max(1, cores // len(slots))
        options = ["--storage", storage_url, "--threads", str(threads)]
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


def run_worker(
    study_name: str | None,
    *,
    storage_url: str,
    device: str = "auto",
    n_trials: int | None = None,
    threads: int | None = None,
    stop: StopFlag | None = None,
    events: WorkerEvents | None = None,
    wait_s: float = 30.0,
    poll_s: float = 5.0,
    artifacts: str | None = None,
    wait_paused: bool = False,
) -> WorkerSummary:
    """Pull trials until the study's budget is spent (or ``n_trials`` for this worker).

    ``artifacts`` is where epoch checkpoints go (see ``sweep.storage.artifact_store``). While the
    study is paused (``sweep pause``) the worker hands its trial back after the current epoch and
    returns, or with ``wait_paused`` polls every ``poll_s`` until ``sweep resume``.
    """
    quiet_optuna()
    events = events or WorkerEvents()
    stop = stop or StopFlag()
    storage = open_storage(storage_url, heartbeat=True, wait_s=wait_s, create=False)
    name = resolve_study_name(storage, study_name, storage_url)
    spec = load_spec_of(storage, name)
    device = _worker_device(device, threads, events)
    data = _worker_data(spec, storage_url, events)
    study = _worker_study(name, storage, spec)
    store = artifact_store(storage_url, artifacts)
    summary = WorkerSummary(study=name, device=device)
    gate = BudgetGate(study, spec)
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
    try:
        data = preflight(spec, _cache_dir(storage_url))
    except SetupError as exc:
        raise ServiceError(str(exc)) from None
    events.message(
        f"data: {len(data.train_y)} train / {len(data.val_y)} val / {len(data.test_y)} test images, "
        f"{data.num_classes} classes"
    )
    return data


def _worker_study(name: str, storage: optuna.storages.BaseStorage, spec: StudySpec) -> optuna.Study:
    """The study with the spec's sampler and pruner, the sampler reseeded for this process."""
    # Each worker process gets its own sampler stream; identical seeds in parallel workers would
    # propose the same first configurations twice.
    study = optuna.load_study(study_name=name, storage=storage, sampler=build_sampler(spec), pruner=build_pruner(spec))
    with contextlib.suppress(AttributeError, TypeError):
        study.sampler.reseed_rng()
    return study


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

    def run(self) -> None:
        """Take and run trials until one of the loop's endings."""
        while self.n_trials is None or self.summary.trials < self.n_trials:
            if self.runner.stop.is_set():
                self.summary.stopped = True
                return
            decision, trial = self.gate.take()
            if decision == Decision.DONE:
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
        why = ("study paused: waiting for `sweep resume`" if decision == Decision.PAUSED
               else "budget reached; waiting for trials still running on other workers")
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
        if outcome.cause is Reason.PAUSED:  # handed back (not counted): the gate now says paused
            return True
        self.summary.states[outcome.state.value] += 1
        if outcome.cause is Reason.STOPPED:
            self.summary.stopped = True
            return False
        if outcome.device_lost:
            self.summary.device_lost = outcome.reason
            self.events.message("the CUDA context is broken: taking no more trials; exiting for a restart")
            return False
        return True

    def _label(self, trial: optuna.Trial) -> int | None:
        """Record who runs ``trial``; return the number of the trial it retries (None: a new one)."""
        system_attrs = self.runner.storage.get_trial_system_attrs(trial._trial_id)
        original = system_attrs.get(RETRY_KEY)
        if original is not None:
            trial.set_user_attr("retry_of", original)
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("environment", self.environment)
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

    def _hand_back(self, frozen: optuna.trial.FrozenTrial) -> None:
        """Re-queue a FAILed trial's params as WAITING (not counted twice; it resumes from its checkpoint)."""
        callback = self.storage.get_heartbeat_stale_trial_callback()
        if callback is not None:
            callback(self.study, frozen)

    def _keep_best(self, trial: optuna.Trial) -> None:
        if self.artifacts is None or self.spec.checkpoint.keep_best <= 0:
            return
        study = self.study
        # After the tell: the top K are read from the database (see sweep.kept).
        try:
            retry_on_locked(lambda: reconcile(self.storage, study._study_id, study.study_name, self.artifacts,
                                              self.spec.checkpoint.keep_best))
        except Exception as exc:  # noqa: BLE001 - the result is told; the next completion reconciles
            self.progress.message(f"trial {trial.number}: kept models not updated ({type(exc).__name__}: {exc})")

    def _run(self, trial: optuna.Trial, original: int | None) -> TrialOutcome:
        study = self.study

        def tell(**kwargs: Any) -> Any:
            return retry_on_locked(lambda: study.tell(trial, **kwargs))

        pause = StopFlag()

        def check_pause() -> None:
            if control.is_paused(self.storage.get_study_user_attrs(study._study_id)):
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
                tell(state=TrialState.FAIL)
                raise
            except Exception as exc:  # outside training (sampling, the storage): no fail_reason recorded
                tell(state=TrialState.FAIL)
                return TrialOutcome(Ending.FAIL, cause=Reason.ERROR, detail=first_line(exc))
            if outcome.state is not Ending.COMPLETE:
                frozen = tell(state=TrialState[outcome.state])
                if outcome.cause is Reason.STOPPED:
                    # Hand the trial back: the same params re-queued as WAITING, not counted twice; the
                    # retry resumes from the checkpoint this epoch left. A hand-back is no failure, so
                    # unlike a dead worker's trial (max_retry) it is re-queued however often it happens.
                    _HAND_BACK(study, frozen)
                    return outcome if self.stop.is_set() else replace(outcome, cause=Reason.PAUSED)
                if outcome.hand_back:
                    self._hand_back(frozen)  # a broken CUDA context: counted like a dead worker's trial
                return outcome
        tell(values=outcome.value)
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


def load_spec_data(spec: StudySpec, storage_url: str) -> Any:
    """The study's data on this machine (decoded once per machine into the cache)."""
    return load_study_data(spec, _cache_dir(storage_url))


def _cache_dir(storage_url: str) -> Path:
    env = os.environ.get("SWEEP_CACHE_DIR")
    if env:
        return Path(env)
    path = sqlite_path(storage_url)
    return (path.parent if path is not None else Path("storage")) / "cache"


# --------------------------------------------------------------------------- report / status


def default_report_path(names: Sequence[str], storage_url: str) -> Path:
    """storage/reports/<study>.html beside the SQLite file (or under ./storage for PostgreSQL)."""
    path = sqlite_path(storage_url)
    home = path.parent if path is not None else Path("storage")
    return home / "reports" / f"{'+'.join(names)}.html"


def write_report(
    names: Sequence[str],
    *,
    storage_url: str,
    output: str | Path | None = None,
    plotlyjs: str = "inline",
    refresh_s: int | None = None,
) -> Path:
    """Write one self-contained HTML report for one or more studies; return its path.

    ``refresh_s`` makes the page reload itself (``sweep report --watch``).
    """
    from sweep import report

    storage = open_read_only(storage_url)
    try:
        if not names:
            names = [resolve_study_name(storage, None, storage_url)]
        names = [resolve_study_name(storage, n, storage_url) for n in names]
        studies = [optuna.load_study(study_name=n, storage=storage) for n in names]
        out = Path(output) if output else default_report_path(names, storage_url)
        return report.write_report(
            studies, out, storage_label=mask_url(storage_url), plotlyjs=plotlyjs, refresh_s=refresh_s
        )
    finally:
        if hasattr(storage, "close"):  # --watch opens a storage per refresh: no connection left behind
            storage.close()


@dataclass(frozen=True)
class StudyStatus:
    """A study at a glance, for ``sweep status`` and ``sweep list``."""

    name: str
    n_trials: int
    states: dict[str, int]
    best_value: float | None
    best_params: dict[str, Any]
    best_number: int | None
    running: tuple[dict[str, Any], ...]
    state: SweepState = SweepState.RUNNING
    kept: tuple[KeptModel, ...] = ()  # trials whose final model is kept (best first)
    cost: Any = None  # sweep.report.CostSummary: accuracy against compute


def study_status(storage: optuna.storages.BaseStorage, name: str) -> StudyStatus:
    """Trials by state, best trial and running trials of one study."""
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(complete, key=lambda t: t.value) if complete else None
    from sweep.report import cost_summary_of

    attrs = study.user_attrs
    try:
        budget = control.budget(attrs, int(attrs.get(SPEC_ATTR, {}).get("n_trials", 0)))
    except (TypeError, ValueError):
        budget = 0
    running = tuple(
        {
            "number": t.number,
            "host": t.user_attrs.get("host", "?"),
            "device": t.user_attrs.get("device", "?"),
            "epoch": t.user_attrs.get("epochs_run", 0),
            "last_acc": t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None,
            "started": t.datetime_start,
        }
        for t in trials
        if t.state == TrialState.RUNNING
    )
    return StudyStatus(
        name=name,
        n_trials=budget,
        states=dict(states),
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else {},
        best_number=best.number if best else None,
        running=running,
        state=control.state_of(attrs, budget, trials),
        kept=kept_models(attrs),
        cost=cost_summary_of(name, trials, attrs.get(SPEC_ATTR, {})),
    )


def list_statuses(storage_url: str) -> list[StudyStatus]:
    """Status of every study in the storage."""
    storage = open_read_only(storage_url)
    return [study_status(storage, n) for n in sorted(study_names(storage))]


def status_of(storage_url: str, name: str | None) -> StudyStatus:
    """Status of one study (or the only one)."""
    storage = open_read_only(storage_url)
    return study_status(storage, resolve_study_name(storage, name, storage_url))


# --------------------------------------------------------------------------- pause / resume / extend


@dataclass(frozen=True)
class ControlResult:
    """What a control command changed."""

    study: str
    state: SweepState
    n_trials: int
    previous_n_trials: int | None = None  # `extend`: the budget before
    running: int = 0  # trials running when the command was given


def _control(
    storage_url: str, name: str | None, change: Callable[[Any, int, str, dict[str, Any]], None]
) -> ControlResult:
    """Run ``change(storage, study_id, study, attrs)`` under the study's budget lock; say where it stands."""
    quiet_optuna()
    storage = open_storage(storage_url, create=False)
    study = resolve_study_name(storage, name, storage_url)
    spec = load_spec_of(storage, study)
    study_id = storage.get_study_id_from_name(study)
    with budget_lock(storage, study):  # workers decide under it: they see the change whole, or not at all
        attrs = storage.get_study_user_attrs(study_id)
        before = control.budget(attrs, spec.n_trials)
        change(storage, study_id, study, attrs)
        attrs = storage.get_study_user_attrs(study_id)
        spent, waiting, running = budget_counts(storage, study_id, RETRY_KEY)
    after = control.budget(attrs, spec.n_trials)
    state = control.sweep_state(control.is_paused(attrs), after, spent, waiting + running)
    return ControlResult(study, state, after, before if before != after else None, running)


def pause_study(storage_url: str, name: str | None) -> ControlResult:
    """No worker takes a new trial; running trials hand themselves back after their current epoch."""

    def change(storage: Any, study_id: int, study: str, attrs: dict[str, Any]) -> None:
        if control.is_paused(attrs):
            raise ServiceError(f"study {study!r} is already paused; resume it: sweep resume {study}")
        storage.set_study_user_attr(study_id, control.CONTROL_ATTR, SweepState.PAUSED.value)

    return _control(storage_url, name, change)


def resume_study(storage_url: str, name: str | None) -> ControlResult:
    """Hand trials out again (handed-back trials first, each resuming from its checkpoint)."""

    def change(storage: Any, study_id: int, study: str, attrs: dict[str, Any]) -> None:
        if not control.is_paused(attrs):
            raise ServiceError(f"study {study!r} is not paused; nothing to resume")
        storage.set_study_user_attr(study_id, control.CONTROL_ATTR, SweepState.RUNNING.value)

    return _control(storage_url, name, change)


def extend_study(storage_url: str, name: str | None, n_trials: int) -> ControlResult:
    """Set a new trial budget; never below the trials already finished, running or queued."""

    def change(storage: Any, study_id: int, study: str, attrs: dict[str, Any]) -> None:
        spent = budget_counts(storage, study_id, RETRY_KEY)[0]
        if n_trials < spent:
            raise ServiceError(
                f"--n-trials {n_trials}: {spent} trials of {study!r} are already finished, running or queued; "
                f"give at least {spent}"
            )
        storage.set_study_user_attr(study_id, control.BUDGET_ATTR, n_trials)

    return _control(storage_url, name, change)


# --------------------------------------------------------------------------- export / predict


@dataclass(frozen=True)
class ExportResult:
    """What ``sweep export`` wrote."""

    study: str
    number: int
    value: float
    files: tuple[Path, ...]


def _trial_to_export(study: optuna.Study, number: int | None) -> FrozenTrial:
    trials = study.get_trials(deepcopy=False)
    if number is None:
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        if not complete:
            raise ServiceError(f"study {study.study_name!r} has no completed trial yet; nothing to export")
        return max(complete, key=lambda t: (t.value, -t.number))
    by_number = {t.number: t for t in trials}
    if number not in by_number:
        raise ServiceError(f"--trial {number}: study {study.study_name!r} has trials 0..{len(trials) - 1}")
    trial = by_number[number]
    if trial.state != TrialState.COMPLETE:
        raise ServiceError(
            f"--trial {number}: it did not complete (state {trial.state.name.lower()}); only completed "
            "trials have final weights"
        )
    return trial


def export_trial(
    study_name: str | None,
    number: int | None,
    output: str | Path,
    *,
    storage_url: str,
    artifacts: str | None = None,
    force: bool = False,
) -> ExportResult:
    """Write a kept model (default: the best trial's) as model.pt2, state_dict.pt and model.json."""
    from sweep.export import ExportError, write_export

    out = Path(output)
    if out.exists() and not force:  # before any work: nothing is read or written
        raise ServiceError(f"--output {out}: already exists; choose a new folder or pass --force")
    storage = open_read_only(storage_url)
    name = resolve_study_name(storage, study_name, storage_url)
    study = optuna.load_study(study_name=name, storage=storage)
    trial = _trial_to_export(study, number)
    kept = {k.trial: k for k in kept_models(study.user_attrs)}
    if trial.number not in kept:
        shown = ", ".join(map(str, sorted(kept))) or "none yet"
        raise ServiceError(
            f"trial {trial.number} has no kept model (the study keeps its best "
            f"{load_spec_of(storage, name).checkpoint.keep_best}: trials {shown}); train it again and export "
            f"that: sweep rerun {name} {trial.number} --export {out}"
        )
    payload = _download_model(artifact_store(storage_url, artifacts), kept[trial.number])
    try:
        files = write_export(payload, _card(name, trial), out, force=force)
    except ExportError as exc:
        raise ServiceError(str(exc)) from None
    return ExportResult(name, trial.number, float(trial.value or 0.0), tuple(files))


def _download_model(store: Any, kept: KeptModel) -> dict[str, Any]:
    from optuna.artifacts import download_artifact

    from sweep.export import read_payload

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.pt")
        try:
            download_artifact(artifact_store=store, file_path=path, artifact_id=kept.artifact_id)
        except Exception:  # noqa: BLE001 - not found, unreadable: the same advice
            where = getattr(store, "_base_path", "the artifact store")
            raise ServiceError(
                f"the kept model of trial {kept.trial} ({kept.artifact_id}) is not in {where}; pass the "
                "folder the workers stored it in: --artifacts DIR (or SWEEP_ARTIFACTS)"
            ) from None
        return read_payload(path)


def _card(study: str, trial: FrozenTrial | None, **extra: Any) -> dict[str, Any]:
    """The trial's record in model.json (the model's own facts come from its file)."""
    if trial is None:
        return {"study": study, **extra}
    env = dict(trial.user_attrs.get("environment") or {})
    return {
        "study": study,
        "trial": trial.number,
        "params": dict(trial.params),
        "val_accuracy": trial.value,
        "test_accuracy": trial.user_attrs.get("test_accuracy"),
        "trained_precision": trial.user_attrs.get("precision"),  # bf16: the export runs in fp32
        "environment": env,  # library versions and git commit of the worker that trained it
        "git_commit": env.get("git_commit"),
        **extra,
    }


def predict(
    folder: str | Path, inputs: Sequence[str], *, k: int = 5, threads: int | None = None
) -> list[Any]:
    """Top-``k`` classes of every image under ``inputs`` with an export (sweep.export.Prediction /
    Unreadable per input file, in order)."""
    from sweep.export import ExportError, predict_files

    if threads:
        set_threads(threads)
    try:
        return predict_files(Path(folder), inputs, k=k)
    except ExportError as exc:
        raise ServiceError(str(exc)) from None


# --------------------------------------------------------------------------- rerun


@dataclass(frozen=True)
class RerunResult:
    """A trial's stored figures next to a fresh run of the same params and seed."""

    study: str
    number: int
    params: dict[str, Any]
    stored_curve: tuple[float, ...]
    new_curve: tuple[float, ...]
    stored_test: float | None
    new_test: float
    stored_precision: str | None = None  # what the trial trained in ("bf16"/"fp32"; None before it was recorded)
    new_precision: str = "fp32"


def rerun_trial(
    study_name: str | None,
    number: int,
    *,
    storage_url: str,
    device: str = "auto",
    threads: int | None = None,
    on_epoch: Callable[[int, int, float], None] = lambda epoch, epochs, acc: None,
    precision: str | None = None,
    export: str | Path | None = None,
    force: bool = False,
) -> RerunResult:
    """Train one trial's params again from scratch (same seed) without touching the study.

    ``precision`` ("auto", "bf16", "fp32") overrides the study's ``train.precision``: the same trial
    in both precisions shows what bf16 costs in accuracy. ``export``: a folder to write the
    retrained model to, as ``sweep export`` does.
    """
    from sweep.export import ExportError

    if export is not None and Path(export).exists() and not force:
        raise ServiceError(f"--export {export}: already exists; choose a new folder or pass --force")
    storage = open_read_only(storage_url)
    name = resolve_study_name(storage, study_name, storage_url)
    spec = load_spec_of(storage, name)
    trial = _trial_to_rerun(storage, name, number)
    device = resolve_device(device)
    if threads:
        set_threads(threads)
    params = {**spec.fixed_params(), **trial.params}
    original = trial.system_attrs.get(RETRY_KEY, trial.number)
    try:
        data = load_spec_data(spec, storage_url)
        retrained = retrain(spec, params, data, device, seed=trial_seed(spec, original), precision=precision,
                            keep_final=export is not None, on_epoch=on_epoch)
        if retrained.payload is not None and export is not None:
            _export_retrained(name, trial, retrained, Path(export), force=force)
    except (SetupError, ExportError) as exc:
        raise ServiceError(str(exc)) from None
    return _rerun_result(name, trial, retrained.result)


def _trial_to_rerun(storage: optuna.storages.BaseStorage, name: str, number: int) -> FrozenTrial:
    """Trial ``number`` of study ``name``, which must have params to train."""
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    if number not in by_number:
        raise ServiceError(f"TRIAL = {number}: study {name!r} has trials 0..{len(trials) - 1}")
    trial = by_number[number]
    if not trial.params:
        raise ServiceError(f"TRIAL = {number}: it has no params yet (state {trial.state.name})")
    return trial


def _export_retrained(name: str, trial: FrozenTrial, retrained: Retrained, folder: Path, *, force: bool) -> None:
    """Write a retrained model as ``sweep export`` does, its card saying it was trained again."""
    from sweep.export import write_export

    assert retrained.payload is not None
    result = retrained.result
    record = _card(name, trial, val_accuracy=result.val_accuracy, test_accuracy=result.test_accuracy,
                   environment=provenance.environment(), retrained=True)
    record["git_commit"] = record["environment"].get("git_commit")
    write_export(retrained.payload, record, folder, force=force)


def _rerun_result(name: str, trial: FrozenTrial, result: FitResult) -> RerunResult:
    """The trial's stored curve, test accuracy and precision next to the fresh run's."""
    stored = tuple(trial.intermediate_values[k] for k in sorted(trial.intermediate_values))
    return RerunResult(
        name,
        trial.number,
        dict(trial.params),
        stored,
        tuple(h.val_accuracy for h in result.history),
        trial.user_attrs.get("test_accuracy"),
        result.test_accuracy,
        trial.user_attrs.get("precision"),
        result.precision,
    )
