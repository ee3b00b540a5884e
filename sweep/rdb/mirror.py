"""The trials a SweepRDBStorage created or took in this process, mirrored in memory, write-through.

``get_trial`` on a running trial of this process (Optuna calls it when a trial starts and twice in
``tell``) needs no query, nor does re-reading it once finished. Only the owner writes a running
trial; another process can only fail it as stale, which the owner's next write or heartbeat detects
in SQL and then drops the trial from here (storage/README.md: the storage contract). A mirrored trial
is served only while its row is the same (study, number, start): SQLite hands the ids of deleted
trials out again. The last ``MIRROR_SIZE`` trials are kept; an older one is simply read again.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from optuna.trial import FrozenTrial, TrialState

MIRROR_SIZE = 256  # trials kept in memory; a running trial evicted early is simply read from the database
# States in which a mirrored trial is exactly what the database holds, children included (exact_copies).
_MIRROR_EXACT = frozenset({TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL})
_SCALARS = (str, int, float, bool, type(None))


def _own_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes of one's own: nested JSON values deep-copied, scalars (most attributes) as they are."""
    return {k: v if isinstance(v, _SCALARS) else copy.deepcopy(v) for k, v in attrs.items()}


def copy_trial(trial: FrozenTrial, deep: bool = True) -> FrozenTrial:
    """An independent copy of a trial (Optuna mutates the one it is handed); only the attribute values,
    which may be nested JSON, need a deep copy: everything else is immutable scalars. ``deep=False``
    (a ``deepcopy=False`` read, whose caller promises not to mutate) shares those values: the mirror
    replaces an attribute's value on a write, never changes it in place."""
    attrs = _own_attrs if deep else dict
    return FrozenTrial(
        number=trial.number,
        state=trial.state,
        value=None,
        values=list(trial.values) if trial.values is not None else None,
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        params=dict(trial.params),
        distributions=dict(trial.distributions),
        user_attrs=attrs(trial.user_attrs),
        system_attrs=attrs(trial.system_attrs),
        intermediate_values=dict(trial.intermediate_values),
        trial_id=trial._trial_id,
    )


@dataclasses.dataclass(slots=True)
class Mirrored:
    """A trial mirrored in memory, and what identifies its row: SQLite reuses the ids of deleted trials
    (and studies), so a trial id alone may name another study's trial since; the start time (naive UTC,
    microseconds) tells them apart."""

    study_id: int
    number: int
    start: dt.datetime | None
    trial: FrozenTrial

    def is_row(self, row: Any) -> bool:
        return (
            row.study_id == self.study_id
            and row.number == self.number
            and row.datetime_start == self.start
            and row.state == self.trial.state
        )


class TrialMirror:
    """The mirrored trials by id, least recently remembered first; every method holds one lock, so a
    storage's threads (a worker and its heartbeat) may share it."""

    def __init__(self) -> None:
        self._trials: OrderedDict[int, Mirrored] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, study_id: int, start: dt.datetime | None, trial: FrozenTrial) -> None:
        """Mirror ``trial`` (handed over: the mirror keeps and updates this very object)."""
        with self._lock:
            self._trials[trial._trial_id] = Mirrored(study_id, trial.number, start, trial)
            self._trials.move_to_end(trial._trial_id)
            while len(self._trials) > MIRROR_SIZE:
                self._trials.popitem(last=False)

    def forget(self, trial_id: int) -> None:
        with self._lock:
            self._trials.pop(trial_id, None)

    def forget_study(self, study_id: int) -> None:
        """Forget a deleted study's trials: SQLite will hand their ids out again."""
        with self._lock:
            for trial_id in [i for i, known in self._trials.items() if known.study_id == study_id]:
                del self._trials[trial_id]

    def get(self, trial_id: int) -> Mirrored | None:
        with self._lock:
            return self._trials.get(trial_id)

    def start(self, trial_id: int) -> dt.datetime | None:
        """The stored start of a mirrored trial (None: not mirrored), which a guarded write matches."""
        with self._lock:
            known = self._trials.get(trial_id)
            return known.start if known is not None else None

    def update(self, trial_id: int, update: Callable[[FrozenTrial], Any]) -> None:
        """Apply ``update(frozen_trial)`` to the mirrored copy of a trial, if there is one."""
        with self._lock:
            known = self._trials.get(trial_id)
            if known is not None:
                update(known.trial)

    def running(self, trial_id: int) -> FrozenTrial | None:
        """A copy of the trial if it is mirrored and running (None: it must be read)."""
        with self._lock:
            known = self._trials.get(trial_id)
            if known is not None and known.trial.state == TrialState.RUNNING:
                return copy_trial(known.trial)
        return None

    def exact_copies(self, rows: Iterable[Any], deep: bool) -> dict[int, FrozenTrial]:
        """Copies of the trials of these trial rows that the mirror holds exactly as stored, by id.

        A trial this process runs or ran (mirrored, same state) needs no child queries: a finished
        trial never changes again, and only its own worker writes a running trial's params, values,
        reports and attributes (a peer can only fail it, which changes the state in its row).
        """
        served: dict[int, FrozenTrial] = {}
        with self._lock:
            for r in rows:
                known = self._trials.get(r.trial_id)
                if known is not None and known.is_row(r) and r.state in _MIRROR_EXACT:
                    served[r.trial_id] = copy_trial(known.trial, deep)
        return served
