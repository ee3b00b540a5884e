"""The page: ReportData and figures → one self-contained HTML file, written atomically."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
import shlex
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from sweep.atomic import write_atomic
from sweep.report.figures import build_figures
from sweep.report.info import ReportData, StudyData, gather
from sweep.show import acc, dur, esc, short

if TYPE_CHECKING:
    import plotly.graph_objects as go

PLOTLYJS_MODES = ("inline", "cdn")


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
        return (
            f'<script charset="utf-8" src="https://cdn.plot.ly/plotly-{version}.min.js" '
            f'integrity="sha256-{sri}" crossorigin="anonymous"></script>'
        )
    raise ValueError(f"plotlyjs must be one of {', '.join(PLOTLYJS_MODES)}, not {mode!r}")


def _shell_quote(name: str) -> str:
    return shlex.quote(name)


# The page's stylesheet and scripts are package files (sweep/report/static/), read once per process.
# table.js: sort on header click (numbers by data-v, text otherwise; empty cells last), filter on typing.
# plot.js: figures are queued while the page parses and drawn one after another once it is loaded, so
# text and table show at once; <body data-plots="done"> marks the end (tests wait for it).
_STATIC = resources.files("sweep.report") / "static"


@functools.cache
def _static(name: str) -> str:
    return (_STATIC / name).read_text(encoding="utf-8")


def _stat(value: str, label: str) -> str:
    return f'<div class="stat"><b>{value}</b><span>{label}</span></div>'


def _study_header(s: StudyData, multi: bool) -> str:
    counts = [(k, v) for k, v in s.state_counts.items() if v]
    badges = " ".join(f'<span class="badge s-{esc(k)}">{esc(k.lower())} {v}</span>' for k, v in counts)
    badges = badges or '<span class="badge">no trials yet</span>'
    saved_detail = ""
    if s.saved_epochs:
        per = f"{s.mean_epoch_s:.1f}s" if s.mean_epoch_s is not None else "?"
        saved_detail = f"{s.saved_epochs} epochs not run × ~{per}/epoch"
    stats = "".join(
        [
            _stat(str(len(s.trials)), "trials"),
            _stat(dur(s.compute_s) or "0s", "total compute"),
            _stat(dur(s.saved_s) or "0s", "saved by pruning" + (f" ({saved_detail})" if saved_detail else "")),
            _stat(acc(s.best.value) if s.best else "–", "best validation accuracy"),
            _stat(esc(s.spec.get("epochs", s.planned_epochs or "?")), "epochs per trial (planned)"),
            _stat(esc(s.direction), "direction"),
            _stat(f'<span class="sweep-state">{esc(s.state.value)}</span>', "sweep state"),
            _stat(str(s.n_trials) if s.n_trials else "?", "trial budget"),
        ]
    )
    spec = esc(json.dumps(s.spec, indent=2, default=str)) if s.spec else "(no spec stored in the study)"
    title = f"<h2>Study <span class=name>{esc(s.name)}</span></h2>" if multi else ""
    return (
        f'<section class="card study">{title}<div>{badges}</div>'
        f'<div class="grid" style="margin-top:10px">{stats}</div>'
        f"<details><summary>Resolved spec</summary><pre>{spec}</pre></details></section>"
    )


def _best_card(s: StudyData, multi: bool) -> str:
    b = s.best
    head = f"Best trial of {esc(s.name)}" if multi else "Best trial"
    if b is None:
        return f'<section class="card"><h2>{head}</h2><p class="note">No completed trial yet.</p></section>'
    params = "".join(f"<tr><td>{esc(k)}</td><td>{esc(short(v))}</td></tr>" for k, v in b.params.items())
    kv = [
        ("trial", f"#{b.number}"),
        ("validation accuracy", acc(b.value)),
        ("test accuracy", acc(b.test_accuracy) or "–"),
        ("epochs", str(b.epochs)),
        ("duration", dur(b.duration_s) or "–"),
        ("host / device", " / ".join(x for x in (b.host, b.device) if x) or "–"),
    ]
    facts = "".join(f"<tr><td>{k}</td><td>{esc(v)}</td></tr>" for k, v in kv)
    cmd = f"sweep rerun {_shell_quote(s.name)} {b.number}"
    return (
        f'<section class="card best"><h2>{head}</h2><div class="grid">'
        f'<div><h3>Parameters</h3><table class="kv">{params}</table></div>'
        f'<div><h3>Result</h3><table class="kv">{facts}</table></div>'
        f"{_cheapest(s)}</div>{_kept(s)}"
        f"<h3>Rerun it</h3><code class=rerun>{esc(cmd)}</code></section>"
    )


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
        ("validation accuracy", f"{acc(r.value)} ({(r.value or 0.0) - (c.best.value or 0.0):+.4f})"),
        ("frozen layers", "–" if r.frozen_layers is None else str(r.frozen_layers)),
        ("compute", f"{dur(r.compute_s)} vs {dur(c.best.compute_s)} ({c.unit})"),
        ("speed-up", f"{c.speedup:.2f}×" if c.speedup else "–"),
    ]
    facts = "".join(f"<tr><td>{k}</td><td>{esc(v)}</td></tr>" for k, v in kv)
    return f'<div class="cheapest"><h3>Cheapest within one point</h3><table class="kv">{facts}</table></div>'


def _kept(s: StudyData) -> str:
    """Which trials have a kept model, and where (``sweep export`` reads them)."""
    if not s.kept:
        return '<h3>Kept models</h3><p class="note kept">none (checkpoint.keep_best = 0, or no trial completed)</p>'
    rows = "".join(
        f"<tr><td>#{k.trial}</td><td>{acc(k.value)}</td><td><code>{esc(k.path or k.artifact_id)}</code>"
        f"</td><td><code>{esc(f'sweep export {_shell_quote(s.name)} --trial {k.trial} --output DIR')}"
        "</code></td></tr>"
        for k in s.kept
    )
    return f'<h3>Kept models</h3><table class="kv kept">{rows}</table>'


def _cell(text: str, sort: Any = None, cls: str = "", title: str = "") -> str:
    """A table cell; ``sort`` (a number) goes in data-v when it differs from the text shown."""
    attrs = ""
    if sort is not None:
        key = f"{sort:.6g}" if isinstance(sort, float) else str(sort)
        if key != text:
            attrs += f' data-v="{esc(key)}"'
    if cls:
        attrs += f' class="{cls}"'
    if title:
        attrs += f' title="{esc(title)}"'
    return f"<td{attrs}>{esc(text)}</td>"


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
    numeric = {
        p
        for p in params
        if all(
            isinstance(r.params.get(p), (int, float)) and not isinstance(r.params.get(p), bool)
            for s in data.studies
            for r in s.trials
            if p in r.params
        )
    }
    cols: list[tuple[str, str]] = ([("study", "str")] if multi else []) + [("#", "num"), ("state", "str")]
    cols += [(p, "num" if p in numeric else "str") for p in params]
    cols += [
        ("val acc", "num"),
        ("test acc", "num"),
        ("epochs", "num"),
        ("duration", "num"),
        ("host", "str"),
        ("device", "str"),
        ("failure", "str"),
    ]
    head = "".join(f'<th data-type="{t}" scope="col">{esc(c)}</th>' for c, t in cols)
    body: list[str] = []
    total = 0
    for s in data.studies:
        for r in s.trials:
            total += 1
            cells = [_cell(r.study)] if multi else []
            cells.append(_cell(str(r.number), r.number))
            cells.append(f'<td class="s-{esc(r.state)}">{esc(r.state.lower())}</td>')
            for p in params:
                v = r.params.get(p)
                cells.append(_cell(short(v), v if p in numeric and v is not None else None))
            cells.append(_cell(acc(r.value), r.value))
            cells.append(_cell(acc(r.test_accuracy), r.test_accuracy))
            cells.append(_cell(str(r.epochs), r.epochs))
            cells.append(_cell(dur(r.duration_s), None if r.duration_s is None else round(r.duration_s, 2)))
            cells.append(_cell(r.host))
            cells.append(_cell(r.device))
            fail = r.fail_reason + (f" (retry of #{r.retry_of})" if r.retry_of is not None else "")
            fail += f" warm start: copy of {r.warm_from}" if r.warm_from else ""
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
        meta.insert(0, f"storage <code>{esc(data.storage_label)}</code>")
    if multi:
        total = sum(len(s.trials) for s in data.studies)
        meta.append(f"{len(data.studies)} studies, {total} trials")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s else "",
        f"<title>sweep report: {esc(names)}</title>",
        f"<style>\n{_static('report.css')}</style>",
        "<script>window.PlotlyConfig={MathJaxConfig:'local'};</script>",
        plotly_tag,
        f"<script>\n{_static('plot.js')}</script>",
        "</head><body><main>",
        f'<h1>sweep report: <span class="name">{esc(names)}</span></h1>',
        f'<div class="meta">{" · ".join(meta)}</div>',
    ]
    for s in data.studies:
        parts.append(_study_header(s, multi))
        parts.append(_best_card(s, multi))
    notes = [
        f"{esc(s.name)}: {esc(s.importance_note)}" for s in data.studies if not s.importances and s.importance_note
    ]
    for i, (title, fig) in enumerate(figs):
        fid = f"fig-{i}"
        height = int(fig.layout.height or 450)
        parts.append(
            f'<section class="card figure"><h2>{title}</h2>'
            f'<div id="{fid}" class="plot" style="height:{height}px"></div>'
            f"<script>sweepPlot({_script_json(fid)},{_script_json(fig.to_plotly_json())});</script>"
            "</section>"
        )
    if notes:
        parts.append('<p class="note">Parameter importances skipped: ' + "; ".join(notes) + "</p>")
    parts.append(_table(data))
    parts.append(f"<script>\n{_static('table.js')}</script></main></body></html>")
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
    return write_atomic(output, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
