"""Gather: each study read once into frozen, typed rows and summaries (no plotly, no torch).

The data half of the report, as Optuna keeps its ``_get_*_info`` apart from the plotting:
:func:`gather` returns a :class:`ReportData` that the figures and the page only read.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from sweep import control, record
from sweep.kept import KeptModel, kept_models

STATE_ORDER = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
FINISHED = frozenset({"COMPLETE", "PRUNED", "FAIL"})
# "Within one point" of the best trial: one percentage point of validation accuracy.
NEAR_BEST = 0.01


@dataclass(frozen=True)
class TrialRow:
    """One trial, as the report shows it."""

    study: str
    number: int
    state: str
    params: dict[str, Any]
    value: float | None
    test_accuracy: float | None
    epochs: int
    curve: tuple[float, ...]
    duration_s: float | None
    host: str = ""
    device: str = ""
    fail_reason: str = ""
    epoch_s: float | None = None  # this trial's mean seconds per epoch, when it recorded them
    retry_of: int | None = None
    warm_from: str = ""  # "STUDY#N": a copy of an earlier study's trial (sweep create --warm-start)
    error: str = ""  # last line of the traceback, if any
    compute_s: float | None = None  # seconds of all its epochs (resumed ones too): what it cost
    frozen_layers: int | None = None


@dataclass(frozen=True)
class CostSummary:
    """Accuracy against compute over the completed trials that recorded their epoch times.

    ``unit`` is GPU-seconds when every such trial ran on a GPU (one GPU per trial), else seconds.
    ``pareto``: trials no other trial beats on both accuracy and cost, cheapest first.
    ``cheapest_near_best``: the cheapest trial within NEAR_BEST of the best; ``speedup`` = the best
    trial's compute / its compute.
    """

    unit: str
    trials: tuple[TrialRow, ...]
    pareto: tuple[TrialRow, ...]
    best: TrialRow | None
    cheapest_near_best: TrialRow | None
    speedup: float | None

    def to_json(self) -> dict[str, Any]:
        def point(r: TrialRow | None) -> dict[str, Any] | None:
            if r is None:
                return None
            return {
                "trial": r.number,
                "val_accuracy": r.value,
                "compute_s": r.compute_s,
                "epoch_s": r.epoch_s,
                "epochs": r.epochs,
                "frozen_layers": r.frozen_layers,
                "device": r.device,
            }

        return {
            "unit": self.unit,
            "trials": [point(r) for r in self.trials],
            "pareto": [r.number for r in self.pareto],
            "best": point(self.best),
            "cheapest_within_one_point": point(self.cheapest_near_best),
            "speedup": self.speedup,
        }


def cost_summary(rows: Sequence[TrialRow]) -> CostSummary:
    """The accuracy/cost trade-off of a study's completed trials."""
    done = sorted(
        (r for r in rows if r.state == "COMPLETE" and r.value is not None and r.compute_s),
        key=lambda r: (r.compute_s, -(r.value or 0.0), r.number),
    )
    unit = "GPU-seconds" if done and all(r.device.startswith("cuda") for r in done) else "seconds"
    pareto: list[TrialRow] = []
    for r in done:  # cheapest first: a trial is on the front when it beats every cheaper one
        if not pareto or (r.value or 0.0) > (pareto[-1].value or 0.0):
            pareto.append(r)
    best = max(done, key=lambda r: (r.value or 0.0, -r.number), default=None)
    cheap = None
    if best is not None:
        cheap = next(r for r in done if (r.value or 0.0) >= (best.value or 0.0) - NEAR_BEST - 1e-12)
    speedup = (best.compute_s or 0.0) / cheap.compute_s if best and cheap and cheap.compute_s else None
    return CostSummary(unit, tuple(done), tuple(pareto), best, cheap, speedup)


def cost_summary_of(study: str, trials: Sequence[FrozenTrial], spec: Mapping[str, Any]) -> CostSummary:
    """``cost_summary`` straight from a study's trials (for ``sweep status``)."""
    return cost_summary([_row(study, t, _fixed_frozen(spec)) for t in trials])


