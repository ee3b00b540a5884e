"""One self-contained HTML report for one or more studies: numbers, plots and a sortable trial table.

Gathering and drawing are separate, as in Optuna's visualization module:

* ``gather`` reads each study once (``get_trials(deepcopy=False)``) into frozen, typed rows and
  study summaries (``ReportData``); it needs neither plotly nor a browser.
* ``build_figures`` turns ``ReportData`` into plotly figures.
* ``render_html`` lays out the page: plotly.js is inlined once (or referenced from the CDN), each
  figure is embedded as escaped JSON, the trial table is plain HTML sorted and filtered by a few
  lines of inline JS, so the file opens offline and needs no server.
* ``write_report`` writes it atomically (temporary file in the same folder, then ``os.replace``).

Every user-supplied string (study name, params, attrs, failure reasons) is HTML-escaped, and JSON
placed in ``<script>`` has every ``<`` escaped. This module never imports torch: it must start fast
on a machine without a GPU.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import json
import math
import os
import shlex
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial

from sweep import control
from sweep.kept import KeptModel, kept_models

if TYPE_CHECKING:
    import plotly.graph_objects as go

STATE_ORDER = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
FINISHED = frozenset({"COMPLETE", "PRUNED", "FAIL"})
# At most this many learning curves per study and per state are drawn (best ones always kept).
MAX_CURVES = 1500
# At most this many lines in the parallel-coordinates plot (shared by all studies).
MAX_PARCOORDS = 2500
# Scatter plots with more points than this use WebGL (Scattergl); smaller ones stay crisp SVG.
GL_THRESHOLD = 1000
PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")
PLOTLYJS_MODES = ("inline", "cdn")
# "Within one point" of the best trial: one percentage point of validation accuracy.
NEAR_BEST = 0.01


# --------------------------------------------------------------------------- data


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
            return {"trial": r.number, "val_accuracy": r.value, "compute_s": r.compute_s, "epoch_s": r.epoch_s,
                    "epochs": r.epochs, "frozen_layers": r.frozen_layers, "device": r.device}

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
    done = sorted((r for r in rows if r.state == "COMPLETE" and r.value is not None and r.compute_s),
                  key=lambda r: (r.compute_s, -(r.value or 0.0), r.number))
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


def _duration(t: FrozenTrial, attrs: Mapping[str, Any]) -> float | None:
    d = _finite(attrs.get("duration_s"))
    if d is not None and math.isfinite(d):
        return d
    if t.datetime_start is not None and t.datetime_complete is not None:
        return (t.datetime_complete - t.datetime_start).total_seconds()
    return None


def _last_line(text: Any) -> str:
    lines = [ln.strip() for ln in str(text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _row(study: str, t: FrozenTrial, fixed_frozen: int | None = None) -> TrialRow:
    attrs = t.user_attrs
    curve = tuple(float(v) for _, v in sorted(t.intermediate_values.items()))
    epochs_run = attrs.get("epochs_run")
    epochs = int(epochs_run) if isinstance(epochs_run, (int, float)) and not isinstance(epochs_run, bool) \
        else len(curve)
    secs = attrs.get("epoch_seconds")
    epoch_s = compute_s = None
    if isinstance(secs, (list, tuple)):
        good = [s for s in (_finite(x) for x in secs) if s is not None and math.isfinite(s)]
        epoch_s = sum(good) / len(good) if good else None
        compute_s = sum(good) if good else None
    frozen = t.params.get("frozen_layers", fixed_frozen)
    test = _finite(attrs.get("test_accuracy"))
    retry = attrs.get("retry_of")
    device = str(attrs.get("device") or "")
    if attrs.get("gpu_name"):
        device = f"{device} ({attrs['gpu_name']})" if device else str(attrs["gpu_name"])
    return TrialRow(
        study=study,
        number=t.number,
        state=t.state.name,
        params=dict(t.params),
        value=_trial_value(t),
        test_accuracy=test if test is not None and math.isfinite(test) else None,
        epochs=epochs,
        curve=curve,
        duration_s=_duration(t, attrs),
        host=str(attrs.get("host") or ""),
        device=device,
        fail_reason=str(attrs.get("fail_reason") or ""),
        epoch_s=epoch_s,
        retry_of=retry if isinstance(retry, int) and not isinstance(retry, bool) else None,
        error=_last_line(attrs.get("traceback")),
        compute_s=compute_s,
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
    spec = study.user_attrs.get("spec")
    spec = dict(spec) if isinstance(spec, Mapping) else {}
    frozen = study.get_trials(deepcopy=False)
    rows = tuple(sorted((_row(name, t, _fixed_frozen(spec)) for t in frozen), key=lambda r: r.number))
    counts = {s: 0 for s in STATE_ORDER}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    try:
        direction = study.directions[0]
    except (IndexError, RuntimeError):
        direction = optuna.study.StudyDirection.MAXIMIZE
    maximize = direction != optuna.study.StudyDirection.MINIMIZE
    completed = [r for r in rows if r.state == "COMPLETE" and r.value is not None]
    best = None
    if completed:
        best = max(completed, key=lambda r: (r.value if maximize else -r.value, -r.number))  # type: ignore[operator]
    compute = sum(r.duration_s for r in rows if r.state in FINISHED and r.duration_s is not None)

    # Mean epoch time: every recorded epoch, else total duration / epochs run.
    epoch_total, epoch_n = 0.0, 0
    for t in frozen:
        secs = t.user_attrs.get("epoch_seconds")
        if isinstance(secs, (list, tuple)):
            for s in secs:
                f = _finite(s)
                if f is not None and math.isfinite(f):
                    epoch_total += f
                    epoch_n += 1
    if epoch_n:
        mean_epoch = epoch_total / epoch_n
    else:
        timed = [r for r in rows if r.duration_s is not None and r.epochs > 0 and r.state in FINISHED]
        n_ep = sum(r.epochs for r in timed)
        mean_epoch = sum(r.duration_s or 0.0 for r in timed) / n_ep if n_ep else None
    planned = spec.get("epochs")
    if not isinstance(planned, int) or isinstance(planned, bool) or planned <= 0:
        ran = [r.epochs for r in rows if r.state == "COMPLETE"] or [len(r.curve) for r in rows]
        planned = max(ran) if ran and max(ran) > 0 else None
    saved_epochs, saved = 0, 0.0
    if planned:
        for r in rows:
            if r.state != "PRUNED":
                continue
            missing = max(planned - r.epochs, 0)
            saved_epochs += missing
            per = r.epoch_s if r.epoch_s is not None else mean_epoch
            saved += missing * (per or 0.0)
    imp, note = _importances(study, frozen, completed) if importances else ({}, "not computed")
    return StudyData(
        name=name,
        spec=spec,
        trials=rows,
        state_counts=counts,
        best=best,
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


def _control_fields(study: optuna.Study, spec: Mapping[str, Any], trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    attrs = study.user_attrs
    planned = spec.get("n_trials")
    budget = control.budget(attrs, planned if isinstance(planned, int) and not isinstance(planned, bool) else 0)
    return {"state": control.state_of(attrs, budget, trials), "n_trials": budget or None,
            "kept": kept_models(attrs)}


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


# --------------------------------------------------------------------------- figures


def _esc(text: Any) -> str:
    """HTML-escape for page text and for plotly labels (plotly renders entities as text)."""
    return html.escape(str(text), quote=True)


def _fmt(v: Any) -> str:
    """A param or metric value, short."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def _acc(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def _dur(seconds: float | None) -> str:
    """Seconds as '45.2s', '3m 12s', '2h 05m', '3d 04h'."""
    if seconds is None:
        return ""
    s = float(seconds)
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m {sec:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h {m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h:02d}h"


def _color(i: int, alpha: float = 1.0) -> str:
    c = PALETTE[i % len(PALETTE)]
    r, g, b = int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)
    return f"rgba({r},{g},{b},{alpha})"


