"""TPE whose cost per ask does not grow with Python work per finished trial.

Optuna's ``TPESampler`` re-derives everything from the trial list on every suggestion: it classifies
each trial (feasible? complete? pruned?), sorts them by value with Python key functions, and converts
every parameter of every trial to its internal representation, in Python, once per parameter. At
5,000 trials that is most of a 60-110 ms ask.

Finished trials never change, so :class:`IncrementalTPESampler` keeps what TPE needs of each one in
columns (state, value, last intermediate step and value, constraint violation, the internal
representation of every parameter) that grow as trials finish, and does the split and the lookup
with numpy. It proposes exactly what ``TPESampler`` proposes with the same seed (same split, same
tie-breaking, same kernels, same random draws; tests/test_tpe.py compares them trial by trial).
Running trials (Optuna 5's default constant liar counts other workers' current trials as "bad") are
few and still changing: they are converted afresh on every ask, as TPE does. Where the incremental
path does not apply (several objectives, a parameter value TPE itself would reject) it defers to
``TPESampler`` for that ask; on an Optuna whose TPE internals differ (sweep.compat), for every ask,
said once. Sampling from several threads (``study.optimize(n_jobs=N)``) is serialised on a lock;
pickling drops the columns.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.samplers import TPESampler
from optuna.samplers._tpe import sampler as _tpe
from optuna.study import StudyDirection
from optuna.trial import TrialState

from sweep.compat import tpe_unsupported

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial

_COMPLETE, _PRUNED, _FAIL = 0, 1, 2
_LOCK_CREATION = threading.Lock()
_log = logging.getLogger("sweep.search")
_MAX_PARAM_COLUMNS = 64  # (name, distribution) columns kept; a space that keeps changing starts afresh
_STATE_CODE = {TrialState.COMPLETE: _COMPLETE, TrialState.PRUNED: _PRUNED, TrialState.FAIL: _FAIL}


# None when the incremental path can run; else why not, in one line (every ask is then stock TPE's).
# sweep.compat checks the Optuna internals this module reads (TPE's module functions, the sampler's
# private attributes), so that a future Optuna that renames any of them runs stock TPE instead.
UNSUPPORTED = tpe_unsupported()
_fallback_said = False


def _say_fallback() -> None:
    global _fallback_said
    if not _fallback_said:
        _fallback_said = True
        _log.warning("sweep: using Optuna's own TPE (slower per ask): sweep.tpe %s", UNSUPPORTED)


class _Fallback(Exception):
    """The incremental path does not apply to this call; use TPESampler's own."""


