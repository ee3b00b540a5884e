"""Training-seed noise of a table's early rung values (issue 22): retrain a few configs with other seeds.

    python benchmarks/seed_noise.py run --storage sqlite:///COPY [--top 4 --spread 4 --slow 0 --seeds 2 --epochs 3]
    python benchmarks/seed_noise.py analyse --storage sqlite:///COPY [--json benchmarks/results/seed-noise-wide.json]

From the repository root, with the table's data where its spec says (``/tmp/data/cifar10-jpeg``, or
``--data-root``). ``run`` appends one line per finished (config, seed) to ``--out``; a rerun continues
where it stopped and keeps the configs already there (new ``--top/--spread/--slow`` choices only add).
``analyse`` prints, per epoch, the seed standard deviation pooled over the configs (from the retrains,
and with the table's own run as one more seed), the largest spread of one config, successive
halving's bar on the table and the auto pruner's (1 binomial s.e. lower), and per group how many runs
fall below each (``sweep_bench.noise``). Use a copy of a table still being written (``--partial``
reads it as it is).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import sweep_bench.noise as noise

TABLE = "table-wide"
OUT = Path("benchmarks/results/seed-noise-wide.jsonl")


def _table(args: argparse.Namespace):  # noqa: ANN202 (a sweep_bench Table)
    from sweep_bench.sweep import load_table

    return load_table(args.table, args.storage, complete=not args.partial)


def _run(args: argparse.Namespace) -> int:
    import optuna
    import torch

    from sweep.objective import load_study_data
    from sweep.service import open_read_only
    from sweep_bench.pilot import table_seeds

    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = _table(args)
    seeds = table_seeds(optuna.load_study(study_name=table.name, storage=open_read_only(args.storage)), table)
    spec = table.spec
    if args.data_root:
        spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, root=args.data_root))
    data = load_study_data(spec, Path(os.environ.get("SWEEP_CACHE_DIR", "storage/cache")))
    # The configs already in --out first: on a table that has grown since, a new choice only adds.
    configs = noise.stored_configs(table, args.out)
    have = {table.key(c.params) for c in configs}
    chosen = noise.noise_configs(table, top=args.top, spread=args.spread, slow=args.slow)
    configs += [c for c in chosen if table.key(c.params) not in have]
    print(
        f"{len(configs)} configs x {args.seeds} seeds x {args.epochs} epochs of {spec.epochs}; appending to {args.out}"
    )

    def train(params: dict, seed: int) -> noise.Retrain:
        return noise.retrain_curve(spec, params, data, args.device, seed=seed, epochs=args.epochs)

    missing = [c.params for c in configs if table.key(c.params) not in seeds]
    if missing:
        raise SystemExit(f"the table has no training seed recorded for {missing[0]}; choose other configs")
    n = noise.run_noise(configs, args.out, train, seeds=args.seeds, table_seed=lambda p: seeds[table.key(p)])
    print(f"{n} runs trained now")
    return 0


def _analyse(args: argparse.Namespace) -> int:
    table = _table(args)
    configs = noise.stored_configs(table, args.out)
    result = noise.analyse(table, configs, noise.load_runs(args.out), reduction_factor=args.reduction_factor)
    print(noise.format_analysis(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "analyse"):
        p = sub.add_parser(name)
        p.add_argument("--table", default=TABLE, help="the table study")
        p.add_argument("--storage", required=True, help="its storage URL (a copy if it is being written)")
        p.add_argument("--partial", action="store_true", help="a table still being built")
        p.add_argument("--out", type=Path, default=OUT, help="one JSON line per finished (config, seed) run")
    run = sub.choices["run"]
    run.add_argument("--top", type=int, default=4, help="the table's best configs (a pruner must keep them)")
    run.add_argument("--spread", type=int, default=4, help="configs spread over the rest of the ranking")
    run.add_argument("--slow", type=int, default=0, help="the worst starters of the best quarter")
    run.add_argument("--seeds", type=int, default=2, help="retrains per config besides the table's run")
    run.add_argument("--epochs", type=int, default=3, help="epochs of the table's schedule to train")
    run.add_argument("--device", default="cpu")
    run.add_argument("--threads", type=int, default=1)
    run.add_argument("--data-root", default=None, help="instead of the table spec's data.root")
    ana = sub.choices["analyse"]
    ana.add_argument(
        "--reduction-factor", type=int, default=3, help="successive halving's bar keeps the table's best 1/RF"
    )
    ana.add_argument("--json", default=None)
    args = parser.parse_args()
    return _run(args) if args.command == "run" else _analyse(args)


if __name__ == "__main__":
    sys.exit(main())
