"""Report benchmark: a synthetic many-trial study, timed through gather and render+write.

    sweep bench report [--n-trials 10000] [--json out.json] [--output report.html]

The study lives in memory (``sweep_bench.synthetic.synthetic_study``: realistic params, learning
curves, user attrs and states, ~30% pruned, a few failed, a few running).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from sweep import report
from sweep_bench import write_json
from sweep_bench.synthetic import synthetic_study


def run_report_bench(
    n_trials: int = 10_000,
    *,
    json_path: Path | None = None,
    output: Path | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """Time gather and render+write of an ``n_trials`` report; print, return (and save) the figures."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t0 = time.perf_counter()
    study = synthetic_study(n_trials)
    t1 = time.perf_counter()
    data = report.gather([study], storage_label="in-memory (synthetic benchmark)")
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(output) if output is not None else Path(tmp) / "report.html"
        figures = report.build_figures(data)
        t3 = time.perf_counter()
        report.write_html(report.render_html(data, figures=figures), target)
        t4 = time.perf_counter()
        size = target.stat().st_size
    result: dict[str, Any] = {
        "n_trials": n_trials,
        "build_study_s": round(t1 - t0, 3),
        "gather_s": round(t2 - t1, 3),
        "figures_s": round(t3 - t2, 3),
        "render_s": round(t4 - t2, 3),
        "total_s": round(t4 - t1, 3),
        "size_mb": round(size / 1e6, 2),
        "n_figures": len(figures),
    }
    if output is not None:
        result["output"] = str(output)
    table = Table(title=f"sweep report benchmark: {n_trials:,} trials")
    table.add_column("step")
    table.add_column("value", justify="right")
    table.add_row("build synthetic study", f"{result['build_study_s']:.2f} s")
    table.add_row("gather (read + importances)", f"{result['gather_s']:.2f} s")
    table.add_row("render + write (incl. figures)", f"{result['render_s']:.2f} s")
    table.add_row("total (gather + render)", f"{result['total_s']:.2f} s  (budget 15 s)")
    table.add_row("file size", f"{result['size_mb']:.2f} MB  (budget 15 MB)")
    table.add_row("figures", str(len(figures)))
    console.print(table)
    write_json(result, json_path)
    return result
