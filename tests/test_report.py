"""The HTML report: data gathering on small in-memory studies, the page, and the page in real Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

import sweep.atomic
from sweep import report
from sweep.report import ReportData
from sweep_bench.report import run_report_bench
from sweep_bench.synthetic import synthetic_study

ROOT = Path(__file__).resolve().parents[1]
XSS = "<script>alert(1)</script>"
DISTS: dict[str, Any] = {
    "lr": FloatDistribution(1e-5, 1e-1, log=True),
    "batch_size": CategoricalDistribution([32, 64, 128]),
    "frozen_layers": IntDistribution(0, 5),
    "aug_strength": FloatDistribution(0.0, 1.0),
}
SPEC = {"name": "s", "epochs": 4, "params": {"lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}}}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _trial(
    state: TrialState,
    curve: list[float],
    *,
    params: dict[str, Any] | None = None,
    value: float | None = None,
    **attrs: Any,
) -> optuna.trial.FrozenTrial:
    params = params if params is not None else {"lr": 1e-3, "batch_size": 64, "frozen_layers": 1, "aug_strength": 0.5}
    if value is None and state == TrialState.COMPLETE:
        value = curve[-1]
    return optuna.trial.create_trial(
        state=state,
        value=value,
        params=params,
        distributions={k: DISTS[k] for k in params},
        user_attrs=attrs,
        intermediate_values={e: v for e, v in enumerate(curve, start=1)},
    )


def _study(name: str, trials: list[optuna.trial.FrozenTrial], spec: dict[str, Any] | None = SPEC) -> optuna.Study:
    study = optuna.create_study(study_name=name, direction="maximize")
    if spec is not None:
        study.set_user_attr("spec", {**spec, "name": name})
    study.add_trials(trials)
    return study


def _small(name: str = "small") -> optuna.Study:
    """2 completed, 2 pruned, 1 failed, 1 running; epoch times recorded."""
    return _study(
        name,
        [
            _trial(
                TrialState.COMPLETE,
                [0.5, 0.6, 0.7, 0.8],
                test_accuracy=0.79,
                epochs_run=4,
                epoch_seconds=[10.0] * 4,
                duration_s=42.0,
                host="h1",
                device="cuda:0",
                params={"lr": 1e-3, "batch_size": 64, "frozen_layers": 1, "aug_strength": 0.5},
            ),
            _trial(
                TrialState.COMPLETE,
                [0.4, 0.6, 0.85, 0.9],
                test_accuracy=0.88,
                epochs_run=4,
                epoch_seconds=[10.0] * 4,
                duration_s=41.0,
                host="h2",
                device="cuda:1",
                params={"lr": 3e-4, "batch_size": 128, "frozen_layers": 3, "aug_strength": 0.2},
            ),
            _trial(
                TrialState.PRUNED,
                [0.95],
                value=0.95,
                epochs_run=1,
                epoch_seconds=[20.0],
                duration_s=21.0,
                params={"lr": 1e-2, "batch_size": 32, "frozen_layers": 0, "aug_strength": 0.9},
            ),
            _trial(
                TrialState.PRUNED,
                [0.3, 0.35],
                value=0.35,
                epochs_run=2,
                epoch_seconds=[10.0, 10.0],
                duration_s=20.0,
                params={"lr": 1e-5, "batch_size": 32, "frozen_layers": 5, "aug_strength": 0.1},
            ),
            _trial(
                TrialState.FAIL,
                [],
                fail_reason="oom",
                traceback="Traceback...\nRuntimeError: CUDA out of memory",
                duration_s=5.0,
                epochs_run=0,
            ),
            _trial(TrialState.RUNNING, [0.2], epochs_run=1),
        ],
    )


# --------------------------------------------------------------------------- data


def test_import_does_not_load_torch_or_plotly() -> None:
    code = "import sys, sweep.report; print('torch' in sys.modules, 'plotly' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def test_gather_counts_best_curves_and_compute() -> None:
    data = report.gather([_small()], storage_label="sqlite:///x.db")
    (s,) = data.studies
    assert s.name == "small" and data.storage_label == "sqlite:///x.db"
    assert s.state_counts == {"COMPLETE": 2, "PRUNED": 2, "FAIL": 1, "RUNNING": 1, "WAITING": 0}
    # The pruned trial's 0.95 is not a result: the best is the best *completed* trial.
    assert s.best is not None and s.best.number == 1 and s.best.value == pytest.approx(0.9)
    assert s.best.test_accuracy == pytest.approx(0.88) and s.best.device == "cuda:1" and s.best.epochs == 4
    assert [r.curve for r in s.trials][:2] == [(0.5, 0.6, 0.7, 0.8), (0.4, 0.6, 0.85, 0.9)]
    assert s.trials[4].fail_reason == "oom" and s.trials[4].error == "RuntimeError: CUDA out of memory"
    assert s.compute_s == pytest.approx(42 + 41 + 21 + 20 + 5)  # finished trials only
    # 4 planned epochs: trial 2 missed 3 (at its own 20 s/epoch), trial 3 missed 2 (at 10 s/epoch).
    assert s.planned_epochs == 4 and s.saved_epochs == 5
    assert s.saved_s == pytest.approx(3 * 20 + 2 * 10)
    assert s.param_types == {"lr": "log", "batch_size": "categorical", "frozen_layers": "int", "aug_strength": "float"}


def test_saved_compute_falls_back_to_mean_epoch_time_and_completed_epochs() -> None:
    study = _study(
        "nospec",
        [
            _trial(TrialState.COMPLETE, [0.5, 0.6, 0.7], duration_s=30.0),
            _trial(TrialState.PRUNED, [0.2], value=0.2, duration_s=10.0),
        ],
        spec=None,
    )
    (s,) = report.gather([study]).studies
    assert s.spec == {} and s.planned_epochs == 3 and s.mean_epoch_s == pytest.approx(40 / 4)
    assert s.saved_epochs == 2 and s.saved_s == pytest.approx(20.0)
    assert s.importances == {} and "2 completed" in s.importance_note


def test_a_diverged_trial_is_not_saved_by_pruning() -> None:
    # Stopped by its NaN loss, not by the pruner: the replay bench counts it apart, and so does the report.
    study = _study(
        "nan",
        [
            _trial(TrialState.COMPLETE, [0.5, 0.6, 0.7], epoch_seconds=[10.0] * 3),
            _trial(TrialState.PRUNED, [0.2], value=0.2, epoch_seconds=[10.0], fail_reason="diverged"),
            _trial(TrialState.PRUNED, [0.3], value=0.3, epoch_seconds=[10.0]),
        ],
        spec=None,
    )
    (s,) = report.gather([study]).studies
    assert s.saved_epochs == 2 and s.saved_s == pytest.approx(20.0)


def test_importances_need_two_completed_trials_that_vary() -> None:
    (one,) = report.gather([_study("one", [_trial(TrialState.COMPLETE, [0.5])])]).studies
    assert one.importances == {} and one.importance_note
    same = {"lr": 1e-3, "batch_size": 64, "frozen_layers": 1, "aug_strength": 0.5}
    flat = _study("flat", [_trial(TrialState.COMPLETE, [v], params=same) for v in (0.5, 0.6, 0.7)])
    (s,) = report.gather([flat]).studies
    assert s.importances == {} and "varies" in s.importance_note
    (big,) = report.gather([synthetic_study(80)]).studies
    assert set(big.importances) == {"lr", "batch_size", "frozen_layers", "aug_strength"}
    assert sum(big.importances.values()) == pytest.approx(1.0)


def test_gather_reads_each_study_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = optuna.create_study(study_name="db", storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    study.add_trials(synthetic_study(12).get_trials(deepcopy=False))
    calls: list[bool] = []
    real = study.get_trials

    def counting(deepcopy: bool = True, states: Any = None) -> list[optuna.trial.FrozenTrial]:
        calls.append(deepcopy)
        return real(deepcopy=deepcopy, states=states)

    monkeypatch.setattr(study, "get_trials", counting)
    (s,) = report.gather([study]).studies
    assert calls == [False]  # importances reuse the trials already read
    assert len(s.trials) == 12 and s.importances and s.spec == {}


def test_odd_attrs_nan_curves_and_text_params() -> None:
    opt = CategoricalDistribution(["adam", "sgd"])
    trials = [
        optuna.trial.create_trial(
            state=TrialState.COMPLETE,
            value=v,
            params={"optimizer": o, "lr": lr},
            distributions={"optimizer": opt, "lr": DISTS["lr"]},
            intermediate_values={1: 0.3, 2: v},
            user_attrs={"epochs_run": "two", "epoch_seconds": "fast", "test_accuracy": "n/a", "duration_s": None},
        )
        for v, o, lr in ((0.5, "adam", 1e-3), (0.7, "sgd", 1e-2), (0.6, "adam", 1e-4))
    ]
    trials.append(
        optuna.trial.create_trial(
            state=TrialState.FAIL,
            params={"optimizer": "sgd", "lr": 1e-1},
            distributions={"optimizer": opt, "lr": DISTS["lr"]},
            intermediate_values={1: 0.2, 2: float("nan")},
            user_attrs={"fail_reason": "diverged"},
        )
    )
    data = report.gather([_study("odd", trials, spec={"epochs": "many", "params": []})])
    (s,) = data.studies
    assert s.best is not None and s.best.params["optimizer"] == "sgd" and s.best.test_accuracy is None
    assert s.trials[0].epochs == 2 and s.planned_epochs == 2 and s.trials[3].fail_reason == "diverged"
    page = report.render_html(data)
    for block in re.findall(r"<script>(sweepPlot\(.*?)</script>", page, flags=re.S):
        assert "NaN" not in block and "Infinity" not in block
    assert '<th data-type="str" scope="col">optimizer</th>' in page


def test_empty_study_renders() -> None:
    data = report.gather([_study("empty", [])])
    (s,) = data.studies
    assert s.best is None and s.compute_s == 0 and s.saved_s == 0 and sum(s.state_counts.values()) == 0
    page = report.render_html(data)
    assert "No completed trial yet" in page and 'showing <span id="shown">0</span> of 0' in page


def test_figures_and_heatmap_only_with_lr_and_frozen_layers() -> None:
    titles = [t for t, _ in report.build_figures(report.gather([_small()]))]
    assert titles == [
        "Optimization history",
        "Learning curves",
        "Parallel coordinates",
        "Parameter importances",
        "Slice plots",
        "Accuracy against cost",
        "Best accuracy by lr × frozen_layers",
    ]
    lr_only = _study("lr", [_trial(TrialState.COMPLETE, [0.5], params={"lr": lr}) for lr in (1e-4, 1e-3)])
    titles = [t for t, _ in report.build_figures(report.gather([lr_only]))]
    assert not any(t.startswith("Best accuracy by lr") for t in titles)


def test_learning_curves_pruned_and_completed_styles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report.figures, "MAX_CURVES", 20)
    data = report.gather([synthetic_study(200)], importances=False)
    figs = dict(report.build_figures(data))
    curves = next(f for t, f in figs.items() if t.startswith("Learning curves"))
    by_name = {tr.name.split(" (")[0]: tr for tr in curves.data}
    assert by_name["pruned"].line.dash == "dot" and by_name["complete"].line.dash == "solid"
    # Many curves share one trace, split by None; each group capped at MAX_CURVES.
    for name in ("pruned", "complete"):
        assert list(by_name[name].x).count(None) == 20
    best = data.studies[0].best
    assert best is not None and any(tr.name == f"best: trial #{best.number}" for tr in curves.data)
    assert "20 of" in next(t for t in figs if t.startswith("Learning curves"))


def _costly() -> optuna.Study:
    """Five completed trials on GPUs: value, seconds per epoch (4 epochs each), frozen layers."""
    specs = [(0.90, 10.0, 0), (0.895, 4.0, 3), (0.85, 2.0, 5), (0.80, 5.0, 2), (0.70, 1.0, 5)]
    return _study(
        "cost",
        [
            _trial(
                TrialState.COMPLETE,
                [v],
                epochs_run=4,
                epoch_seconds=[s] * 4,
                device="cuda:0",
                params={"lr": 1e-3, "batch_size": 64, "frozen_layers": k, "aug_strength": 0.5},
            )
            for v, s, k in specs
        ],
    )


def test_cost_pareto_front_and_cheapest_trial_within_one_point() -> None:
    (s,) = report.gather([_costly()]).studies
    c = s.cost
    assert c is not None and c.unit == "GPU-seconds"
    assert [r.compute_s for r in c.trials] == [4.0, 8.0, 16.0, 20.0, 40.0]  # cheapest first
    assert [r.number for r in c.pareto] == [4, 2, 1, 0]  # trial 3 (0.80 for 20 s) is beaten by trial 1
    assert c.best is not None and c.best.number == 0
    # 0.895 is within one point of 0.90; 0.85 is not. 40 s against 16 s: 2.5x faster, 3 layers frozen.
    assert c.cheapest_near_best is not None and c.cheapest_near_best.number == 1
    assert c.cheapest_near_best.frozen_layers == 3 and c.speedup == pytest.approx(2.5)
    as_json = c.to_json()
    assert as_json["pareto"] == [4, 2, 1, 0] and as_json["cheapest_within_one_point"]["trial"] == 1
    assert as_json["best"]["epoch_s"] == pytest.approx(10.0) and as_json["speedup"] == pytest.approx(2.5)


def test_page_shows_cost_kept_models_and_sweep_state() -> None:
    study = _costly()
    study.set_user_attr("kept_models", [{"trial": 0, "value": 0.9, "artifact_id": "abc", "path": "/art/abc"}])
    study.set_user_attr("control", "paused")
    (s,) = (data := report.gather([study])).studies
    assert s.state.value == "paused" and [k.trial for k in s.kept] == [0]
    page = report.render_html(data)
    assert "Accuracy against cost" in page and "Cheapest within one point" in page and "2.50×" in page
    assert "/art/abc" in page and "sweep export cost --trial 0 --output DIR" in page
    assert '<span class="sweep-state">paused</span>' in page
    fig = dict(report.build_figures(data))["Accuracy against cost"]
    front = next(t for t in fig.data if t.name == "Pareto front")
    assert list(front.x) == [4.0, 8.0, 16.0, 40.0] and "GPU-seconds" in fig.layout.xaxis.title.text


def test_multi_study_overlay() -> None:
    data = report.gather([_small("alpha"), synthetic_study(30, name="beta")])
    assert [s.name for s in data.studies] == ["alpha", "beta"]
    figs = report.build_figures(data)
    history = figs[0][1]
    assert {tr.name for tr in history.data} >= {"alpha: best so far", "beta: best so far"}
    assert [t for t, _ in figs].count("Best accuracy by lr × frozen_layers: alpha") == 1
    page = report.render_html(data)
    assert '<th data-type="str" scope="col">study</th>' in page
    assert page.count("<td>alpha</td>") == 6 and page.count("<td>beta</td>") == 30
    assert "sweep rerun alpha 1" in page and "Best trial of beta" in page


def test_user_strings_are_escaped() -> None:
    evil_reason = "</script><script>alert(3)</script>"
    study = _study(
        XSS,
        [
            _trial(TrialState.COMPLETE, [0.5], params={"lr": 1e-3}, host="<b>h</b>"),
            _trial(TrialState.COMPLETE, [0.6], params={"lr": 1e-2}),
            _trial(TrialState.FAIL, [], params={"lr": 1e-4}, fail_reason=evil_reason, traceback='x"><img src=y>'),
        ],
    )
    study.set_user_attr("spec", {"name": XSS, "note": "</pre><img src=x onerror=alert(2)>"})
    study.set_user_attr("kept_models", [{"trial": 1, "value": 0.6, "artifact_id": "a", "path": "<img src=z>"}])
    page = report.render_html(report.gather([study], storage_label="<i>db</i>"))
    for bad in (XSS, "<img", "<b>h", "<i>db", "alert(3)</script>"):
        assert bad not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;i&gt;db&lt;/i&gt;" in page
    assert "sweep rerun &#x27;&lt;script&gt;alert(1)&lt;/script&gt;&#x27; 1" in page
    # JSON inside <script>: no '<' at all, so nothing can close the tag early.
    for block in re.findall(r"<script>(sweepPlot\(.*?)</script>", page, flags=re.S):
        assert "<" not in block
    # Our own scripts only: PlotlyConfig, plotly.js, the plot queue, one per figure, the table.
    n_figs = len(report.build_figures(report.gather([study])))
    assert page.count("<script") == 4 + n_figs


def test_write_report_one_file_offline(tmp_path: Path) -> None:
    out = report.write_report([_small()], tmp_path / "a" / "b" / "r.html", storage_label="sqlite:///s.db")
    assert out == tmp_path / "a" / "b" / "r.html" and os.listdir(out.parent) == ["r.html"]
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"<script[^>]*\bsrc=", page) and "<link" not in page
    assert page.count("Plotly.newPlot") == 1 and len(page) > 3_000_000  # plotly.js inlined once
    cdn = report.write_report([_small()], tmp_path / "c.html", plotlyjs="cdn").read_text()
    assert re.search(r'<script charset="utf-8" src="https://cdn\.plot\.ly/plotly-[\d.]+\.min\.js"', cdn)
    assert len(cdn) < 300_000
    with pytest.raises(ValueError, match="plotlyjs"):
        report.write_report([_small()], tmp_path / "d.html", plotlyjs="directory")


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "r.html"
    out.write_text("old report")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(sweep.atomic.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        report.write_report([_small()], out)
    assert out.read_text() == "old report" and os.listdir(tmp_path) == ["r.html"]


def test_report_bench_small(tmp_path: Path) -> None:
    from rich.console import Console

    console = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - closed with the process
    result = run_report_bench(300, json_path=tmp_path / "b.json", output=tmp_path / "r.html", console=console)
    assert json.loads((tmp_path / "b.json").read_text()) == result
    assert result["n_trials"] == 300 and result["size_mb"] > 4 and result["n_figures"] == 7
    assert {"gather_s", "render_s", "total_s"} <= set(result)
    (s,) = report.gather([synthetic_study(300)], importances=False).studies
    assert 0.2 < s.state_counts["PRUNED"] / 300 < 0.4


# --------------------------------------------------------------------------- in Chromium


class Page:
    """A report opened from file:// with every non-file request blocked and recorded."""

    def __init__(self, ctx: Any, path: Path) -> None:
        self.page = ctx.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", self._dialog)
        self.page.route("**/*", self._route)
        self.page.goto(path.resolve().as_uri(), wait_until="load", timeout=60_000)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _route(self, route: Any) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            self.requests.append(route.request.url)
            route.abort()

    def wait_for_plots(self) -> None:
        self.page.wait_for_function("document.body.dataset.plots === 'done'", timeout=60_000)

    def column(self, name: str) -> list[str]:
        return self.page.evaluate(
            """name => { const t = document.getElementById('trials');
            const i = Array.from(t.tHead.rows[0].cells).findIndex(c => c.textContent.trim() === name);
            return Array.from(t.tBodies[0].rows).filter(r => !r.hidden).map(r => r.cells[i].textContent); }""",
            name,
        )


