"""Settings of the evidence pruner (``pruner.type = "auto"``) replayed on a learning-curve table.

    python benchmarks/replay_auto.py --table table-wide --storage sqlite:///benchmarks/tables/table-wide.db
    python benchmarks/replay_auto.py --pilot benchmarks/tables/table-pilot-wsd.db     (the pilot's subset)

From the repository root. The same replay as ``sweep bench sweep`` (``sweep_bench.sweep.run_replays``)
with random, TPE, successive halving from epoch 1 (the stock pruner that did best on the narrow
grid's subset, keeping a third, and at each ``--factors`` reduction factor) and the auto pruner over
``first_rung`` (``--firsts``; none: nothing is pruned until min_complete trials finished; 1 or 2: a
prior rung until then) x ``reduction_factor`` (``--factors``) x ``min_complete`` (4, 8) x
``margin_se`` (``--margins``). A table still being built is replayed on the configs it has
(``--partial``); ``--rung-noise`` perturbs the rung values as ``sweep bench sweep``'s does. The
figures it printed are in BENCHMARKS.md with their date; no JSON (``sweep bench sweep`` writes the
one that counts).
"""

from __future__ import annotations

import argparse
import itertools
import sqlite3
from typing import Any

from rich.console import Console

import sweep_bench.sweep as bench
from sweep_bench.pilot import TABLE_STUDY, TABLE_URL, pilot_table


def methods(
    margins: tuple[float, ...] = (1.0,),
    factors: tuple[int, ...] = (2, 3),
    firsts: tuple[int | None, ...] = (None, 1, 2),
) -> list[bench.Method]:
    """The baselines (successive halving from epoch 1 at each reduction factor), then every auto setting."""
    out = [bench.Method("random", "random", "none"), bench.Method("tpe", "tpe", "none")]
    for rf in sorted({3, *factors}):
        sha = {"min_resource": 1, "reduction_factor": rf}
        out.append(bench.Method("tpe+sha" if rf == 3 else f"tpe+sha(rf{rf})", "tpe", "successive-halving", sha))
    for first, rf, mc, margin in itertools.product(firsts, factors, (4, 8), margins):
        args: dict[str, Any] = {"min_complete": mc, "reduction_factor": rf, "margin_se": margin}
        if first is not None:
            args["first_rung"] = first
        label = f"auto(first={first},rf={rf},mc={mc}" + (f",margin={margin:g}" if len(margins) > 1 else "") + ")"
        out.append(bench.Method(label, "tpe", "auto", args))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=TABLE_STUDY, help="the table study (default: the fine-tune table)")
    parser.add_argument("--storage", default=TABLE_URL, help="its storage URL")
    parser.add_argument("--pilot", default=None, help="a pilot database: replay its subset of the fine-tune table")
    parser.add_argument("--partial", action="store_true", help="replay a table still being built")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--margins", default="1", help="comma-separated margin_se values to try (default 1)")
    parser.add_argument("--rung-noise", default=None, help="as sweep bench sweep's: seed-like noise, points per epoch")
    parser.add_argument("--factors", default="2,3", help="comma-separated reduction factors to try (default 2,3)")
    parser.add_argument("--firsts", default="none,1,2", help="first_rung values to try (default none,1,2)")
    args = parser.parse_args()
    table = bench.load_table(args.table, args.storage, complete=not args.partial)
    if args.pilot:
        table = pilot_table(sqlite3.connect(f"file:{args.pilot}?mode=ro", uri=True), table, "ema")
    margins = tuple(float(m) for m in args.margins.split(","))
    noise = bench.parse_rung_noise(args.rung_noise) if args.rung_noise else ()
    factors = tuple(int(f) for f in args.factors.split(","))
    firsts = tuple(None if f == "none" else int(f) for f in args.firsts.split(","))
    result = bench.run_replays(table, seeds=args.seeds, methods=methods(margins, factors, firsts), rung_noise=noise)
    bench.print_table(result, Console(width=170))


if __name__ == "__main__":
    main()