def _fixed_frozen(spec: Mapping[str, Any]) -> int | None:
    train = spec.get("train") if isinstance(spec, Mapping) else None
    value = train.get("frozen_layers") if isinstance(train, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class StudyData:
    """One study's summary: what the header, best-trial card and figures need."""

    name: str
    spec: dict[str, Any]
    trials: tuple[TrialRow, ...]
    state_counts: dict[str, int]
    best: TrialRow | None
    compute_s: float
    saved_s: float
    importances: dict[str, float]
    direction: str = "maximize"
    saved_epochs: int = 0
    mean_epoch_s: float | None = None
    planned_epochs: int | None = None
    param_types: dict[str, str] = field(default_factory=dict)  # float | log | int | categorical
    importance_note: str = ""  # why importances are missing, when they are
    state: control.SweepState = control.SweepState.RUNNING
    n_trials: int | None = None  # the budget (`sweep extend` may have changed the spec's)
    kept: tuple[KeptModel, ...] = ()  # trials whose final model is kept, best first
    cost: CostSummary | None = None


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows, gathered once."""

    studies: tuple[StudyData, ...]
    storage_label: str
    generated_at: dt.datetime


def _finite(x: Any) -> float | None:
    """A float, or None for missing / non-numeric values (NaN stays NaN: curves keep their gaps)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _trial_value(t: FrozenTrial) -> float | None:
    values = t.values
    if not values:
        return None
    v = _finite(values[0])
    return v if v is not None and math.isfinite(v) else None


def _duration(t: FrozenTrial) -> float | None:
    if (d := record.duration_s(t)) is not None:
        return d
    if t.datetime_start is not None and t.datetime_complete is not None:
        return (t.datetime_complete - t.datetime_start).total_seconds()
    return None


def _last_line(text: Any) -> str:
    lines = [ln.strip() for ln in str(text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _row(study: str, t: FrozenTrial, fixed_frozen: int | None = None) -> TrialRow:
    curve = tuple(float(v) for _, v in sorted(t.intermediate_values.items()))
    epochs = record.epochs_run(t)
    secs = [float(s) for s in record.epoch_seconds(t)]
    frozen = t.params.get("frozen_layers", fixed_frozen)
    device, gpu = record.device(t), record.gpu_name(t)
    if gpu:
        device = f"{device} ({gpu})" if device else gpu
    return TrialRow(
        study=study,
        number=t.number,
        state=t.state.name,
        params=dict(t.params),
        value=_trial_value(t),
        test_accuracy=record.test_accuracy(t),
        epochs=len(curve) if epochs is None else epochs,
        curve=curve,
        duration_s=_duration(t),
        host=record.host(t),
        device=device,
        fail_reason=record.fail_reason(t),
        epoch_s=sum(secs) / len(secs) if secs else None,
        retry_of=record.retry_of(t),
        warm_from=record.warm_start_from(t),
        error=_last_line(record.traceback(t)),
        compute_s=sum(secs) if secs else None,
        frozen_layers=frozen if isinstance(frozen, int) and not isinstance(frozen, bool) else None,
    )


def _param_types(trials: Iterable[FrozenTrial]) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            if name in out:
                continue
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                out[name] = "categorical"
            elif isinstance(dist, optuna.distributions.IntDistribution):
                out[name] = "log" if dist.log else "int"
            elif isinstance(dist, optuna.distributions.FloatDistribution):
                out[name] = "log" if dist.log else "float"
            else:
                out[name] = "float"
    return out


class _TrialsView:
    """Enough of a Study for ``optuna.importance``, answering ``get_trials`` from the trials already read.

    The evaluator asks for the trials several times; on an RDB storage each ask is a full reload.
    """

    def __init__(self, study: optuna.Study, trials: Sequence[FrozenTrial]) -> None:
        self._study = study
        self._trials = list(trials)

    def get_trials(self, deepcopy: bool = True, states: Iterable[Any] | None = None) -> list[FrozenTrial]:
        keep = None if states is None else tuple(states)
        return [t for t in self._trials if keep is None or t.state in keep]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


def _importances(
    study: optuna.Study, frozen: Sequence[FrozenTrial], completed: Sequence[TrialRow]
) -> tuple[dict[str, float], str]:
    """PED-ANOVA importances (no sklearn), or an empty dict and the reason they are skipped."""
    if len(completed) < 2:
        return {}, "needs at least 2 completed trials"
    names = {n for r in completed for n in r.params}
    varying = [n for n in names if len({repr(r.params.get(n)) for r in completed}) > 1]
    if not varying:
        return {}, "no searched parameter varies across completed trials"
    if len({r.value for r in completed}) < 2:
        return {}, "all completed trials have the same accuracy"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            view: Any = _TrialsView(study, frozen)
            raw = optuna.importance.get_param_importances(view, evaluator=evaluator)
    except Exception as exc:  # noqa: BLE001 - importances are a nice-to-have; never fail the report
        return {}, f"could not be computed ({type(exc).__name__}: {_last_line(exc)})"
    imp = {k: float(v) for k, v in raw.items() if _finite(v) is not None and math.isfinite(float(v))}
    if not imp:
        return {}, "could not be computed"
    return imp, ""


def _study_data(study: optuna.Study, *, importances: bool) -> StudyData:
    name = study.study_name
    spec = record.spec(study.user_attrs)
    frozen = study.get_trials(deepcopy=False)
    rows = tuple(sorted((_row(name, t, _fixed_frozen(spec)) for t in frozen), key=lambda r: r.number))
    counts = {s: 0 for s in STATE_ORDER}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    maximize = _maximizes(study)
    completed = [r for r in rows if r.state == "COMPLETE" and r.value is not None]
    compute = sum(r.duration_s for r in rows if r.state in FINISHED and r.duration_s is not None)
    mean_epoch = _mean_epoch_s(frozen, rows)
    planned = _planned_epochs(spec, rows)
    saved_epochs, saved = _saved_by_pruning(rows, planned, mean_epoch)
    imp, note = _importances(study, frozen, completed) if importances else ({}, "not computed")
    return StudyData(
        name=name,
        spec=spec,
        trials=rows,
        state_counts=counts,
        best=_best(completed, maximize),
        compute_s=float(compute),
        saved_s=float(saved),
        importances=imp,
        direction="maximize" if maximize else "minimize",
        saved_epochs=saved_epochs,
        mean_epoch_s=mean_epoch,
        planned_epochs=planned,
        param_types=_param_types(frozen),
        importance_note=note,
        **_control_fields(study, spec, frozen),
        cost=cost_summary(rows),
    )


def _maximizes(study: optuna.Study) -> bool:
    try:
        direction = study.directions[0]
    except (IndexError, RuntimeError):
        direction = optuna.study.StudyDirection.MAXIMIZE
    return direction != optuna.study.StudyDirection.MINIMIZE


def _best(completed: Sequence[TrialRow], maximize: bool) -> TrialRow | None:
    """The best completed trial; on a tie the earliest."""
    if not completed:
        return None
    return max(completed, key=lambda r: (r.value if maximize else -r.value, -r.number))  # type: ignore[operator]


def _mean_epoch_s(trials: Sequence[FrozenTrial], rows: Sequence[TrialRow]) -> float | None:
    """Mean epoch time: every recorded epoch, else total duration / epochs run."""
    epoch_total, epoch_n = 0.0, 0
    for t in trials:
        for s in record.epoch_seconds(t):  # one running sum, epoch by epoch: the mean does not depend on grouping
            epoch_total += float(s)
            epoch_n += 1
    if epoch_n:
        return epoch_total / epoch_n
    timed = [r for r in rows if r.duration_s is not None and r.epochs > 0 and r.state in FINISHED]
    n_ep = sum(r.epochs for r in timed)
    return sum(r.duration_s or 0.0 for r in timed) / n_ep if n_ep else None


def _planned_epochs(spec: Mapping[str, Any], rows: Sequence[TrialRow]) -> int | None:
    """The spec's epochs; for a study without a usable spec, the most any trial ran."""
    planned = spec.get("epochs")
    if not isinstance(planned, int) or isinstance(planned, bool) or planned <= 0:
        ran = [r.epochs for r in rows if r.state == "COMPLETE"] or [len(r.curve) for r in rows]
        planned = max(ran) if ran and max(ran) > 0 else None
    return planned


def _saved_by_pruning(rows: Sequence[TrialRow], planned: int | None, mean_epoch: float | None) -> tuple[int, float]:
    """(epochs, seconds) that pruned trials did not run, at each one's own epoch time where known.

    As the replay bench counts (BENCHMARKS.md): a trial stopped by its NaN loss (fail_reason
    ``diverged``, also PRUNED) was not stopped by the pruner, and saves nothing the pruner can claim.
    """
    saved_epochs, saved = 0, 0.0
    if planned:
        for r in rows:
            if r.state != "PRUNED" or r.fail_reason == record.Reason.DIVERGED:
                continue
            missing = max(planned - r.epochs, 0)
            saved_epochs += missing
            per = r.epoch_s if r.epoch_s is not None else mean_epoch
            saved += missing * (per or 0.0)
    return saved_epochs, saved


def _control_fields(study: optuna.Study, spec: Mapping[str, Any], trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    attrs = study.user_attrs
    planned = spec.get("n_trials")
    budget = control.budget(attrs, planned if isinstance(planned, int) and not isinstance(planned, bool) else 0)
    hours = spec.get("max_hours")
    hours = float(hours) if isinstance(hours, (int, float)) and not isinstance(hours, bool) else None
    return {
        "state": control.state_of(attrs, budget, trials, max_hours=hours),
        "n_trials": budget or None,
        "kept": kept_models(attrs),
    }


def gather(
    studies: Sequence[optuna.Study] | optuna.Study,
    *,
    storage_label: str = "",
    importances: bool = True,
    now: dt.datetime | None = None,
) -> ReportData:
    """Read every study once into a ``ReportData`` (no plotting here)."""
    if isinstance(studies, optuna.Study):
        studies = [studies]
    data = tuple(_study_data(s, importances=importances) for s in studies)
    return ReportData(
        studies=data,
        storage_label=storage_label,
        generated_at=now or dt.datetime.now(dt.UTC),
    )
