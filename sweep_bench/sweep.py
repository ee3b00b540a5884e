"""What a sweep buys: samplers and pruners replayed against a learning-curve table.

    sweep bench sweep TABLE_STUDY --storage URL [--seeds 10] [--budget-epochs N] [--json out.json]

The table is an ordinary study (``studies/table-cpu.toml``, ``studies/table-gpu.toml``): a grid
sampler, no pruner, every config trained for every epoch, each epoch's validation accuracy in
``trial.intermediate_values`` and the test accuracy in its ``test_accuracy`` attribute (``sweep.record``).

The replay runs each method's sampler and pruner for real (the service's own ``build_sampler`` and
``build_pruner`` on an in-memory study, ask/tell, ``trial.report`` + ``trial.should_prune`` every
epoch, no pruning after the last epoch, as in ``sweep.objective``); only the training is looked up
in the table. The search space is the table's grid as categorical distributions, so every proposal
is a table row. A config proposed twice is trained (looked up) and paid for twice, as the service
would. A row that diverged in the table (NaN loss, pruned there) diverges in the replay at the
same epoch.

Every method gets the same budget of epochs (default: a third of the table's epochs). A trial
starts only while budget is left; one that would run past the budget is cut there (told FAIL).

Figures per method and seed: the anytime curve (best validation accuracy of a completed trial
against cumulative epochs), the epochs needed to come within the tolerance of the table's best final
validation accuracy (None if not within the budget; the tolerance is the table's noise floor, the
binomial standard error of its best accuracy on its validation images, when the trials recorded
how many there were, else ``TOLERANCE``, 0.5 points), and the test accuracy of
the config each method would choose (its best completed trial). ``epochs_ratio_vs_random`` is the
method's mean epochs-to-target over random's; seeds that never reach the target count as the whole
budget (a lower bound, flagged by ``censored``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from sweep import record
from sweep.pruner import spearman
from sweep.search import build_pruner, build_sampler, grid_space
from sweep.spec import ParamSpec, PrunerSpec, SamplerSpec, StudySpec, builtin_specs_dir, load_spec
from sweep_bench import save_figure, write_json

TOLERANCE = 0.005  # "within 0.5 points": the target when a table does not say its validation size
DEFAULT_BUDGET_FRACTION = 1 / 3


@dataclass(frozen=True)
class Method:
    """One replayed search method: a sampler type and a pruner type plus its arguments."""

    name: str
    sampler: str
    pruner: str
    pruner_args: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def default_methods(epochs: int) -> tuple[Method, ...]:
    """(a) random, (b) TPE, (c) TPE + median, (d) TPE + successive halving, (e) TPE + Hyperband,
    then the later-first-rung variants that did best on the CPU table and on the fine-tune table
    (BENCHMARKS.md), the evidence pruner with its defaults and with lr-freeze's settings."""
    return (
        Method("random", "random", "none"),
        Method("tpe", "tpe", "none"),
        Method("tpe+median", "tpe", "median"),  # the service's defaults: n_startup_trials 2, n_warmup_steps 1
        Method("tpe+sha", "tpe", "successive-halving", {"min_resource": 1, "reduction_factor": 3}),
        Method("tpe+hyperband", "tpe", "hyperband", {"min_resource": 1, "max_resource": epochs, "reduction_factor": 3}),
        # Early epochs rank configs poorly when curves cross: first rungs later in training.
        Method("tpe+median(w3)", "tpe", "median", {"n_warmup_steps": min(3, epochs - 1), "n_startup_trials": 5}),
        Method("tpe+sha(min2)", "tpe", "successive-halving", {"min_resource": 2, "reduction_factor": 3}),
        Method(
            "tpe+hyperband(min2)",
            "tpe",
            "hyperband",
            {"min_resource": 2, "max_resource": epochs, "reduction_factor": 3},
        ),
        # First rung half-way, halving: what the fine-tune table left standing (lr-freeze until 2026-12-06).
        Method(
            "tpe+sha(half,rf2)",
            "tpe",
            "successive-halving",
            {"min_resource": max(1, epochs // 2), "reduction_factor": 2},
        ),
        Method(
            "tpe+hyperband(half,rf2)",
            "tpe",
            "hyperband",
            {"min_resource": max(1, epochs // 2), "max_resource": epochs, "reduction_factor": 2},
        ),
        # Rungs where the study's own finished curves start to rank like their ends (sweep.pruner).
        Method("tpe+auto", "tpe", "auto"),
        service_method(),
    )


@functools.cache
def service_method() -> Method:
    """TPE + lr-freeze's own pruner, read from the shipped spec: the replay measures what users get."""
    pruner = load_spec(str(builtin_specs_dir() / "lr-freeze.toml")).pruner
    return Method(f"tpe+{pruner.type}(lr-freeze)", "tpe", pruner.type, dict(pruner.args))


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Row:
    """One grid point of the table: its per-epoch validation accuracy and its test accuracy."""

    params: dict[str, Any]
    curve: tuple[float, ...]  # val accuracy after epoch 1..n; shorter than `epochs` when it diverged
    test_accuracy: float | None
    diverged: bool = False


@dataclass(frozen=True)
class Table:
    """A finished learning-curve table: the grid, one row per grid point."""

    name: str
    spec: StudySpec
    grid: dict[str, list[Any]]
    rows: dict[tuple[Any, ...], Row]
    val_images: int | None = None  # validation images per config (what the noise floor is about)
    weights_sha256: str | None = None  # the backbone every config started from, when a file

    def noise_floor(self) -> float | None:
        """Binomial standard error of the best final validation accuracy on ``val_images`` images."""
        if not self.val_images:
            return None
        p = self.best().curve[-1]
        return math.sqrt(p * (1 - p) / self.val_images)

    def epoch_spearman(self) -> list[float | None]:
        """Spearman correlation of each epoch's ranking of the full-length configs with the final one;
        None where it is undefined (fewer than two configs, or every value the same): JSON has no NaN."""
        full = [r.curve for r in self.rows.values() if len(r.curve) == self.epochs and not r.diverged]
        final = [c[-1] for c in full]
        rhos = [spearman([c[e] for c in full], final) if len(full) > 1 else math.nan for e in range(self.epochs)]
        return [None if math.isnan(rho) else round(rho, 4) for rho in rhos]

    @property
    def epochs(self) -> int:
        return self.spec.epochs

    @property
    def grid_points(self) -> int:
        """The grid's size: more than ``len(rows)`` while the table is being built, or for a subset."""
        return math.prod(len(v) for v in self.grid.values())

    @property
    def total_epochs(self) -> int:
        return len(self.rows) * self.epochs

    def key(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        """The row key of a params dict (floats compared to 10 significant digits)."""
        return tuple(_norm(params[name]) for name in self.grid)

    def best(self) -> Row:
        """The row with the highest final validation accuracy among rows that trained every epoch."""
        full = [r for r in self.rows.values() if len(r.curve) == self.epochs and not r.diverged]
        return max(full, key=lambda r: r.curve[-1])


def _norm(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.10g}")
    return value


def table_from_study(study: optuna.Study, spec: StudySpec, *, complete: bool = True) -> Table:
    """Read a table study: one row per grid point (the newest finished trial wins).

    Rows are COMPLETE trials with every epoch, or trials pruned because the loss diverged. Raises
    ServiceError when a grid point has no such trial yet (the table is not finished), unless
    ``complete`` is False (the live check can start training while the table is still being built).
    """
    from sweep.service import ServiceError

    grid = grid_space(spec)
    table = Table(study.study_name, spec, grid, {})
    rows: dict[tuple[Any, ...], Row] = {}
    val_images: set[int] = set()
    backbones: set[str] = set()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if any(name not in t.params for name in grid):
            continue
        if (n := record.val_images(t)) is not None:
            val_images.add(n)
        if sha := record.weights_sha256(t):
            backbones.add(sha)
        curve = tuple(float(t.intermediate_values[e]) for e in sorted(t.intermediate_values))
        if t.state == TrialState.COMPLETE:
            if len(curve) < spec.epochs:
                continue
            row = Row(dict(t.params), curve[: spec.epochs], record.test_accuracy(t))
        elif record.diverged(t):
            row = Row(dict(t.params), curve, None, diverged=True)
        else:
            continue  # pruned by a pruner: the table spec should not have one
        rows[table.key(t.params)] = row
    if all(r.diverged for r in rows.values()):
        raise ServiceError(
            f"table {study.study_name!r} has no config that trained all {spec.epochs} epochs yet; "
            "run its workers until one has"
        )
    if complete and len(rows) < table.grid_points:
        raise ServiceError(
            f"table {study.study_name!r} has {len(rows)} of {table.grid_points} grid points finished; "
            "run its workers until every config has trained all epochs"
        )
    if len(backbones) > 1:
        raise ServiceError(
            f"table {study.study_name!r} mixes trials of {len(backbones)} different weights files "
            f"({', '.join(sorted(b[:12] for b in backbones))}); a table needs one backbone"
        )
    return dataclasses.replace(
        table,
        rows=rows,
        val_images=min(val_images) if len(val_images) == 1 else None,
        weights_sha256=next(iter(backbones), None),
    )


def load_table(table_study: str | None, storage_url: str, *, complete: bool = True) -> Table:
    """Open the table study read-only from ``storage_url`` and read it."""
    from sweep.service import load_spec_of, open_read_only, resolve_study_name

    storage = open_read_only(storage_url)
    name = resolve_study_name(storage, table_study, storage_url)
    spec = load_spec_of(storage, name)
    study = optuna.load_study(study_name=name, storage=storage)
    return table_from_study(study, spec, complete=complete)


# --------------------------------------------------------------------------- the replay


class RowSampler(optuna.samplers.BaseSampler):
    """A sampler whose proposals are always rows of the table: the identity on a finished grid.

    A table that does not cover its grid (a pilot's subset, a table still being built: the grid
    sampler trains its points in random order, so a partial table is a random subset) would otherwise
    make the replay ask for configs it cannot look up. Each proposal is moved to the nearest value (in
    grid steps) that a row with the params already chosen has, so the trial records, and the sampler
    learns from, the config whose curve it is given.
    """

    def __init__(self, inner: optuna.samplers.BaseSampler, table: Table) -> None:
        self._inner = inner
        self._grid = table.grid
        self._rows = [dict(zip(table.grid, key, strict=True)) for key in table.rows]
        # Each grid value's position, once: a proposal is compared with every row.
        self._index = {name: {_norm(v): i for i, v in enumerate(values)} for name, values in table.grid.items()}

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        proposal = self._inner.sample_relative(study, trial, search_space)
        if not proposal:
            return proposal
        nearest = min(self._rows, key=lambda row: sum(self._steps(n, v, row[n]) for n, v in proposal.items()))
        return {name: nearest[name] for name in proposal}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        value = self._inner.sample_independent(study, trial, param_name, param_distribution)
        chosen = {n: _norm(v) for n, v in trial.params.items() if n in self._grid}
        allowed = {row[param_name] for row in self._rows if all(row[n] == v for n, v in chosen.items())}
        return min(allowed, key=lambda v: (self._steps(param_name, value, v), str(v)))

    def _steps(self, name: str, a: Any, b: Any) -> int:
        index = self._index[name]
        return abs(index[_norm(a)] - index[_norm(b)])

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)


def replay_spec(table: Table, method: Method, seed: int, budget_epochs: int) -> StudySpec:
    """The spec the service would run for ``method``: the table's grid as categorical params.

    ``n_trials`` is the number of full-length trials the budget pays for; the service derives TPE's
    start-up trials from it.
    """
    params = {name: ParamSpec(type="categorical", choices=tuple(values)) for name, values in table.grid.items()}
    return dataclasses.replace(
        table.spec,
        name=f"replay-{method.name}-{seed}",
        n_trials=max(1, budget_epochs // table.epochs),
        seed=seed,
        sampler=SamplerSpec(type=method.sampler),
        pruner=PrunerSpec(type=method.pruner, args=dict(method.pruner_args)),
        params=params,
    )


def replay(
    table: Table,
    method: Method,
    seed: int,
    budget_epochs: int,
    tolerance: float = TOLERANCE,
    rung_noise: Sequence[float] = (),
) -> dict[str, Any]:
    """One method, one seed: run its sampler and pruner against the table until the budget is spent.

    ``rung_noise``: standard deviations (epoch 1, 2, ...; the last repeats) of Gaussian noise added to
    every value reported before the last epoch, as if each proposal were trained with another seed. A
    table has one run per config, so without it a pruner never meets the training-seed noise that
    moves a live study's early values (BENCHMARKS.md, "Seed noise"); the final values, which set the
    target, stay the table's. The model is simple on purpose: independent draws per epoch, the same
    s.d. for every config, added to a table value that already carries its own run's seed. The draws
    are keyed on (replay seed, config, how often it was proposed), so two methods that propose the
    same config meet the same luck.
    """
    spec = replay_spec(table, method, seed, budget_epochs)
    # A fixed study name: Hyperband assigns brackets from a hash of the study name and trial number.
    study = optuna.create_study(
        study_name=spec.name,
        direction="maximize",
        sampler=RowSampler(build_sampler(spec), table),
        pruner=build_pruner(spec),
    )
    distributions = {name: CategoricalDistribution(values) for name, values in table.grid.items()}
    run = _Replay(budget_epochs, target=table.best().curve[-1] - tolerance, rung_noise=tuple(rung_noise), seed=seed)
    while not run.spent():
        trial = study.ask(distributions)
        if table.val_images:  # as the objective records it: the auto pruner's noise margin
            trial.set_user_attr(record.VAL_IMAGES.name, table.val_images)
        row = run.propose(table, trial.params)
        state = run.train(trial, row, table.epochs, run.noise(table.key(trial.params), table.epochs))
        if state is None:
            study.tell(trial, row.curve[-1])
            run.complete(row.curve[-1], trial.number)
        else:
            study.tell(trial, state=state)
    return run.result(table, study, seed)


@dataclass
class _Replay:
    """Where one replay stands: the epochs paid for, the best completed trial, the counts."""

    budget_epochs: int
    target: float
    rung_noise: tuple[float, ...] = ()
    seed: int = 0
    used: int = 0
    best: float | None = None
    best_number: int | None = None
    # (cumulative epochs, best val accuracy) at every improvement
    curve: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    epochs_to_target: int | None = None
    counts: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(("trials", "complete", "pruned", "diverged", "cut", "repeats"), 0)
    )
    trial_epochs: list[int] = dataclasses.field(default_factory=list)
    seen: dict[tuple[Any, ...], int] = dataclasses.field(default_factory=dict)  # config → times proposed
    proposals: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def spent(self) -> bool:
        return self.used >= self.budget_epochs

    def propose(self, table: Table, params: dict[str, Any]) -> Row:
        """The table row of a proposal, counted."""
        key = table.key(params)
        row = table.rows[key]  # KeyError would mean a proposal outside the table: a bug
        self.proposals.append(dict(params))
        self.counts["trials"] += 1
        self.counts["repeats"] += key in self.seen
        self.seen[key] = self.seen.get(key, 0) + 1
        return row

    def train(self, trial: optuna.Trial, row: Row, epochs: int, noise: Sequence[float]) -> TrialState | None:
        """Pay for ``row``'s epochs one at a time, reporting each (plus ``noise`` before the last); the
        end state, None when complete."""
        state, ran = None, 0
        for epoch, acc in enumerate(row.curve, start=1):
            if self.spent():
                state = self._cut()
                break
            self.used += 1
            ran = epoch
            trial.report(min(max(acc + noise[epoch - 1], 0.0), 1.0) if epoch < epochs else acc, epoch)
            if epoch < epochs and trial.should_prune():
                state = TrialState.PRUNED
                self.counts["pruned"] += 1
                break
        else:
            if row.diverged:  # the epoch after the last reported one hit a NaN loss: it is paid for too
                if self.spent():
                    state = self._cut()
                else:
                    self.used += 1
                    ran += 1
                    state = TrialState.PRUNED
                    self.counts["diverged"] += 1
        self.trial_epochs.append(ran)
        return state

    def noise(self, key: tuple[Any, ...], epochs: int) -> list[float]:
        """The draws for the latest proposal of config ``key``, epoch 1..epochs: zeros without
        ``rung_noise``; the same for a (replay seed, config, times proposed) whatever the method."""
        if not self.rung_noise:
            return [0.0] * epochs
        rng = random.Random(f"rung-noise:{self.seed}:{key}:{self.seen.get(key, 0)}")
        sds = [self.rung_noise[min(e, len(self.rung_noise) - 1)] for e in range(epochs)]
        return [rng.gauss(0.0, sd) for sd in sds]

    def _cut(self) -> TrialState:
        self.counts["cut"] += 1
        return TrialState.FAIL

    def complete(self, value: float, number: int) -> None:
        self.counts["complete"] += 1
        if self.best is None or value > self.best:
            self.best, self.best_number = value, number
            self.curve.append((self.used, value))
            if self.epochs_to_target is None and value >= self.target:
                self.epochs_to_target = self.used

    def result(self, table: Table, study: optuna.Study, seed: int) -> dict[str, Any]:
        chosen = study.trials[self.best_number] if self.best_number is not None else None
        chosen_row = table.rows[table.key(chosen.params)] if chosen is not None else None
        return {
            "seed": seed,
            "epochs_used": self.used,
            "best_val_accuracy": self.best,
            "epochs_to_target": self.epochs_to_target,
            "chosen_params": dict(chosen.params) if chosen is not None else None,
            "chosen_test_accuracy": chosen_row.test_accuracy if chosen_row is not None else None,
            "mean_epochs_per_trial": round(statistics.fmean(self.trial_epochs), 4) if self.trial_epochs else 0.0,
            "curve": [list(p) for p in self.curve],
            "proposals": self.proposals,
            **self.counts,
        }


def anytime(runs: Sequence[Mapping[str, Any]], budget_epochs: int) -> dict[str, list[float | None]]:
    """Best val accuracy at every cumulative epoch 1..budget, aggregated over seeds.

    A seed contributes from its first completed trial on; ``n`` says how many seeds have a value.
    """
    per_seed = []
    for run in runs:
        values: list[float | None] = []
        points = list(run["curve"])
        i, current = 0, None
        for e in range(1, budget_epochs + 1):
            while i < len(points) and points[i][0] <= e:
                current = points[i][1]
                i += 1
            values.append(current)
        per_seed.append(values)
    out: dict[str, list[Any]] = {
        "epochs": list(range(1, budget_epochs + 1)),
        "mean": [],
        "std": [],
        "min": [],
        "max": [],
        "n": [],
    }
    for j in range(budget_epochs):
        vals = [s[j] for s in per_seed if s[j] is not None]
        out["n"].append(len(vals))
        out["mean"].append(round(statistics.fmean(vals), 5) if vals else None)
        out["std"].append(round(statistics.pstdev(vals), 5) if vals else None)
        out["min"].append(min(vals) if vals else None)
        out["max"].append(max(vals) if vals else None)
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.fmean(present), 5) if present else None


def summarize(runs: Sequence[Mapping[str, Any]], budget_epochs: int) -> dict[str, Any]:
    """Per-method figures over seeds."""
    reached = [r["epochs_to_target"] for r in runs if r["epochs_to_target"] is not None]
    censored = [r["epochs_to_target"] if r["epochs_to_target"] is not None else budget_epochs for r in runs]
    return {
        "best_val_accuracy_mean": _mean([r["best_val_accuracy"] for r in runs]),
        "chosen_test_accuracy_mean": _mean([r["chosen_test_accuracy"] for r in runs]),
        "chosen_test_accuracy_std": (
            round(
                statistics.pstdev([r["chosen_test_accuracy"] for r in runs if r["chosen_test_accuracy"] is not None]), 5
            )
            if any(r["chosen_test_accuracy"] is not None for r in runs)
            else None
        ),
        "reached_target": len(reached),
        "epochs_to_target_mean": round(statistics.fmean(censored), 3) if censored else None,
        "epochs_to_target_se": (
            round(statistics.stdev(censored) / math.sqrt(len(censored)), 3) if len(censored) > 1 else None
        ),
        "censored": len(reached) < len(runs),
        "trials_mean": _mean([r["trials"] for r in runs]),
        "complete_mean": _mean([r["complete"] for r in runs]),
        "mean_epochs_per_trial": _mean([r["mean_epochs_per_trial"] for r in runs]),
    }


# --------------------------------------------------------------------------- the bench


def run_replays(
    table: Table,
    *,
    seeds: int = 10,
    budget_epochs: int | None = None,
    methods: Sequence[Method] | None = None,
    tolerance: float | None = None,
    rung_noise: Sequence[float] = (),
) -> dict[str, Any]:
    """Replay every method with seeds 0..seeds-1 against ``table``; the JSON-able result.

    ``tolerance``: how close to the table's best counts as reaching it; None takes the table's noise
    floor when it is known, else ``TOLERANCE``. ``rung_noise``: see :func:`replay`.
    """
    if any(not (math.isfinite(sd) and sd >= 0) for sd in rung_noise):
        raise ValueError(f"rung_noise must be standard deviations >= 0, got {list(rung_noise)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if table.spec.train.cooldown_epochs > 0:
        from sweep.service import ServiceError

        # Its branches cost a fraction of an epoch after each epoch: the replay pays whole epochs only.
        raise ServiceError(
            f"table {table.name!r} trained cooldown branches (train.cooldown_epochs = "
            f"{table.spec.train.cooldown_epochs}); the replay cannot charge their steps yet"
        )
    budget_epochs = _budget(table, budget_epochs)
    methods = tuple(methods or default_methods(table.epochs))
    floor = table.noise_floor()
    if tolerance is None:
        tolerance = floor if floor is not None else TOLERANCE
    result: dict[str, Any] = {
        "table": _table_figures(table, floor),
        "budget_epochs": budget_epochs,
        "seeds": seeds,
        "tolerance": round(tolerance, 6),
        "target_val_accuracy": round(table.best().curve[-1] - tolerance, 6),
        "rung_noise": [float(sd) for sd in rung_noise],
        "methods": {m.name: _replay_method(table, m, seeds, budget_epochs, tolerance, rung_noise) for m in methods},
    }
    base = result["methods"].get("random", {}).get("summary", {})
    for entry in result["methods"].values():
        entry["epochs_ratio_vs_random"], entry["epochs_ratio_se"] = _ratio(entry["summary"], base)
    # The headline figures per method, side by side.
    result["epochs_ratio_vs_random"] = {n: e["epochs_ratio_vs_random"] for n, e in result["methods"].items()}
    result["epochs_ratio_se"] = {n: e["epochs_ratio_se"] for n, e in result["methods"].items()}
    result["oracle"] = oracle_ratios(table, table.best().curve[-1] - tolerance)
    result["best_val"] = {n: e["summary"]["best_val_accuracy_mean"] for n, e in result["methods"].items()}
    result["chosen_test"] = {n: e["summary"]["chosen_test_accuracy_mean"] for n, e in result["methods"].items()}
    return result


def parse_rung_noise(text: str) -> tuple[float, ...]:
    """``--rung-noise``: comma-separated standard deviations in accuracy points, epoch 1 first."""
    from sweep.service import ServiceError

    sds: list[float] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            sd = float(part)
        except ValueError:
            sd = math.nan
        if not (math.isfinite(sd) and 0 <= sd <= 100):
            raise ServiceError(
                f"--rung-noise {text!r}: {part!r} is not a standard deviation; give points from 0 to 100, "
                "comma-separated, epoch 1 first (e.g. 4,2,1.5)"
            )
        sds.append(sd / 100)
    return tuple(sds)


def _ratio(mine: Mapping[str, Any], base: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """A method's mean epochs to target over random's, and its standard error (delta method: the
    seeds of the two methods are independent draws)."""
    a, b = mine.get("epochs_to_target_mean"), base.get("epochs_to_target_mean")
    if a is None or not b:
        return None, None
    ratio = a / b
    se_a, se_b = mine.get("epochs_to_target_se"), base.get("epochs_to_target_se")
    if se_a is None or se_b is None or not a:
        return round(ratio, 4), None
    return round(ratio, 4), round(ratio * math.sqrt((se_a / a) ** 2 + (se_b / b) ** 2), 4)


def oracle_ratios(table: Table, target: float) -> dict[int, float | None]:
    """The best any pruner could do, per epoch e: a perfect classifier that stops every config which
    will not reach ``target`` after e epochs, against random search, both drawing configs without
    replacement until the first that reaches the target (expected epochs; a row that diverged costs
    what it trained). None where no row reaches the target."""
    hits = [r for r in table.rows.values() if not r.diverged and r.curve[-1] >= target]
    misses = [r for r in table.rows.values() if r not in hits]
    if not hits:
        return dict.fromkeys(range(1, table.epochs), None)
    before = len(misses) / (len(hits) + 1)  # expected misses drawn before the first hit

    def spent(row: Row, epochs: int) -> int:
        return min(epochs, len(row.curve) + row.diverged)

    full = table.epochs
    random = before * statistics.fmean([spent(r, full) for r in misses] or [0]) + full
    return {
        e: round((before * statistics.fmean([spent(r, e) for r in misses] or [0]) + full) / random, 4)
        for e in range(1, full)
    }


def _budget(table: Table, budget_epochs: int | None) -> int:
    if budget_epochs is None:
        budget_epochs = max(table.epochs, round(table.total_epochs * DEFAULT_BUDGET_FRACTION))
    if budget_epochs < 1:
        from sweep.service import ServiceError

        raise ServiceError(f"--budget-epochs {budget_epochs}: must be >= 1")
    return budget_epochs


def _table_figures(table: Table, floor: float | None) -> dict[str, Any]:
    """What the result says of the table itself: its best row, noise floor, and every config's curve."""
    best = table.best()
    return {
        "study": table.name,
        "grid": table.grid,
        "grid_size": len(table.rows),  # the rows replayed: fewer than grid_points while a table is built
        "grid_points": table.grid_points,
        "partial": len(table.rows) < table.grid_points,
        "epochs": table.epochs,
        "total_epochs": table.total_epochs,
        "best_val_accuracy": best.curve[-1],
        "best_test_accuracy": best.test_accuracy,
        "best_params": best.params,
        "best_test_accuracy_any": max(
            (r.test_accuracy for r in table.rows.values() if r.test_accuracy is not None), default=None
        ),
        "diverged_rows": sum(r.diverged for r in table.rows.values()),
        "validation_images": table.val_images,
        "noise_floor": round(floor, 6) if floor is not None else None,
        "weights_sha256": table.weights_sha256,
        "epoch_spearman": table.epoch_spearman(),
        "schedule": {
            k: getattr(table.spec.train, k)
            for k in ("schedule", "decay_fraction", "cooldown_epochs", "ema_halflife", "rung_value")
        },
        "configs": [
            {"params": r.params, "val_curve": list(r.curve), "test_accuracy": r.test_accuracy, "diverged": r.diverged}
            for r in table.rows.values()
        ],
    }


def _replay_method(
    table: Table, method: Method, seeds: int, budget_epochs: int, tolerance: float, rung_noise: Sequence[float] = ()
) -> dict[str, Any]:
    """One method over every seed: its runs, their summary and anytime curve."""
    t0 = time.perf_counter()
    runs = [replay(table, method, seed, budget_epochs, tolerance, rung_noise) for seed in range(seeds)]
    return {
        "sampler": method.sampler,
        "pruner": method.pruner,
        "pruner_args": dict(method.pruner_args),
        "summary": summarize(runs, budget_epochs),
        "anytime": anytime(runs, budget_epochs),
        "runs": runs,
        "replay_s": round(time.perf_counter() - t0, 3),
    }


def anytime_figure(result: Mapping[str, Any]) -> Any:
    """Plotly figure: mean best val accuracy vs cumulative epochs per method, min–max band over seeds.

    Early on, the mean is over the seeds that have completed a trial (``anytime["n"]`` says how many).
    """
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    fig = go.Figure()
    palette = qualitative.Plotly  # ten colours: one per default method
    for i, (name, entry) in enumerate(result["methods"].items()):
        curve = entry["anytime"]
        color = palette[i % len(palette)]
        xs = [x for x, m in zip(curve["epochs"], curve["mean"], strict=True) if m is not None]
        lo = [v for v in curve["min"] if v is not None]
        hi = [v for v in curve["max"] if v is not None]
        fig.add_trace(
            go.Scatter(
                x=xs + xs[::-1],
                y=hi + lo[::-1],
                fill="toself",
                fillcolor=color,
                opacity=0.15,
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
                legendgroup=name,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[m for m in curve["mean"] if m is not None],
                mode="lines",
                name=name,
                line={"color": color, "shape": "hv"},
                legendgroup=name,
            )
        )
    table = result["table"]
    fig.add_hline(
        y=table["best_val_accuracy"], line_dash="dot", annotation_text="table best", annotation_position="top left"
    )
    fig.add_hline(
        y=result["target_val_accuracy"],
        line_dash="dash",
        line_color="gray",
        annotation_text=f"within {result['tolerance'] * 100:.2f} points",
        annotation_position="bottom right",
    )
    fig.update_layout(
        title=f"Anytime curves on table {table['study']!r} ({_configs(table)} × {table['epochs']} epochs; "
        f"{result['seeds']} seeds, band = min–max)",
        xaxis_title="cumulative training epochs",
        yaxis_title="best validation accuracy of a completed trial",
        template="plotly_white",
        height=620,
    )
    # Where the methods differ: near the table best (the first trials' low values fall below the axis).
    best, tolerance = table["best_val_accuracy"], result["tolerance"]
    fig.update_yaxes(range=[best - max(10 * tolerance, 0.03), best + 2 * tolerance])
    return fig


def write_figure(result: Mapping[str, Any], html_path: Path) -> list[str]:
    """Write the anytime figure as HTML, and as PNG when kaleido or Chromium is there; the paths written."""
    return save_figure(anytime_figure(result), html_path)


def _pct(value: float | None, scale: float = 100.0, digits: int = 2) -> str:
    """A fraction as a percentage with ``digits`` decimals; "-" when there is none."""
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _configs(t: Mapping[str, Any]) -> str:
    """'144 configs', or '61 of 144 configs' for a partial table."""
    if t.get("partial"):
        return f"{t['grid_size']} of {t['grid_points']} configs"
    return f"{t['grid_size']} configs"


def print_table(result: Mapping[str, Any], console: Any) -> None:
    """The per-method summary as a rich table."""
    from rich.table import Table as RichTable

    t = result["table"]
    rt = RichTable(
        title=f"sweep replay on {t['study']!r}: {_configs(t)} × {t['epochs']} epochs, budget "
        f"{result['budget_epochs']} epochs, {result['seeds']} seeds; table best val "
        f"{_pct(t['best_val_accuracy'])} % (test {_pct(t['best_test_accuracy'])} %)"
    )
    for col in ("method", "trials", "ep/trial", "best val %", "test % (chosen)", "reached", "ep to target", "× random"):
        rt.add_column(col, justify="left" if col == "method" else "right")
    for name, entry in result["methods"].items():
        s = entry["summary"]
        to_target = "-" if s["epochs_to_target_mean"] is None else f"{s['epochs_to_target_mean']:.1f}"
        if s["censored"]:
            to_target = "≥" + to_target
        ratio = entry.get("epochs_ratio_vs_random")
        rt.add_row(
            name,
            f"{s['trials_mean']:.1f}",
            f"{s['mean_epochs_per_trial']:.2f}",
            _pct(s["best_val_accuracy_mean"]),
            f"{_pct(s['chosen_test_accuracy_mean'])} ± {_pct(s['chosen_test_accuracy_std'])}",
            f"{s['reached_target']}/{result['seeds']}",
            to_target,
            "-" if ratio is None else f"{ratio:.2f}",
        )
    console.print(rt)
    floor = "unknown" if t.get("noise_floor") is None else f"{t['noise_floor'] * 100:.2f} points"
    console.print(
        f"target: within {result['tolerance'] * 100:.2f} points of the table best (noise floor {floor}, "
        f"{t.get('validation_images') or '?'} validation images); Spearman of each epoch's ranking with "
        f"the final one: {', '.join('-' if v is None else f'{v:.2f}' for v in t.get('epoch_spearman', []))}"
    )
    if result.get("rung_noise"):
        sds = ", ".join(f"{100 * sd:.1f}" for sd in result["rung_noise"])
        console.print(
            f"rung values before the last epoch perturbed by seed-like noise, s.d. {sds} points (epoch 1, ...)"
        )


def run_sweep_bench(
    table_study: str | None,
    *,
    storage_url: str,
    seeds: int = 10,
    budget_epochs: int | None = None,
    json_path: Path | None = None,
    html_path: Path | None = None,
    console: Any = None,
    tolerance: float | None = None,
    partial: bool = False,
    rung_noise: Sequence[float] = (),
) -> dict[str, Any]:
    """Load the table study, replay every method, print the table; save JSON and the figure.

    The figure goes to ``html_path``, or beside ``json_path`` (same name, ``.html``) when only that is given.
    ``partial`` replays a table still being built on the rows it has (a random subset of its grid: the
    grid sampler trains its points in random order); the JSON says so (``table.partial``, which is
    also true of any subset, such as the pilot's configs of the fine-tune grid).
    """
    from rich.console import Console

    console = console or Console()
    table = load_table(table_study, storage_url, complete=not partial)
    result = run_replays(table, seeds=seeds, budget_epochs=budget_epochs, tolerance=tolerance, rung_noise=rung_noise)
    print_table(result, console)
    if html_path is None and json_path is not None:
        html_path = Path(json_path).with_suffix(".html")
    if html_path is not None:
        result["figures"] = write_figure(result, Path(html_path))
        console.print(f"anytime curves: {', '.join(result['figures'])}")
    write_json(result, json_path)
    return result