@pytest.fixture(scope="module")
def xss_report(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Page, ReportData]]:
    """One page, shared by the tests below: a study named like a script, with a script-like failure."""
    study = synthetic_study(40, name=XSS, seed=3)
    study.add_trial(_trial(TrialState.FAIL, [], params={"lr": 1e-4}, fail_reason="<img src=x onerror=alert(4)>"))
    path = tmp_path_factory.mktemp("xss") / "report.html"
    report.write_report([study], path, storage_label="sqlite:///storage/sweep.db")
    view = Page(browser, path)
    view.wait_for_plots()
    yield view, report.gather([study])
    view.page.close()


@pytest.mark.browser
def test_page_in_chromium_offline(xss_report: tuple[Page, ReportData]) -> None:
    view, data = xss_report
    page = view.page
    n_figs = len(report.build_figures(data))
    counts = page.evaluate("Array.from(document.querySelectorAll('div.js-plotly-plot')).map(d => d.data.length)")
    assert len(counts) == n_figs == 7 and all(n > 0 for n in counts)
    assert page.locator("svg.main-svg").count() > 0 and page.locator(".parcoords").count() == 1
    assert view.errors == [] and view.dialogs == [] and view.requests == []
    assert page.inner_text("h1") == f"sweep report: {XSS}"
    assert page.title() == f"sweep report: {XSS}"
    assert XSS in page.inner_text(".rerun")
    assert page.locator("#trials tbody tr").count() == 41
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    page.screenshot(path=str(artifacts / "report.png"), full_page=True)


