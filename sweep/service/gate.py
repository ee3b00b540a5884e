"""The budget gate: whether a worker may take another trial, decided under the study's budget lock."""

from __future__ import annotations

import enum
import time

import optuna
from optuna.trial import TrialState

from sweep import control, record
from sweep.spec import StudySpec
from sweep.storage import budget_counts, budget_lock, patiently, pop_waiting_trial, retry_on_locked


class Decision(enum.StrEnum):
    """What the budget gate tells a worker (equal to its plain string value)."""

    RUN = "run"  # a trial was taken
    WAIT = "wait"  # budget spent, but a running trial may still come back for a retry
    DONE = "done"  # budget spent, nothing running
    PAUSED = "paused"  # `sweep pause`: no trial is handed out
    STOPPED = "stopped"  # `sweep stop`: no trial is handed out; the worker exits


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
        self._backend = getattr(self.storage, "_backend", self.storage)  # Optuna's cache layer wraps it
        self._beats_when_taken = bool(getattr(self._backend, "BEATS_WHEN_TAKEN", False))
        self._hours_spent = False  # spec.max_hours reached, read before the lock (reading trials is slow)

    def take(self) -> tuple[Decision, optuna.Trial | None]:
        """The worker's step: (RUN, trial) / (WAIT, None) / (DONE, None) / (PAUSED, None)."""
        # Each of its storage calls waits out an outage on its own (a stale trial's FAIL and its
        # re-queue are two), the lock's block as a whole (sweep.storage.patiently).
        self._check_stale()
        self._check_hours()
        decision, trial_id = patiently(self.storage, self._locked_reserve)
        return decision, None if trial_id is None else self._trial(trial_id)

    def _locked_reserve(self) -> tuple[Decision, int | None]:
        # On PostgreSQL a call inside the lock's transaction cannot be retried alone: the
        # transaction went with its connection.
        with budget_lock(self.storage, self.study.study_name):
            return retry_on_locked(self._reserve)

    def next_trial(self) -> tuple[Decision, optuna.Trial | None]:
        """``take`` for a caller that already holds the budget lock."""
        self._check_stale()
        self._check_hours()
        decision, trial_id = self._reserve()
        return decision, None if trial_id is None else self._trial(trial_id)

    def _check_stale(self) -> None:
        now = time.monotonic()
        # Stale trials only appear after a grace period of several heartbeats: checking once per
        # heartbeat interval finds them as early, at a fraction of the cost per trial.
        if now - self.last_stale_check >= self.interval:
            patience = getattr(self._backend, "patience", None)
            if patience is not None and patience.down_within(float(self._backend.grace_period or 0)):
                # After an outage every heartbeat is old, the live owners' too: failing their trials
                # now would retry every trial of the study. Checked again once they beat again.
                return
            optuna.storages.fail_stale_trials(self.study)
            self.last_stale_check = now

    def _check_hours(self) -> None:
        # Outside the lock: it reads every trial. Workers deciding meanwhile may each start one more
        # trial, so a max_hours budget is exact to within one trial per worker (README).
        if self.spec.max_hours is not None:
            self._hours_spent = control.hours_spent(self.spec.max_hours, self.study.get_trials(deepcopy=False))

    def _reserve(self) -> tuple[Decision, int | None]:
        """The decision, and the id of the trial taken (a WAITING one popped, else a new one)."""
        attrs = self.storage.get_study_user_attrs(self.study._study_id)  # pause and budget: read fresh
        if control.is_stopped(attrs):
            return Decision.STOPPED, None
        if control.is_paused(attrs):
            return Decision.PAUSED, None
        spent, waiting, running = budget_counts(self.storage, self.study._study_id, record.FAILED_TRIAL.name)
        if waiting or (spent < control.budget(attrs, self.spec.n_trials) and not self._hours_spent):
            # What Study.ask does before it samples (its relative sampling is _trial's, outside the lock).
            trial_id = pop_waiting_trial(self.study)
            self._popped = trial_id is not None
            if trial_id is None:
                trial_id = self.storage.create_new_trial(self.study._study_id)
            if self.interval and not self._beats_when_taken:
                # Beat at once: a trial whose worker dies before its heartbeat thread starts (in the
                # sampler, say) is then failed as stale and retried. sweep.rdb's storage writes this
                # beat with the trial, in one transaction (Optuna's own writes it just after).
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