def _scatter(n_points: int) -> Any:
    import plotly.graph_objects as go

    return go.Scattergl if n_points > GL_THRESHOLD else go.Scatter


def _num(v: float) -> float | None:
    return round(v, 5) if math.isfinite(v) else None


def _hover_params(params: Mapping[str, Any]) -> str:
    return "<br>".join(f"{_esc(k)}={_esc(_fmt(v))}" for k, v in params.items())


def _pick(rows: Sequence[TrialRow], cap: int, best_first: bool) -> list[TrialRow]:
    """At most ``cap`` rows: the best tenth always, the rest evenly spaced by trial number."""
    if len(rows) <= cap:
        return list(rows)
    sign = -1.0 if best_first else 1.0
    scored = sorted(rows, key=lambda r: (r.value is None, sign * (r.value or 0.0)))
    keep = {r.number for r in scored[: cap // 10]}
    rest = [r for r in rows if r.number not in keep]
    need = cap - len(keep)
    step = len(rest) / need
    keep.update(rest[int(i * step)].number for i in range(need))
    return [r for r in rows if r.number in keep]


def _label(data: ReportData, s: StudyData, what: str) -> str:
    return f"{_esc(s.name)}: {what}" if len(data.studies) > 1 else what


def _history(data: ReportData) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, s in enumerate(data.studies):
        done = [r for r in s.trials if r.state == "COMPLETE" and r.value is not None]
        if not done:
            continue
        cls = _scatter(len(done))
        hover = len(done) <= 2000  # per-point hover text only while it stays small
        fig.add_trace(cls(
            x=[r.number for r in done], y=[_num(r.value or 0.0) for r in done], mode="markers",
            name=_label(data, s, "trial accuracy"), legendgroup=str(i),
            marker={"color": _color(i, 0.45), "size": 5},
            text=[f"trial #{r.number}<br>{_hover_params(r.params)}" for r in done] if hover else None,
            hovertemplate="%{y:.4f}<br>%{text}<extra></extra>" if hover else None,
        ))
        best: list[float] = []
        top: float | None = None
        for r in done:
            v = r.value or 0.0
            top = v if top is None else (max(top, v) if s.direction == "maximize" else min(top, v))
            best.append(top)
        fig.add_trace(cls(
            x=[r.number for r in done], y=[_num(b) for b in best], mode="lines",
            name=_label(data, s, "best so far"), legendgroup=str(i),
            line={"color": _color(i), "width": 2.5, "shape": "hv"},
        ))
    fig.update_layout(xaxis_title="trial number", yaxis_title="validation accuracy")
    return fig


def _curve_trace(rows: Sequence[TrialRow], **kw: Any) -> Any:
    xs: list[int | None] = []
    ys: list[float | None] = []
    for r in rows:
        if not r.curve:
            continue
        xs.extend(range(1, len(r.curve) + 1))
        ys.extend(_num(v) for v in r.curve)
        xs.append(None)
        ys.append(None)
    return _scatter(len(xs))(x=xs, y=ys, mode="lines", hoverinfo="skip", connectgaps=False, **kw)


def _curves(data: ReportData) -> tuple[go.Figure, str]:
    import plotly.graph_objects as go

    fig = go.Figure()
    notes = []
    single = len(data.studies) == 1
    for i, s in enumerate(data.studies):
        maximize = s.direction == "maximize"
        # Completed first, pruned (dotted) on top so they stay visible; fainter lines as they multiply.
        for state, style in (("COMPLETE", "solid"), ("PRUNED", "dot")):
            rows = [r for r in s.trials if r.state == state and r.curve]
            if not rows:
                continue
            shown = _pick(rows, MAX_CURVES, maximize)
            if len(shown) < len(rows):
                notes.append(f"{_label(data, s, state.lower())}: {len(shown)} of {len(rows)} curves drawn")
            if state == "PRUNED":
                alpha = max(0.1, min(0.6, 4 / math.sqrt(len(shown))))
                color = f"rgba(110,110,110,{alpha:.2f})" if single else _color(i, alpha * 0.8)
            else:
                color = _color(i, max(0.06, min(0.6, 3 / math.sqrt(len(shown)))))
            fig.add_trace(_curve_trace(
                shown, name=_label(data, s, f"{state.lower()} ({len(rows)})"), legendgroup=f"{i}-{state}",
                line={"color": color, "width": 1, "dash": style},
            ))
        if s.best is not None and s.best.curve:
            b = s.best
            fig.add_trace(go.Scatter(
                x=list(range(1, len(b.curve) + 1)), y=[_num(v) for v in b.curve], mode="lines+markers",
                name=_label(data, s, f"best: trial #{b.number}"),
                line={"color": _color(i) if not single else "#ef553b", "width": 3},
                hovertemplate="epoch %{x}: %{y:.4f}<extra></extra>",
            ))
    fig.update_layout(xaxis_title="epoch", yaxis_title="validation accuracy")
    return fig, "; ".join(notes)


def _common_params(data: ReportData) -> list[str]:
    """Params present in every completed trial of every study (spec order first)."""
    names: list[str] | None = None
    for s in data.studies:
        for r in s.trials:
            if r.state != "COMPLETE" or r.value is None:
                continue
            keys = list(r.params)
            names = keys if names is None else [k for k in names if k in r.params]
    return names or []


def _param_type(data: ReportData, name: str, values: Sequence[Any]) -> str:
    for s in data.studies:
        if name in s.param_types:
            return s.param_types[name]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return "float"
    return "categorical"


def _parcoords(data: ReportData) -> tuple[go.Figure | None, str]:
    import plotly.graph_objects as go

    params = _common_params(data)
    rows: list[TrialRow] = []
    notes = []
    for s in data.studies:
        done = [r for r in s.trials if r.state == "COMPLETE" and r.value is not None]
        shown = _pick(done, MAX_PARCOORDS // len(data.studies), s.direction == "maximize")
        if len(shown) < len(done):
            notes.append(f"{_label(data, s, '')}{len(shown)} of {len(done)} trials drawn")
        rows += shown
    if not params or not rows:
        return None, ""
    if len(data.studies) == 1 and data.studies[0].importances:
        imp = data.studies[0].importances
        params.sort(key=lambda p: -imp.get(p, -1.0))
    dims: list[dict[str, Any]] = []
    if len(data.studies) > 1:
        names = [s.name for s in data.studies]
        dims.append({
            "label": "study", "values": [names.index(r.study) for r in rows],
            "tickvals": list(range(len(names))), "ticktext": [_esc(n) for n in names],
        })
    for p in params:
        vals = [r.params[p] for r in rows]
        kind = _param_type(data, p, vals)
        if kind == "categorical" or not all(isinstance(v, (int, float)) for v in vals):
            cats = [_fmt(v) for v in _sorted_choices(vals)]
            dims.append({
                "label": _esc(p), "values": [cats.index(_fmt(v)) for v in vals],
                "tickvals": list(range(len(cats))), "ticktext": [_esc(c) for c in cats],
            })
        elif kind == "log" and all(v > 0 for v in vals):
            logs = [math.log10(v) for v in vals]
            lo, hi = math.floor(min(logs)), math.ceil(max(logs))
            ticks = list(range(lo, hi + 1))
            dims.append({
                "label": f"{_esc(p)} (log)", "values": [round(v, 5) for v in logs],
                "tickvals": ticks, "ticktext": [f"1e{t}" for t in ticks],
            })
        else:
            dims.append({"label": _esc(p), "values": [round(float(v), 6) for v in vals]})
    acc = [_num(r.value or 0.0) for r in rows]
    dims.append({"label": "val accuracy", "values": acc})
    fig = go.Figure(go.Parcoords(
        dimensions=dims,
        line={"color": acc, "colorscale": "Viridis", "showscale": True, "colorbar": {"title": "acc"}},
    ))
    fig.update_layout(margin={"l": 80, "r": 80, "t": 60, "b": 40})
    return fig, "; ".join(notes)


def _importance_fig(data: ReportData) -> go.Figure | None:
    import plotly.graph_objects as go

    with_imp = [(i, s) for i, s in enumerate(data.studies) if s.importances]
    if not with_imp:
        return None
    fig = go.Figure()
    order: list[str] = []
    for _, s in with_imp:
        order += [p for p in sorted(s.importances, key=lambda p: s.importances[p]) if p not in order]
    for i, s in with_imp:
        fig.add_trace(go.Bar(
            x=[round(s.importances.get(p, 0.0), 5) for p in order], y=[_esc(p) for p in order],
            orientation="h", name=_esc(s.name), marker={"color": _color(i)},
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        ))
    fig.update_layout(
        xaxis_title="importance (PED-ANOVA, normalised)", barmode="group",
        showlegend=len(data.studies) > 1, height=max(300, 120 + 40 * len(order) * len(with_imp)),
    )
    return fig


def _slices(data: ReportData) -> go.Figure | None:
    from plotly.subplots import make_subplots

    names: list[str] = []
    for s in data.studies:
        for r in s.trials:
            if r.state == "COMPLETE":
                names += [p for p in r.params if p not in names]
    if not names:
        return None
    cols = min(len(names), 4)
    nrows = math.ceil(len(names) / cols)
    fig = make_subplots(rows=nrows, cols=cols, shared_yaxes=True, horizontal_spacing=0.04,
                        vertical_spacing=0.18 if nrows > 1 else 0.1,
                        subplot_titles=[_esc(p) for p in names])
    for k, p in enumerate(names):
        row, col = k // cols + 1, k % cols + 1
        per_study = [[r for r in s.trials if r.state == "COMPLETE" and r.value is not None and p in r.params]
                     for s in data.studies]
        all_vals = [r.params[p] for done in per_study for r in done]
        kind = _param_type(data, p, all_vals)
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in all_vals)
        categorical = kind == "categorical" or not numeric
        for i, (s, done) in enumerate(zip(data.studies, per_study, strict=True)):
            if not done:
                continue
            vals = [r.params[p] for r in done]
            xs = [_esc(_fmt(v)) for v in vals] if categorical else [round(float(v), 7) for v in vals]
            marker: dict[str, Any] = {"size": 5}
            if len(data.studies) == 1:
                marker.update(color=[r.number for r in done], colorscale=[[0, "#c6dbef"], [1, "#08306b"]],
                              opacity=0.8, showscale=k == 0, colorbar={"title": "trial #"})
            else:
                marker.update(color=_color(i, 0.5))
            fig.add_trace(_scatter(len(done))(
                x=xs, y=[_num(r.value or 0.0) for r in done], mode="markers", marker=marker,
                name=_esc(s.name), legendgroup=str(i), showlegend=k == 0 and len(data.studies) > 1,
                hovertemplate=f"{_esc(p)}=%{{x}}<br>acc=%{{y:.4f}}<extra></extra>",
            ), row=row, col=col)
        if categorical:
            order = [_esc(_fmt(v)) for v in _sorted_choices(all_vals)]
            fig.update_xaxes(type="category", categoryorder="array", categoryarray=order, row=row, col=col)
        elif kind == "log" and all(v > 0 for v in all_vals):
            fig.update_xaxes(type="log", row=row, col=col)
    fig.update_yaxes(title_text="validation accuracy", col=1)
    fig.update_layout(height=360 * nrows, showlegend=len(data.studies) > 1)
    return fig


def _sorted_choices(values: Iterable[Any]) -> list[Any]:
    """Distinct values, numbers numerically first, then the rest as text."""
    uniq: dict[str, Any] = {}
    for v in values:
        uniq.setdefault(_fmt(v), v)
    nums = [v for v in uniq.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    rest = sorted((v for v in uniq.values() if v not in nums), key=_fmt)
    return sorted(nums) + rest


def _bins(values: Sequence[Any], log: bool, n: int = 10) -> tuple[list[str], list[int]]:
    """Labels and each value's bin index: distinct values if few, else (log-)even bins."""
    distinct = sorted(set(values), key=lambda v: (str(type(v)), v))
    if len(distinct) <= 12 or not all(isinstance(v, (int, float)) for v in distinct):
        labels = [_fmt(v) for v in distinct]
        pos = {v: i for i, v in enumerate(distinct)}
        return labels, [pos[v] for v in values]
    use_log = log and all(v > 0 for v in distinct)
    tr = (lambda v: math.log10(v)) if use_log else (lambda v: float(v))
    lo, hi = tr(distinct[0]), tr(distinct[-1])
    width = (hi - lo) / n or 1.0
    edges = [lo + i * width for i in range(n + 1)]
    back = (lambda v: 10**v) if use_log else (lambda v: v)
    labels = [f"{back(edges[i]):.2g}–{back(edges[i + 1]):.2g}" for i in range(n)]
    return labels, [min(int((tr(v) - lo) / width), n - 1) for v in values]


def _heatmap(data: ReportData, s: StudyData) -> go.Figure | None:
    import plotly.graph_objects as go

    done = [r for r in s.trials if r.state == "COMPLETE" and r.value is not None
            and "lr" in r.params and "frozen_layers" in r.params]
    if not done:
        return None
    xl, xi = _bins([r.params["lr"] for r in done], s.param_types.get("lr", "log") == "log")
    yl, yi = _bins([r.params["frozen_layers"] for r in done], False)
    best: list[list[float | None]] = [[None] * len(xl) for _ in yl]
    count = [[0] * len(xl) for _ in yl]
    maximize = s.direction == "maximize"
    for r, x, y in zip(done, xi, yi, strict=True):
        v = r.value or 0.0
        cur = best[y][x]
        best[y][x] = v if cur is None else (max(cur, v) if maximize else min(cur, v))
        count[y][x] += 1
    text = [[f"n={c}" if c else "" for c in row] for row in count]
    fig = go.Figure(go.Heatmap(
        z=[[_num(v) if v is not None else None for v in row] for row in best],
        x=[_esc(v) for v in xl], y=[_esc(v) for v in yl], text=text, texttemplate="%{text}",
        colorscale="Viridis", colorbar={"title": "best acc"}, hoverongaps=False,
        hovertemplate="lr %{x}<br>frozen_layers %{y}<br>best acc %{z:.4f}<br>%{text}<extra></extra>",
    ))
    fig.update_layout(xaxis_title="lr", yaxis_title="frozen_layers", xaxis_type="category",
                      yaxis_type="category")
    return fig


def _cost(data: ReportData) -> go.Figure | None:
    """Validation accuracy against compute per completed trial, the Pareto front drawn as a step line."""
    import plotly.graph_objects as go

    fig = go.Figure()
    units = set()
    for i, s in enumerate(data.studies):
        c = s.cost
        if c is None or not c.trials:
            continue
        units.add(c.unit)
        text = [f"trial #{r.number}<br>{_dur(r.compute_s)} total, {_dur(r.epoch_s)}/epoch × {r.epochs}"
                f"<br>{_hover_params(r.params)}" for r in c.trials]
        fig.add_trace(_scatter(len(c.trials))(
            x=[round(r.compute_s or 0.0, 3) for r in c.trials], y=[_num(r.value or 0.0) for r in c.trials],
            mode="markers", name=_label(data, s, "trials"), legendgroup=str(i), text=text,
            marker={"color": [r.frozen_layers if r.frozen_layers is not None else -1 for r in c.trials],
                    "colorscale": "Viridis", "cmin": 0, "cmax": 5, "size": 7,
                    "showscale": i == 0, "colorbar": {"title": "frozen layers"}},
            hovertemplate="%{y:.4f}<br>%{text}<extra></extra>",
        ))
        fig.add_trace(go.Scatter(
            x=[round(r.compute_s or 0.0, 3) for r in c.pareto], y=[_num(r.value or 0.0) for r in c.pareto],
            mode="lines+markers", name=_label(data, s, "Pareto front"), legendgroup=str(i),
            line={"color": _color(i), "width": 2, "shape": "hv"}, hoverinfo="skip",
        ))
    if not fig.data:
        return None
    unit = units.pop() if len(units) == 1 else "seconds"
    fig.update_layout(xaxis_title=f"compute per trial ({unit}, all epochs)", yaxis_title="validation accuracy",
                      xaxis_type="log")
    return fig


def build_figures(data: ReportData) -> list[tuple[str, go.Figure]]:
    """The report's plots, in page order, as (title, figure); titles are already HTML-escaped."""
    figs: list[tuple[str, go.Figure | None]] = [("Optimization history", _history(data))]
    curves, note = _curves(data)
    figs.append(("Learning curves" + (f" ({note})" if note else ""), curves))
    par, note = _parcoords(data)
    figs.append(("Parallel coordinates" + (f" ({note})" if note else ""), par))
    figs.append(("Parameter importances", _importance_fig(data)))
    figs.append(("Slice plots", _slices(data)))
    figs.append(("Accuracy against cost", _cost(data)))
    for s in data.studies:
        title = "Best accuracy by lr × frozen_layers"
        figs.append((f"{title}: {_esc(s.name)}" if len(data.studies) > 1 else title, _heatmap(data, s)))
    out: list[tuple[str, go.Figure]] = []
    for title, fig in figs:
        if fig is None or not fig.data:
            continue
        fig.update_layout(template="plotly_white", margin_t=fig.layout.margin.t or 30,
                          legend={"orientation": "h", "y": -0.18})
        out.append((title, fig))
    return out


# --------------------------------------------------------------------------- page


def _script_json(obj: Any) -> str:
    """JSON safe to put inside <script>: no '<' survives, so no '</script>' or '<!--'."""
    return json.dumps(obj, separators=(",", ":"), default=_json_default).replace("<", "\\u003c")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (dt.datetime, dt.date)):
        return o.isoformat()
    return str(o)


def _plotlyjs_tag(mode: str) -> str:
    import plotly.offline

    if mode == "inline":
        return f"<script>{plotly.offline.get_plotlyjs()}</script>"
    if mode == "cdn":
        version = plotly.offline.get_plotlyjs_version()
        sri = base64.b64encode(hashlib.sha256(plotly.offline.get_plotlyjs().encode()).digest()).decode()
        return (f'<script charset="utf-8" src="https://cdn.plot.ly/plotly-{version}.min.js" '
                f'integrity="sha256-{sri}" crossorigin="anonymous"></script>')
    raise ValueError(f"plotlyjs must be one of {', '.join(PLOTLYJS_MODES)}, not {mode!r}")


def _shell_quote(name: str) -> str:
    return shlex.quote(name)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d2330;
background:#f5f6f8}
main{max-width:1280px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:0 0 8px}h3{font-size:15px;margin:12px 0 6px}
.meta{color:#5b6475;font-size:13px}.card{background:#fff;border:1px solid #dde1e8;border-radius:8px;
padding:14px 18px;margin:14px 0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:8px 18px}
.stat b{display:block;font-size:18px}.stat span{color:#5b6475;font-size:12px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;margin-right:4px;
background:#eceff4}
.s-COMPLETE{background:#dcf5e6;color:#11643a}.s-PRUNED{background:#eef0f3;color:#4b5563}
.s-FAIL{background:#fde2e1;color:#9b1c1c}.s-RUNNING{background:#dbeafe;color:#1e40af}
.s-WAITING{background:#fef3c7;color:#92400e}
details pre,code{background:#f0f2f5;border-radius:4px}details pre{padding:10px;overflow:auto;max-height:420px}
code{padding:2px 6px}summary{cursor:pointer;color:#2454c5}
table.kv td{padding:2px 14px 2px 0;vertical-align:top}table.kv td:first-child{color:#5b6475}
.plot{width:100%}.note{color:#5b6475;font-size:13px}
#trials{border-collapse:collapse;width:100%;font-size:12.5px;font-variant-numeric:tabular-nums}
#trials th,#trials td{padding:3px 8px;border-bottom:1px solid #e6e9ef;text-align:left;white-space:nowrap}
#trials td.fail{white-space:normal;max-width:320px}
#trials th{position:sticky;top:0;background:#fff;cursor:pointer;user-select:none}
#trials th[aria-sort=ascending]::after{content:" ▲"}#trials th[aria-sort=descending]::after{content:" ▼"}
.tablewrap{max-height:640px;overflow:auto;border:1px solid #e6e9ef}
#filter{padding:5px 8px;width:320px;max-width:100%;border:1px solid #c8ced8;border-radius:4px}
"""

# Sort on header click (numbers by data-v, text otherwise; empty cells last), filter on typing.
_TABLE_JS = """
(function(){
var t=document.getElementById('trials');if(!t)return;var tb=t.tBodies[0];
var rows=Array.prototype.slice.call(tb.rows),texts=null;
var f=document.getElementById('filter'),shown=document.getElementById('shown');
function key(r,i,num){var c=r.cells[i];var v=c.hasAttribute('data-v')?c.getAttribute('data-v'):c.textContent;
 if(v==='')return null;return num?parseFloat(v):v.toLowerCase();}
Array.prototype.forEach.call(t.tHead.rows[0].cells,function(th,i){th.addEventListener('click',function(){
 var dir=th.getAttribute('aria-sort')==='ascending'?-1:1,num=th.getAttribute('data-type')==='num';
 Array.prototype.forEach.call(t.tHead.rows[0].cells,function(h){h.removeAttribute('aria-sort');});
 th.setAttribute('aria-sort',dir===1?'ascending':'descending');
 var keyed=rows.map(function(r,j){return [key(r,i,num),j,r];});
 keyed.sort(function(a,b){if(a[0]===null)return b[0]===null?a[1]-b[1]:1;if(b[0]===null)return -1;
  if(a[0]<b[0])return -dir;if(a[0]>b[0])return dir;return a[1]-b[1];});
 rows=keyed.map(function(k){return k[2];});var frag=document.createDocumentFragment();
 rows.forEach(function(r){frag.appendChild(r);});tb.appendChild(frag);});});
function filter(){var terms=f.value.toLowerCase().split(/\\s+/).filter(Boolean),n=0;
 if(!texts){texts=new Map();rows.forEach(function(r){texts.set(r,r.textContent.toLowerCase());});}
 rows.forEach(function(r){var s=texts.get(r),ok=terms.every(function(w){return s.indexOf(w)>=0;});
  r.hidden=!ok;if(ok)n++;});shown.textContent=n;}
if(f){f.addEventListener('input',filter);}
})();
"""

# Figures are queued while the page parses and drawn one after another once it is loaded, so text and
# table show at once; <body data-plots="done"> marks the end (tests wait for it).
_PLOT_JS = """
var sweepQueue=[];
function sweepPlot(id,fig){sweepQueue.push([id,fig]);}
function sweepDrawAll(){var i=0;
 function next(){if(i>=sweepQueue.length){document.body.setAttribute('data-plots','done');return;}
  var item=sweepQueue[i++],el=document.getElementById(item[0]);
  if(!window.Plotly){
   el.textContent='plotly.js is not loaded (offline? write the report with --plotlyjs inline).';next();return;}
  try{Plotly.newPlot(el,item[1].data,item[1].layout,{responsive:true,displaylogo:false})
   .then(function(){setTimeout(next,0);},function(e){console.error(e);next();});}
  catch(e){console.error(e);el.textContent='this plot failed: '+e;next();}}
 next();}
document.addEventListener('DOMContentLoaded',sweepDrawAll);
"""


def _stat(value: str, label: str) -> str:
    return f'<div class="stat"><b>{value}</b><span>{label}</span></div>'


def _study_header(s: StudyData, multi: bool) -> str:
    counts = [(k, v) for k, v in s.state_counts.items() if v]
    badges = " ".join(f'<span class="badge s-{_esc(k)}">{_esc(k.lower())} {v}</span>' for k, v in counts)
    badges = badges or '<span class="badge">no trials yet</span>'
    saved_detail = ""
    if s.saved_epochs:
        per = f"{s.mean_epoch_s:.1f}s" if s.mean_epoch_s is not None else "?"
        saved_detail = f"{s.saved_epochs} epochs not run × ~{per}/epoch"
    stats = "".join([
        _stat(str(len(s.trials)), "trials"),
        _stat(_dur(s.compute_s) or "0s", "total compute"),
        _stat(_dur(s.saved_s) or "0s", "saved by pruning" + (f" ({saved_detail})" if saved_detail else "")),
        _stat(_acc(s.best.value) if s.best else "–", "best validation accuracy"),
        _stat(_esc(s.spec.get("epochs", s.planned_epochs or "?")), "epochs per trial (planned)"),
        _stat(_esc(s.direction), "direction"),
        _stat(f'<span class="sweep-state">{_esc(s.state.value)}</span>', "sweep state"),
        _stat(str(s.n_trials) if s.n_trials else "?", "trial budget"),
    ])
    spec = _esc(json.dumps(s.spec, indent=2, default=str)) if s.spec else "(no spec stored in the study)"
    title = f"<h2>Study <span class=name>{_esc(s.name)}</span></h2>" if multi else ""
    return (f'<section class="card study">{title}<div>{badges}</div>'
            f'<div class="grid" style="margin-top:10px">{stats}</div>'
            f"<details><summary>Resolved spec</summary><pre>{spec}</pre></details></section>")


def _best_card(s: StudyData, multi: bool) -> str:
    b = s.best
    head = f"Best trial of {_esc(s.name)}" if multi else "Best trial"
    if b is None:
        return f'<section class="card"><h2>{head}</h2><p class="note">No completed trial yet.</p></section>'
    params = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(_fmt(v))}</td></tr>" for k, v in b.params.items())
    kv = [
        ("trial", f"#{b.number}"),
        ("validation accuracy", _acc(b.value)),
        ("test accuracy", _acc(b.test_accuracy) or "–"),
        ("epochs", str(b.epochs)),
        ("duration", _dur(b.duration_s) or "–"),
        ("host / device", " / ".join(x for x in (b.host, b.device) if x) or "–"),
    ]
    facts = "".join(f"<tr><td>{k}</td><td>{_esc(v)}</td></tr>" for k, v in kv)
    cmd = f"sweep rerun {_shell_quote(s.name)} {b.number}"
    return (f'<section class="card best"><h2>{head}</h2><div class="grid">'
            f'<div><h3>Parameters</h3><table class="kv">{params}</table></div>'
            f'<div><h3>Result</h3><table class="kv">{facts}</table></div>'
            f"{_cheapest(s)}</div>{_kept(s)}"
            f"<h3>Rerun it</h3><code class=rerun>{_esc(cmd)}</code></section>")


def _cheapest(s: StudyData) -> str:
    """The cheapest trial within one point of the best, beside it."""
    c = s.cost
    if c is None or c.cheapest_near_best is None or c.best is None:
        return ""
    r = c.cheapest_near_best
    if r.number == c.best.number:
        note = "the best trial is also the cheapest within one point of it"
        return f'<div class="cheapest"><h3>Cheapest within one point</h3><p class="note">{note}</p></div>'
    kv = [
        ("trial", f"#{r.number}"),
        ("validation accuracy", f"{_acc(r.value)} ({(r.value or 0.0) - (c.best.value or 0.0):+.4f})"),
        ("frozen layers", "–" if r.frozen_layers is None else str(r.frozen_layers)),
        ("compute", f"{_dur(r.compute_s)} vs {_dur(c.best.compute_s)} ({c.unit})"),
        ("speed-up", f"{c.speedup:.2f}×" if c.speedup else "–"),
    ]
    facts = "".join(f"<tr><td>{k}</td><td>{_esc(v)}</td></tr>" for k, v in kv)
    return f'<div class="cheapest"><h3>Cheapest within one point</h3><table class="kv">{facts}</table></div>'


def _kept(s: StudyData) -> str:
    """Which trials have a kept model, and where (``sweep export`` reads them)."""
    if not s.kept:
        return '<h3>Kept models</h3><p class="note kept">none (checkpoint.keep_best = 0, or no trial completed)</p>'
    rows = "".join(f"<tr><td>#{k.trial}</td><td>{_acc(k.value)}</td><td><code>{_esc(k.path or k.artifact_id)}</code>"
                   f"</td><td><code>{_esc(f'sweep export {_shell_quote(s.name)} --trial {k.trial} --output DIR')}"
                   "</code></td></tr>" for k in s.kept)
    return f'<h3>Kept models</h3><table class="kv kept">{rows}</table>'



def _cell(text: str, sort: Any = None, cls: str = "", title: str = "") -> str:
    """A table cell; ``sort`` (a number) goes in data-v when it differs from the text shown."""
    attrs = ""
    if sort is not None:
        key = f"{sort:.6g}" if isinstance(sort, float) else str(sort)
        if key != text:
            attrs += f' data-v="{_esc(key)}"'
    if cls:
        attrs += f' class="{cls}"'
    if title:
        attrs += f' title="{_esc(title)}"'
    return f"<td{attrs}>{_esc(text)}</td>"


def _table(data: ReportData) -> str:
    multi = len(data.studies) > 1
    params: list[str] = []
    for s in data.studies:
        for p in s.spec.get("params", {}) if isinstance(s.spec.get("params"), Mapping) else ():
            if p not in params:
                params.append(p)
    for s in data.studies:
        for r in s.trials:
            params += [p for p in r.params if p not in params]
    numeric = {p for p in params if all(
        isinstance(r.params.get(p), (int, float)) and not isinstance(r.params.get(p), bool)
        for s in data.studies for r in s.trials if p in r.params)}
    cols: list[tuple[str, str]] = ([("study", "str")] if multi else []) + [("#", "num"), ("state", "str")]
    cols += [(p, "num" if p in numeric else "str") for p in params]
    cols += [("val acc", "num"), ("test acc", "num"), ("epochs", "num"), ("duration", "num"),
             ("host", "str"), ("device", "str"), ("failure", "str")]
    head = "".join(f'<th data-type="{t}" scope="col">{_esc(c)}</th>' for c, t in cols)
    body: list[str] = []
    total = 0
    for s in data.studies:
        for r in s.trials:
            total += 1
            cells = [_cell(r.study)] if multi else []
            cells.append(_cell(str(r.number), r.number))
            cells.append(f'<td class="s-{_esc(r.state)}">{_esc(r.state.lower())}</td>')
            for p in params:
                v = r.params.get(p)
                cells.append(_cell(_fmt(v), v if p in numeric and v is not None else None))
            cells.append(_cell(_acc(r.value), r.value))
            cells.append(_cell(_acc(r.test_accuracy), r.test_accuracy))
            cells.append(_cell(str(r.epochs), r.epochs))
            cells.append(_cell(_dur(r.duration_s), None if r.duration_s is None else round(r.duration_s, 2)))
            cells.append(_cell(r.host))
            cells.append(_cell(r.device))
            fail = r.fail_reason + (f" (retry of #{r.retry_of})" if r.retry_of is not None else "")
            cells.append(_cell(fail.strip(), cls="fail" if fail else "", title=r.error))
            body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<section class="card"><h2>Trials</h2>'
        '<p><input id="filter" type="search" placeholder="Filter: e.g. pruned cuda:0 (all words must match)" '
        f'aria-label="filter trials"> <span class="note">showing <span id="shown">{total}</span> of {total}'
        " · click a column header to sort</span></p>"
        f'<div class="tablewrap"><table id="trials"><thead><tr>{head}</tr></thead><tbody>'
        + "\n".join(body)
        + "</tbody></table></div></section>"
    )


def render_html(
    data: ReportData,
    *,
    plotlyjs: str = "inline",
    figures: list[tuple[str, go.Figure]] | None = None,
    refresh_s: int | None = None,
) -> str:
    """The whole page as one string. ``refresh_s`` adds a meta refresh (for a report rewritten on a loop)."""
    plotly_tag = _plotlyjs_tag(plotlyjs)
    figs = build_figures(data) if figures is None else figures
    multi = len(data.studies) > 1
    names = ", ".join(s.name for s in data.studies) or "(no study)"
    when = data.generated_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    meta = [f"generated {when}"]
    if data.storage_label:
        meta.insert(0, f"storage <code>{_esc(data.storage_label)}</code>")
    if multi:
        total = sum(len(s.trials) for s in data.studies)
        meta.append(f"{len(data.studies)} studies, {total} trials")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s else "",
        f"<title>sweep report: {_esc(names)}</title>",
        f"<style>{_CSS}</style>",
        "<script>window.PlotlyConfig={MathJaxConfig:'local'};</script>",
        plotly_tag,
        f"<script>{_PLOT_JS}</script>",
        "</head><body><main>",
        f'<h1>sweep report: <span class="name">{_esc(names)}</span></h1>',
        f'<div class="meta">{" · ".join(meta)}</div>',
    ]
    for s in data.studies:
        parts.append(_study_header(s, multi))
        parts.append(_best_card(s, multi))
    notes = [f"{_esc(s.name)}: {_esc(s.importance_note)}" for s in data.studies
             if not s.importances and s.importance_note]
    for i, (title, fig) in enumerate(figs):
        fid = f"fig-{i}"
        height = int(fig.layout.height or 450)
        parts.append(f'<section class="card figure"><h2>{title}</h2>'
                     f'<div id="{fid}" class="plot" style="height:{height}px"></div>'
                     f"<script>sweepPlot({_script_json(fid)},{_script_json(fig.to_plotly_json())});</script>"
                     "</section>")
    if notes:
        parts.append('<p class="note">Parameter importances skipped: ' + "; ".join(notes) + "</p>")
    parts.append(_table(data))
    parts.append(f"<script>{_TABLE_JS}</script></main></body></html>")
    return "\n".join(p for p in parts if p)


def write_report(
    studies: Sequence[optuna.Study] | optuna.Study,
    output: str | Path,
    *,
    storage_label: str = "",
    plotlyjs: str = "inline",
    refresh_s: int | None = None,
) -> Path:
    """Gather, render and write the report atomically; returns the output path."""
    if plotlyjs not in PLOTLYJS_MODES:
        raise ValueError(f"plotlyjs must be one of {', '.join(PLOTLYJS_MODES)}, not {plotlyjs!r}")
    data = gather(studies, storage_label=storage_label)
    return write_html(render_html(data, plotlyjs=plotlyjs, refresh_s=refresh_s), output)


def write_html(text: str, output: str | Path) -> Path:
    """Write ``text`` to ``output`` atomically: a reader sees the old file or the new one, never half."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


__all__ = [
    "ReportData",
    "StudyData",
    "TrialRow",
    "build_figures",
    "gather",
    "render_html",
    "write_html",
    "write_report",
]