@pytest.mark.browser
def test_table_sorts_and_filters(xss_report: tuple[Page, ReportData]) -> None:
    view, data = xss_report
    (s,) = data.studies
    page = view.page
    page.click("#trials th:text-is('val acc')")
    vals = view.column("val acc")
    filled = [float(v) for v in vals if v]
    assert filled == sorted(filled) and vals[len(filled) :] == [""] * (len(vals) - len(filled))
    assert page.get_attribute("#trials th:text-is('val acc')", "aria-sort") == "ascending"
    page.click("#trials th:text-is('val acc')")
    filled = [float(v) for v in view.column("val acc") if v]
    assert filled == sorted(filled, reverse=True)
    page.click("#trials th:text-is('#')")
    assert [int(n) for n in view.column("#")] == list(range(41))

    page.fill("#filter", "pruned")
    states = view.column("state")
    assert states and set(states) == {"pruned"} and len(states) == s.state_counts["PRUNED"]
    assert page.inner_text("#shown") == str(len(states))
    page.fill("#filter", "onerror=alert(4)")
    assert view.column("state") == ["fail"]
    page.fill("#filter", "no-such-trial")
    assert view.column("#") == [] and page.inner_text("#shown") == "0"
    page.fill("#filter", "")
    assert len(view.column("#")) == 41
    assert view.errors == [] and view.dialogs == []


