"""Settings of the evidence pruner (``pruner.type = "auto"``) replayed on a learning-curve table.

    python benchmarks/replay_auto.py --table table-wide --storage sqlite:///benchmarks/tables/table-wide.db
    python benchmarks/replay_auto.py --pilot benchmarks/tables/table-pilot-wsd.db     (the pilot's subset)

From the repository root. The same replay as ``sweep bench sweep`` (``sweep_bench.sweep.run_replays``)
with random, TPE, the stock pruner that did best on the narrow grid's subset (successive halving from
epoch 1, keep a third) and the auto pruner over ``min_complete`` x ``reduction_factor`` x
``first_rung`` (unset: nothing is pruned until min_complete trials finished; 1 or 2: a prior rung
until then). A table still being built is replayed on the configs it has (``--partial``). The figures
it printed are in BENCHMARKS.md with their date; no JSON (``sweep bench sweep`` writes the one that
counts).
"""

from __future__ import annotations

import argparse
import itertools
import sqlite3
from typing import Any

from rich.console import Console

import sweep_bench.sweep as bench
from sweep_bench.pilot import TABLE_STUDY, TABLE_URL, pilot_table


def methods() -> list[bench.Method]:
    """The baselines, then every auto setting."""
    out = [
        bench.Method("random", "random", "none"),
        bench.Method("tpe", "tpe", "none"),
        bench.Method("tpe+sha", "tpe", "successive-halving", {"min_resource": 1, "reduction_factor": 3}),
    ]
    for first, rf, mc in itertools.product((None, 1, 2), (2, 3), (4, 8)):
        args: dict[str, Any] = {"min_complete": mc, "reduction_factor": rf}
        if first is not None:
            args["first_rung"] = first
        out.append(bench.Method(f"auto(first={first},rf={rf},mc={mc})", "tpe", "auto", args))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=TABLE_STUDY, help="the table study (default: the fine-tune table)")
    parser.add_argument("--storage", default=TABLE_URL, help="its storage URL")
    parser.add_argument("--pilot", default=None, help="a pilot database: replay its subset of the fine-tune table")
    parser.add_argument("--partial", action="store_true", help="replay a table still being built")
    parser.add_argument("--seeds", type=int, default=30)
    args = parser.parse_args()
    table = bench.load_table(args.table, args.storage, complete=not args.partial)
    if args.pilot:
        table = pilot_table(sqlite3.connect(f"file:{args.pilot}?mode=ro", uri=True), table, "ema")
    result = bench.run_replays(table, seeds=args.seeds, methods=methods())
    bench.print_table(result, Console(width=170))


if __name__ == "__main__":
    main()
