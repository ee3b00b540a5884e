"""One self-contained HTML report for one or more studies: numbers, plots and a sortable trial table.

Split the way Optuna's visualization module splits its plots, one step per module:

* :mod:`~sweep.report.info` (``gather``) reads each study once (``get_trials(deepcopy=False)``) into frozen,
  typed rows and study summaries (``ReportData``); it needs neither plotly nor a browser.
* :mod:`~sweep.report.figures` turns ``ReportData`` into plotly figures, one builder per plot.
* :mod:`~sweep.report.page` lays out the page: plotly.js is inlined once (or referenced from the CDN),
  each figure is embedded as escaped JSON, the trial table is plain HTML sorted and filtered by a few
  lines of JS; the stylesheet and scripts are package files (``static/``). The file opens offline and
  needs no server, and is written atomically (temporary file in the same folder, then ``os.replace``).

Every user-supplied string (study name, params, attrs, failure reasons) is HTML-escaped, and JSON
placed in ``<script>`` has every ``<`` escaped. This package never imports torch: it must start fast
on a machine without a GPU.
"""

from sweep.report import figures, info, page
from sweep.report.figures import build_figures
from sweep.report.info import (
    CostSummary,
    ReportData,
    StudyData,
    TrialRow,
    cost_summary,
    cost_summary_of,
    gather,
)
from sweep.report.page import render_html, write_html, write_report

__all__ = [
    "CostSummary",
    "ReportData",
    "StudyData",
    "TrialRow",
    "build_figures",
    "cost_summary",
    "cost_summary_of",
    "figures",
    "gather",
    "info",
    "page",
    "render_html",
    "write_html",
    "write_report",
]