@pytest.mark.browser
def test_multi_study_webgl_page(browser: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report.figures, "GL_THRESHOLD", 0)  # every scatter as WebGL, as in a big study
    studies = [synthetic_study(30, name="alpha"), synthetic_study(20, name="beta", seed=1)]
    n_figs = len(report.build_figures(report.gather(studies)))
    view = Page(browser, report.write_report(studies, tmp_path / "multi.html"))
    view.wait_for_plots()
    types = view.page.evaluate(
        "Array.from(document.querySelectorAll('div.js-plotly-plot')).map(d => d.data.map(t => t.type))"
    )
    assert len(types) == n_figs and all(types) and "scattergl" in types[0]
    assert set(view.column("study")) == {"alpha", "beta"}
    assert view.errors == [] and view.requests == []
    view.page.close()


@pytest.mark.browser
def test_cdn_page_offline_says_plotly_is_missing(browser: Any, tmp_path: Path) -> None:
    view = Page(browser, report.write_report([_small()], tmp_path / "cdn.html", plotlyjs="cdn"))
    view.wait_for_plots()
    assert view.requests and view.requests[0].startswith("https://cdn.plot.ly/")
    assert "plotly.js is not loaded" in view.page.inner_text("#fig-0")
    assert len(view.column("#")) == 6  # the table still works
    view.page.close()


