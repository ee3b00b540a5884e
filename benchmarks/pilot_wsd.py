"""The pilot of anytime-valid rung values (issue 22, item 1) on the fine-tune table's configs.

    python benchmarks/pilot_wsd.py run [--threads 1] [--schedule wsd|schedulefree] [--db DB]
    python benchmarks/pilot_wsd.py analyse [--db ...] [--json out.json]
    python benchmarks/pilot_wsd.py replay [--db ...] [--seeds 30] [--json benchmarks/results/sweep-pilot.json]

From the repository root, with the CIFAR-10 JPEGs unpacked where the fine-tune table's spec says
(``/tmp/data/cifar10-jpeg``, or ``--data-root``). ``run`` trains the unfinished configs (a rerun
continues; SIGTERM stops after the epoch); ``analyse`` reads whatever has finished (``sweep_bench.pilot``);
``replay`` runs ``sweep bench sweep``'s replay on the pilot's configs (a subset of the fine-tune table's
grid), once with their EMA rung values and once with the same configs' cosine curves from the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import sweep_bench.pilot as pilot


def _run(args: argparse.Namespace) -> int:
    import optuna
    import torch

    from sweep.model import weights_sha256
    from sweep.objective import load_study_data
    from sweep.service import open_read_only
    from sweep_bench.sweep import load_table

    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = load_table(pilot.TABLE_STUDY, args.table)
    seeds = pilot.table_seeds(
        optuna.load_study(study_name=pilot.TABLE_STUDY, storage=open_read_only(args.table)), table
    )
    configs = pilot.pilot_configs(table, seeds, n_slow=args.slow, n_spread=args.spread)
    train = pilot.PILOT_TRAINS[args.schedule]
    db = args.db or Path(f"benchmarks/tables/table-pilot-{args.schedule}.db")
    spec = pilot.pilot_spec(table.spec, train=train, epochs=args.epochs, data_root=args.data_root)
    cache = Path(os.environ.get("SWEEP_CACHE_DIR", "storage/cache"))
    data = load_study_data(spec, cache)
    meta = {
        "table": pilot.TABLE_STUDY,
        "train": train,
        "epochs": spec.epochs,
        "data_fingerprint": data.fingerprint,
        "table_best": table.best().curve[-1],
        "noise_floor": table.noise_floor(),
        "val_images": len(data.val_y),
        "weights_sha256": weights_sha256(spec.model.weights),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    con = pilot.open_db(db, configs, meta)
    print(
        f"pilot {db}: {len(pilot.stored_configs(con))} configs, {spec.epochs} epochs, train {train}, "
        f"{args.threads} thread(s), pid {os.getpid()}",
        flush=True,
    )
    with pilot.stop_on_signals() as stop:
        try:
            done = pilot.run_pilot(
                con, spec, data, ckpt_dir=args.ckpt_dir, stop=stop, limit=args.limit, log=lambda s: print(s, flush=True)
            )
        except pilot.Stop as exc:
            print(f"{exc}; run again to continue", flush=True)
            return 0
    left = sum(not finished for _, finished in pilot.stored_configs(con))
    print(f"{done} configs finished in this run, {left} left", flush=True)
    return 0


def _analyse(args: argparse.Namespace) -> int:
    import sqlite3

    con = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
    result = pilot.analyse(con, top_k=args.top_k)
    print(pilot.format_analysis(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _replay(args: argparse.Namespace) -> int:
    import sqlite3

    from rich.console import Console

    from sweep_bench import write_json
    from sweep_bench.sweep import load_table, print_table, run_replays

    console = Console()
    base = load_table(pilot.TABLE_STUDY, args.table)
    con = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
    results = {}
    for variant in (args.variant, "cosine"):
        table = pilot.pilot_table(con, base, variant)
        # Each against its own best final, within the fine-tune table's noise floor (same validation set).
        results[variant] = run_replays(table, seeds=args.seeds, budget_epochs=args.budget_epochs)
        print_table(results[variant], console)
    result = results[args.variant]
    cosine = results["cosine"]
    result["same_configs_cosine"] = {
        k: cosine[k] for k in ("epochs_ratio_vs_random", "epochs_ratio_se", "oracle", "best_val", "chosen_test")
    } | {
        "table_epoch_spearman": cosine["table"]["epoch_spearman"],
        "target_val_accuracy": cosine["target_val_accuracy"],
    }
    write_json(result, args.json)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train the pilot's unfinished configs")
    run.add_argument("--schedule", choices=sorted(pilot.PILOT_TRAINS), default="wsd")
    run.add_argument("--db", type=Path, default=None, help="default: benchmarks/tables/table-pilot-SCHEDULE.db")
    run.add_argument("--table", default=pilot.TABLE_URL, help="storage URL of the fine-tune table")
    run.add_argument("--data-root", default=None, help="instead of the table spec's data.root")
    run.add_argument("--threads", type=int, default=1)
    run.add_argument("--epochs", type=int, default=None, help="fewer epochs (a smoke run; use another --db)")
    run.add_argument("--limit", type=int, default=None, help="train at most this many configs")
    run.add_argument("--slow", type=int, default=7, help="slow starters at the top lr")
    run.add_argument("--spread", type=int, default=10, help="configs spread over the rest of the ranking")
    run.add_argument("--ckpt-dir", type=Path, default=Path("/tmp/pilot-wsd-ckpt"))
    run.set_defaults(func=_run)
    ana = sub.add_parser("analyse", help="figures from the finished configs")
    ana.add_argument("--db", type=Path, default=pilot.DEFAULT_DB)
    ana.add_argument("--top-k", type=int, default=None, help="default: a quarter of the finished configs")
    ana.add_argument("--json", default=None)
    ana.set_defaults(func=_analyse)
    rep = sub.add_parser("replay", help="replay samplers and pruners on the pilot's configs (EMA and cosine)")
    rep.add_argument("--db", type=Path, default=pilot.DEFAULT_DB)
    rep.add_argument("--table", default=pilot.TABLE_URL, help="storage URL of the fine-tune table")
    rep.add_argument("--variant", choices=[v for v in pilot.VARIANTS if v not in ("cosine", "cooldown")], default="ema")
    rep.add_argument("--seeds", type=int, default=30)
    rep.add_argument("--budget-epochs", type=int, default=None, help="default: a third of the configs' epochs")
    rep.add_argument("--json", default=None)
    rep.set_defaults(func=_replay)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
