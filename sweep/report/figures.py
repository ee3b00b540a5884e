"""Figures: ReportData → plotly figures, one builder per plot (plotly imported only when drawing)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sweep.report.info import ReportData, StudyData, TrialRow
from sweep.show import dur, esc, short

if TYPE_CHECKING:
    import plotly.graph_objects as go

# At most this many learning curves per study and per state are drawn (best ones always kept).
MAX_CURVES = 1500
# At most this many lines in the parallel-coordinates plot (shared by all studies).
MAX_PARCOORDS = 2500
# Scatter plots with more points than this use WebGL (Scattergl); smaller ones stay crisp SVG.
GL_THRESHOLD = 1000
PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")


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
    return "<br>".join(f"{esc(k)}={esc(short(v))}" for k, v in params.items())


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


def _integer_axis(fig: go.Figure, values: Iterable[int], axis: str = "x") -> None:
    """Ticks on whole numbers only (trial numbers, epochs): plotly puts ticks at 1.5 on a short range."""
    vals = list(values)
    span = (max(vals) - min(vals)) if vals else 0
    # Up to a dozen values every one gets a tick; beyond, plotly's own steps (2, 5, 10...) are whole anyway.
    update = {"tickformat": "d", **({"dtick": 1, "tick0": 0} if span <= 12 else {})}
    (fig.update_xaxes if axis == "x" else fig.update_yaxes)(**update)


def _label(data: ReportData, s: StudyData, what: str) -> str:
    return f"{esc(s.name)}: {what}" if len(data.studies) > 1 else what


def _history(data: ReportData) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    numbers: list[int] = []
    for i, s in enumerate(data.studies):
        done = [r for r in s.trials if r.state == "COMPLETE" and r.value is not None]
        pruned = [r for r in s.trials if r.state == "PRUNED" and r.curve]
        numbers += [r.number for r in done + pruned]
        if pruned:  # where each stopped: the value the pruner judged (never the best-so-far line)
            fig.add_trace(
                _scatter(len(pruned))(
                    x=[r.number for r in pruned],
                    y=[_num(r.curve[-1]) for r in pruned],
                    mode="markers",
                    name=_label(data, s, "pruned (value when stopped)"),
                    legendgroup=str(i),
                    marker={
                        "color": "rgba(120,120,120,0.55)",
                        "size": 6,
                        "symbol": "x-thin",
                        "line": {"width": 1.5, "color": "rgba(120,120,120,0.7)"},
                    },
                    text=[f"trial #{r.number} pruned after epoch {len(r.curve)}" for r in pruned],
                    hovertemplate="%{y:.4f}<br>%{text}<extra></extra>",
                )
            )
        if not done:
            continue
        cls = _scatter(len(done))
        hover = len(done) <= 2000  # per-point hover text only while it stays small
        fig.add_trace(
            cls(
                x=[r.number for r in done],
                y=[_num(r.value or 0.0) for r in done],
                mode="markers",
                name=_label(data, s, "trial accuracy"),
                legendgroup=str(i),
                marker={"color": _color(i, 0.45), "size": 5},
                text=[f"trial #{r.number}<br>{_hover_params(r.params)}" for r in done] if hover else None,
                hovertemplate="%{y:.4f}<br>%{text}<extra></extra>" if hover else None,
            )
        )
        best: list[float] = []
        top: float | None = None
        for r in done:
            v = r.value or 0.0
            top = v if top is None else (max(top, v) if s.direction == "maximize" else min(top, v))
            best.append(top)
        fig.add_trace(
            cls(
                x=[r.number for r in done],
                y=[_num(b) for b in best],
                mode="lines",
                name=_label(data, s, "best so far"),
                legendgroup=str(i),
                line={"color": _color(i), "width": 2.5, "shape": "hv"},
            )
        )
    fig.update_layout(xaxis_title="trial number", yaxis_title="validation accuracy")
    _integer_axis(fig, numbers)
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
            fig.add_trace(
                _curve_trace(
                    shown,
                    name=_label(data, s, f"{state.lower()} ({len(rows)})"),
                    legendgroup=f"{i}-{state}",
                    line={"color": color, "width": 1, "dash": style},
                )
            )
        if s.best is not None and s.best.curve:
            b = s.best
            fig.add_trace(
                go.Scatter(
                    x=list(range(1, len(b.curve) + 1)),
                    y=[_num(v) for v in b.curve],
                    mode="lines+markers",
                    name=_label(data, s, f"best: trial #{b.number}"),
                    line={"color": _color(i) if not single else "#ef553b", "width": 3},
                    hovertemplate="epoch %{x}: %{y:.4f}<extra></extra>",
                )
            )
    fig.update_layout(xaxis_title="epoch", yaxis_title="validation accuracy")
    longest = max((len(r.curve) for s in data.studies for r in s.trials), default=1)
    _integer_axis(fig, [1, max(longest, 1)])
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
        dims.append(
            {
                "label": "study",
                "values": [names.index(r.study) for r in rows],
                "tickvals": list(range(len(names))),
                "ticktext": [esc(n) for n in names],
            }
        )
    for p in params:
        vals = [r.params[p] for r in rows]
        kind = _param_type(data, p, vals)
        if kind == "categorical" or not all(isinstance(v, (int, float)) for v in vals):
            cats = [short(v) for v in _sorted_choices(vals)]
            dims.append(
                {
                    "label": esc(p),
                    "values": [cats.index(short(v)) for v in vals],
                    "tickvals": list(range(len(cats))),
                    "ticktext": [esc(c) for c in cats],
                }
            )
        elif kind == "log" and all(v > 0 for v in vals):
            logs = [math.log10(v) for v in vals]
            lo, hi = math.floor(min(logs)), math.ceil(max(logs))
            ticks = list(range(lo, hi + 1))
            dims.append(
                {
                    "label": f"{esc(p)} (log)",
                    "values": [round(v, 5) for v in logs],
                    "tickvals": ticks,
                    "ticktext": [f"1e{t}" for t in ticks],
                }
            )
        else:
            dims.append({"label": esc(p), "values": [round(float(v), 6) for v in vals]})
    acc = [_num(r.value or 0.0) for r in rows]
    dims.append({"label": "val accuracy", "values": acc})
    fig = go.Figure(
        go.Parcoords(
            dimensions=dims,
            line={"color": acc, "colorscale": "Viridis", "showscale": True, "colorbar": {"title": "acc"}},
        )
    )
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
        fig.add_trace(
            go.Bar(
                x=[round(s.importances.get(p, 0.0), 5) for p in order],
                y=[esc(p) for p in order],
                orientation="h",
                name=esc(s.name),
                marker={"color": _color(i)},
                hovertemplate="%{y}: %{x:.3f}<extra></extra>",
            )
        )
    fig.update_layout(
        xaxis_title="importance (PED-ANOVA, normalised)",
        barmode="group",
        showlegend=len(data.studies) > 1,
        height=max(300, 120 + 40 * len(order) * len(with_imp)),
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
    fig = make_subplots(
        rows=nrows,
        cols=cols,
        shared_yaxes=True,
        horizontal_spacing=0.04,
        vertical_spacing=0.18 if nrows > 1 else 0.1,
        subplot_titles=[esc(p) for p in names],
    )
    for k, p in enumerate(names):
        row, col = k // cols + 1, k % cols + 1
        per_study = [
            [r for r in s.trials if r.state == "COMPLETE" and r.value is not None and p in r.params]
            for s in data.studies
        ]
        all_vals = [r.params[p] for done in per_study for r in done]
        kind = _param_type(data, p, all_vals)
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in all_vals)
        categorical = kind == "categorical" or not numeric
        for i, (s, done) in enumerate(zip(data.studies, per_study, strict=True)):
            if not done:
                continue
            vals = [r.params[p] for r in done]
            xs = [esc(short(v)) for v in vals] if categorical else [round(float(v), 7) for v in vals]
            marker: dict[str, Any] = {"size": 5}
            if len(data.studies) == 1:
                marker.update(
                    color=[r.number for r in done],
                    colorscale=[[0, "#c6dbef"], [1, "#08306b"]],
                    opacity=0.8,
                    showscale=k == 0,
                    colorbar={"title": "trial #"},
                )
            else:
                marker.update(color=_color(i, 0.5))
            fig.add_trace(
                _scatter(len(done))(
                    x=xs,
                    y=[_num(r.value or 0.0) for r in done],
                    mode="markers",
                    marker=marker,
                    name=esc(s.name),
                    legendgroup=str(i),
                    showlegend=k == 0 and len(data.studies) > 1,
                    hovertemplate=f"{esc(p)}=%{{x}}<br>acc=%{{y:.4f}}<extra></extra>",
                ),
                row=row,
                col=col,
            )
        if categorical:
            order = [esc(short(v)) for v in _sorted_choices(all_vals)]
            fig.update_xaxes(type="category", categoryorder="array", categoryarray=order, row=row, col=col)
        elif kind == "log" and all(v > 0 for v in all_vals):
            fig.update_xaxes(type="log", row=row, col=col)
    fig.update_yaxes(title_text="validation accuracy", col=1)
    # Room above the first row's subplot titles for plotly's toolbar, which otherwise sits on them.
    fig.update_layout(height=360 * nrows, showlegend=len(data.studies) > 1, margin={"t": 70})
    return fig


def _sorted_choices(values: Iterable[Any]) -> list[Any]:
    """Distinct values, numbers numerically first, then the rest as text."""
    uniq: dict[str, Any] = {}
    for v in values:
        uniq.setdefault(short(v), v)
    nums = [v for v in uniq.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    rest = sorted((v for v in uniq.values() if v not in nums), key=short)
    return sorted(nums) + rest


def _bins(values: Sequence[Any], log: bool, n: int = 10, keep: int = 12) -> tuple[list[str], list[int]]:
    """Labels and each value's bin index: distinct values if at most ``keep``, else (log-)even bins."""
    distinct = sorted(set(values), key=lambda v: (str(type(v)), v))
    if len(distinct) <= keep or not all(isinstance(v, (int, float)) for v in distinct):
        labels = [short(v) for v in distinct]
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

    done = [
        r
        for r in s.trials
        if r.state == "COMPLETE" and r.value is not None and "lr" in r.params and "frozen_layers" in r.params
    ]
    if not done:
        return None
    # A searched lr is a float per trial: one column each would be as many columns as trials. Binned
    # (log-even) unless the study used a handful of values (a grid).
    lr_kind = s.param_types.get("lr", "log")
    keep = 12 if lr_kind == "categorical" else 5
    xl, xi = _bins([r.params["lr"] for r in done], lr_kind == "log", n=8, keep=keep)
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
    fig = go.Figure(
        go.Heatmap(
            z=[[_num(v) if v is not None else None for v in row] for row in best],
            x=[esc(v) for v in xl],
            y=[esc(v) for v in yl],
            text=text,
            texttemplate="%{text}",
            colorscale="Viridis",
            colorbar={"title": "best acc"},
            hoverongaps=False,
            hovertemplate="lr %{x}<br>frozen_layers %{y}<br>best acc %{z:.4f}<br>%{text}<extra></extra>",
        )
    )
    fig.update_layout(xaxis_title="lr", yaxis_title="frozen_layers", xaxis_type="category", yaxis_type="category")
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
        text = [
            f"trial #{r.number}<br>{dur(r.compute_s)} total, {dur(r.epoch_s)}/epoch × {r.epochs}"
            f"<br>{_hover_params(r.params)}"
            for r in c.trials
        ]
        fig.add_trace(
            _scatter(len(c.trials))(
                x=[round(r.compute_s or 0.0, 3) for r in c.trials],
                y=[_num(r.value or 0.0) for r in c.trials],
                mode="markers",
                name=_label(data, s, "trials"),
                legendgroup=str(i),
                text=text,
                marker={
                    "color": [r.frozen_layers if r.frozen_layers is not None else -1 for r in c.trials],
                    "colorscale": "Viridis",
                    "cmin": 0,
                    "cmax": 5,
                    "size": 7,
                    "showscale": i == 0,
                    "colorbar": {"title": "frozen layers"},
                },
                hovertemplate="%{y:.4f}<br>%{text}<extra></extra>",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[round(r.compute_s or 0.0, 3) for r in c.pareto],
                y=[_num(r.value or 0.0) for r in c.pareto],
                mode="lines+markers",
                name=_label(data, s, "Pareto front"),
                legendgroup=str(i),
                line={"color": _color(i), "width": 2, "shape": "hv"},
                hoverinfo="skip",
            )
        )
    if not fig.data:
        return None
    unit = units.pop() if len(units) == 1 else "seconds"
    fig.update_layout(
        xaxis_title=f"compute per trial ({unit}, all epochs)", yaxis_title="validation accuracy", xaxis_type="log"
    )
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
        figs.append((f"{title}: {esc(s.name)}" if len(data.studies) > 1 else title, _heatmap(data, s)))
    out: list[tuple[str, go.Figure]] = []
    for title, fig in figs:
        if fig is None or not fig.data:
            continue
        fig.update_layout(
            template="plotly_white", margin_t=fig.layout.margin.t or 30, legend={"orientation": "h", "y": -0.18}
        )
        out.append((title, fig))
    return out