def test_cli_plotlyjs_choices_are_the_pages() -> None:
    from sweep.cli import PlotlyJS

    assert tuple(m.value for m in PlotlyJS) == report.page.PLOTLYJS_MODES


# --------------------------------------------------------------------------- figure polish


def _lr_study(n: int) -> optuna.Study:
    lrs = [10 ** (-5 + 4 * k / (n - 1)) for k in range(n)]
    return _study(
        "lrs",
        [
            _trial(TrialState.COMPLETE, [0.5 + k / 100], params={"lr": lr, "frozen_layers": k % 3})
            for k, lr in enumerate(lrs)
        ],
    )


def test_history_shows_pruned_trials_and_whole_number_axes() -> None:
    figs = dict(report.build_figures(report.gather([_small()])))
    history = figs["Optimization history"]
    pruned = [t for t in history.data if "pruned" in t.name]
    assert len(pruned) == 1 and list(pruned[0].x) == [2, 3] and list(pruned[0].y) == [0.95, 0.35]
    assert not any("pruned" in t.name for t in history.data if t.mode == "lines")  # best-so-far: completed only
    assert history.layout.xaxis.dtick == 1 and history.layout.xaxis.tickformat == "d"
    curves = next(f for title, f in figs.items() if title.startswith("Learning curves"))
    assert curves.layout.xaxis.dtick == 1 and curves.layout.xaxis.tickformat == "d"
    assert figs["Slice plots"].layout.margin.t == 70