class _TrialColumns:
    """What TPE's split and kernels need from each finished trial of one study, as growing columns."""

    def __init__(self, storage: object, study_id: int) -> None:
        # The storage object itself, not its id(): a new storage may reuse a collected one's id.
        self.storage, self.study_id = storage, study_id
        self.row_of: dict[int, int] = {}  # trial number -> row
        self.trials: list[FrozenTrial] = []
        self.number: list[int] = []
        self.state: list[int] = []
        self.value: list[float] = []
        self.prune_step: list[float] = []  # first element of Optuna's pruned-trial sort key (-step)
        self.prune_score: list[float] = []  # second element (sign-adjusted last intermediate value)
        self.infeasible: list[float] = []  # sum of violated constraints (> 0: infeasible)
        self._arrays: dict[str, np.ndarray] = {}
        self._n_arrays = 0
        # (param name, distribution) -> per row: internal value, has the param, value rejected by dist
        self._params: dict[tuple[str, BaseDistribution], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def rows(self, trials: list[FrozenTrial], maximize: bool, skip: int) -> tuple[np.ndarray, list[FrozenTrial]]:
        """Row of each finished trial (appending those seen for the first time), and the running ones
        except trial number ``skip`` (the trial being sampled)."""
        row_of = self.row_of
        rows: list[int] = []
        running: list[FrozenTrial] = []
        for trial in trials:
            number = trial.number
            row = row_of.get(number)
            if row is None:
                if number == skip:
                    continue
                if trial.state == TrialState.RUNNING:
                    running.append(trial)
                    continue
                row = self._append(trial, maximize)
            rows.append(row)
        return np.asarray(rows, dtype=np.int64), running

    def _append(self, trial: FrozenTrial, maximize: bool) -> int:
        code = _STATE_CODE.get(trial.state)
        if code is None:  # only finished trials (which never change again) are kept
            raise _Fallback
        infeasible = _tpe._get_infeasible_trial_score(trial)
        if code == _FAIL and not infeasible > 0:
            raise _Fallback  # TPE itself would reject such a trial (it asserts); let it
        step, score = _tpe._get_pruned_trial_score(trial, _Direction(maximize)) if code == _PRUNED else (0, 0.0)
        value = trial.value if code == _COMPLETE else math.nan
        if value is None or (code == _COMPLETE and math.isnan(value)):
            raise _Fallback  # not something Optuna stores for a finished trial; let TPE decide
        row = len(self.number)
        self.row_of[trial.number] = row
        self.trials.append(trial)
        self.number.append(trial.number)
        self.state.append(code)
        self.value.append(value)
        self.prune_step.append(float(step))
        self.prune_score.append(float(score))
        self.infeasible.append(float(infeasible))
        return row

    def array(self, name: str) -> np.ndarray:
        """One column as a numpy array (rebuilt only when rows were added)."""
        if self._n_arrays != len(self.number):
            self._arrays = {}
            self._n_arrays = len(self.number)
        arr = self._arrays.get(name)
        if arr is None:
            arr = self._arrays[name] = np.asarray(getattr(self, name), dtype=np.float64)
        return arr

    def param(self, name: str, dist: BaseDistribution) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For every row: the internal representation of ``name`` under ``dist``, whether the row has
        the param, and whether its value is one ``dist`` rejects (TPE raises only if it uses that row)."""
        key = (name, dist)
        cached = self._params.get(key)
        if cached is None:
            if len(self._params) >= _MAX_PARAM_COLUMNS:
                self._params.clear()
            # Optuna builds these arrays with np.asarray of the Python values: int for categorical
            # indices, float otherwise; keep the same dtype so the kernels see identical input.
            dtype = np.int64 if type(dist).__name__ == "CategoricalDistribution" else np.float64
            cached = (np.empty(0, dtype=dtype), np.empty(0, dtype=bool), np.empty(0, dtype=bool))
        values, present, bad = cached
        if len(values) < len(self.trials):
            new_vals, new_present, new_bad = [], [], []
            for trial in self.trials[len(values) :]:
                params = trial.params
                value, has, rejected = 0, name in params, False
                if has:
                    try:
                        value = dist.to_internal_repr(params[name])
                    except ValueError:  # e.g. a value outside today's choices
                        value, rejected = 0, True
                new_vals.append(value)
                new_present.append(has)
                new_bad.append(rejected)
            values = np.concatenate([values, np.asarray(new_vals, dtype=values.dtype)])
            present = np.concatenate([present, np.asarray(new_present, dtype=bool)])
            bad = np.concatenate([bad, np.asarray(new_bad, dtype=bool)])
        self._params[key] = (values, present, bad)
        return values, present, bad


class _Direction:
    """The one attribute ``_get_pruned_trial_score`` reads from a study."""

    def __init__(self, maximize: bool) -> None:
        self.direction = StudyDirection.MAXIMIZE if maximize else StudyDirection.MINIMIZE


def _stable_first(keys: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the ``n`` smallest keys and of the rest, ties in input order (like ``sorted``)."""
    order = np.argsort(keys, kind="stable")
    return order[:n], order[n:]


class IncrementalTPESampler(TPESampler):
    """``TPESampler`` with the per-trial work kept between asks; same proposals, see module doc."""

    # No __init__ of its own: sweep validates spec arguments against TPESampler's signature.
    _columns: _TrialColumns | None = None

    def _lock(self) -> threading.Lock:
        """This sampler's lock: study.optimize(n_jobs=N) samples from several threads at once."""
        lock = self.__dict__.get("_columns_lock")
        if lock is None:
            with _LOCK_CREATION:
                lock = self.__dict__.setdefault("_columns_lock", threading.Lock())
        return lock

    def __getstate__(self) -> dict[str, Any]:
        # The columns hold the storage and its trials: a copy of the sampler rebuilds its own.
        state = self.__dict__.copy()
        state.pop("_columns", None)
        state.pop("_columns_lock", None)
        return state

    def _incremental_applies(self, study: Study) -> bool:
        if UNSUPPORTED is not None:
            _say_fallback()
            return False
        return len(study.directions) == 1

    def _sample(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not self._incremental_applies(study):
            return super()._sample(study, trial, search_space)
        try:
            with self._lock():
                return self._sample_incremental(study, trial, search_space)
        except _Fallback:  # nothing was half-added to the columns: they stay for the next ask
            return super()._sample(study, trial, search_space)

    def _sample_incremental(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        # The same trials TPESampler._sample reads: with the constant liar (Optuna 5's default),
        # running trials too (other workers' current trials, put in the "above" group), not this one.
        if self._constant_liar:
            states = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING]
            trials = study._get_trials(deepcopy=False, states=states, use_cache=False)
        else:
            trials = study._get_trials(deepcopy=False, states=[TrialState.COMPLETE, TrialState.PRUNED], use_cache=True)
        cols = self._columns
        if cols is None or cols.storage is not study._storage or cols.study_id != study._study_id:
            self._columns = _TrialColumns(study._storage, study._study_id)
        cols = self._columns
        maximize = study.direction == StudyDirection.MAXIMIZE
        rows, running = cols.rows(trials, maximize, skip=trial.number)

        if self._gamma is None:
            self._gamma = _tpe.default_gamma
        below_pos, above_pos = self._split(cols, rows, self._gamma(len(rows)), maximize)

        mpe_below = self._parzen(study, cols, rows[below_pos], [], search_space)
        mpe_above = self._parzen(study, cols, rows[above_pos], running, search_space)
        samples_below = mpe_below.sample(self._rng.rng, self._n_ei_candidates)
        acq_func_vals = self._compute_acquisition_func(samples_below, mpe_below, mpe_above)
        ret = TPESampler._compare(samples_below, acq_func_vals)
        for param_name, dist in search_space.items():
            ret[param_name] = dist.to_external_repr(ret[param_name])
        return ret

    @staticmethod
    def _split(cols: _TrialColumns, rows: np.ndarray, n_below: int, maximize: bool) -> tuple[np.ndarray, np.ndarray]:
        """Optuna's ``_split_trials`` for finished trials of one objective, as positions into ``rows``."""
        state = cols.array("state")[rows]
        infeasible_score = cols.array("infeasible")[rows]
        infeasible = infeasible_score > 0
        complete = np.flatnonzero(~infeasible & (state == _COMPLETE))
        pruned = np.flatnonzero(~infeasible & (state == _PRUNED))
        infeasible_pos = np.flatnonzero(infeasible)

        values = cols.array("value")[rows[complete]]
        n = min(n_below, len(complete))
        b, a = _stable_first(-values if maximize else values, n)
        below, above = [complete[b]], [complete[a]]

        n_below = max(0, n_below - n)
        n = min(n_below, len(pruned))
        # Sort key (step, score) ascending; lexsort's last key is the primary one, and it is stable.
        sub = rows[pruned]
        order = np.lexsort((cols.array("prune_score")[sub], cols.array("prune_step")[sub]))
        below.append(pruned[order[:n]])
        above.append(pruned[order[n:]])

        n_below = max(0, n_below - n)
        n = min(n_below, len(infeasible_pos))
        b, a = _stable_first(infeasible_score[infeasible_pos], n)
        below.append(infeasible_pos[b])
        above.append(infeasible_pos[a])
        return np.concatenate(below), np.concatenate(above)

    def _parzen(
        self,
        study: Study,
        cols: _TrialColumns,
        rows: np.ndarray,
        running: list[FrozenTrial],
        search_space: dict[str, BaseDistribution],
    ) -> Any:
        """The Parzen estimator of these trials, fed exactly what ``_get_internal_repr`` would give it:
        trials that have every parameter of the space, in trial-number order."""
        columns = {name: cols.param(name, dist) for name, dist in search_space.items()}
        keep = np.ones(len(rows), dtype=bool)
        for _, present, _ in columns.values():
            keep &= present[rows]
        kept = rows[keep]
        if any(bad[kept].any() for _, _, bad in columns.values()):
            raise _Fallback  # TPE converts this trial's value and raises; let it say so itself
        observations = {name: values[kept] for name, (values, _, _) in columns.items()}
        numbers = cols.array("number")[kept]
        if running:
            # Few (one per other worker) and still changing: converted afresh, as TPE does.
            lies = [self._get_params(t, study) for t in running]
            lies_kept = [(t, p) for t, p in zip(running, lies, strict=True) if search_space.keys() <= p.keys()]
            try:
                for name, dist in search_space.items():
                    extra = np.asarray([dist.to_internal_repr(p[name]) for _, p in lies_kept])
                    observations[name] = np.concatenate([observations[name], extra.astype(observations[name].dtype)])
            except ValueError:
                raise _Fallback from None
            numbers = np.concatenate([numbers, np.asarray([t.number for t, _ in lies_kept], dtype=np.float64)])
        order = np.argsort(numbers, kind="stable")
        # Optuna's np.asarray([]) of no observations is float64 whatever the distribution.
        observations = {name: obs[order] if len(obs) else np.asarray([]) for name, obs in observations.items()}
        return self._parzen_estimator_cls(observations, search_space, self._parzen_estimator_parameters)