def test_heatmap_bins_a_searched_lr_and_keeps_a_grid() -> None:
    heat = dict(report.build_figures(report.gather([_lr_study(20)])))["Best accuracy by lr × frozen_layers"]
    assert len(heat.data[0].x) == 8  # 20 distinct floats → 8 log-even bins, not 20 columns
    assert heat.data[0].x[0].startswith("1e-05") and heat.data[0].x[-1].endswith("0.1")
    few = dict(report.build_figures(report.gather([_lr_study(4)])))["Best accuracy by lr × frozen_layers"]
    assert len(few.data[0].x) == 4


@pytest.mark.browser
def test_axis_ticks_are_whole_numbers_and_titles_clear_the_toolbar(browser: Any, tmp_path: Path) -> None:
    path = report.write_report([_small()], tmp_path / "r.html")
    view = Page(browser, path)
    view.wait_for_plots()
    page = view.page
    ticks = page.evaluate(
        "Array.from(document.querySelectorAll('div.js-plotly-plot')).slice(0, 2)"
        ".map(d => Array.from(d.querySelectorAll('.xtick text')).map(t => t.textContent))"
    )
    assert len(ticks) == 2 and all(ticks) and all(re.fullmatch(r"\d+", t) for row in ticks for t in row), ticks
    # Hover the slice plot: its toolbar shows; no subplot title may sit under it.
    slices = page.locator("div.js-plotly-plot").nth(4)
    slices.hover()
    overlap = slices.evaluate(
        """d => { const bar = d.querySelector('.modebar'); if (!bar) return 'no toolbar';
        const b = bar.getBoundingClientRect();
        return Array.from(d.querySelectorAll('.annotation-text')).map(a => a.getBoundingClientRect())
          .filter(r => r.left < b.right && b.left < r.right && r.top < b.bottom && b.top < r.bottom).length; }"""
    )
    assert overlap == 0
    assert view.errors == []
    page.close()
