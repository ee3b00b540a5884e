"""``sweep bench …``: the benches' own command-line, mounted by ``sweep.cli`` where this package is installed.

Only parsing and printing live here; each bench's module is imported by the command that runs it, so
``sweep --help`` (and ``python -m sweep bench train`` where only PyTorch is installed: scripts/gpu-bench)
loads none of them.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from sweep.spec import ARCHS, STEMS
from sweep.terminal import DEFAULT_URL, StorageOpt, console, fail, user_errors

bench_app = typer.Typer(help="Measurements, each against its baseline in the same run.", no_args_is_help=True)
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write the figures to this JSON file.")]


# The choices of the spec keys model.arch and train.stem (sweep.spec owns them).
Arch = enum.StrEnum("Arch", {a: a for a in ARCHS})
Stem = enum.StrEnum("Stem", {s: s for s in STEMS})


@bench_app.command("train")
def bench_train(
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps measured per pipeline.")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 128,
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="ImageFolder root with real images (default: synthetic).")
    ] = None,
    subset: Annotated[int, typer.Option("--subset", min=100, help="Training images used from the data.")] = 5000,
    arch: Annotated[Arch, typer.Option("--arch", help="torchvision ResNet to train.")] = Arch.resnet18,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads (default: all).")] = None,
    json_path: JsonOpt = None,
    stem: Annotated[
        Stem, typer.Option("--stem", help="ResNet stem of both pipelines (cifar: 3x3 stride 1, no max-pool).")
    ] = Stem.imagenet,
    compile_model: Annotated[
        bool, typer.Option("--compile", help="torch.compile the engine's model (used on CUDA).")
    ] = False,
    compile_backend: Annotated[
        str | None,
        typer.Option("--compile-backend", help="torch.compile backend (default inductor; eager: a dry run)."),
    ] = None,
    seed_workers: Annotated[
        int, typer.Option("--seed-workers", min=0, help="DataLoader workers of the tutorial pipeline.")
    ] = 2,
    data_only: Annotated[bool, typer.Option("--data-only", help="Only the data pipelines, no training.")] = False,
) -> None:
    """Images/s of the article's DataLoader+PIL loop against this engine, in one run."""
    from sweep_bench.train import run_train_bench

    if threads:
        import torch

        torch.set_num_threads(threads)
    run_train_bench(
        device,
        steps=steps,
        batch_size=batch_size,
        json_path=json_path,
        data_root=data_root,
        subset=subset,
        arch=arch.value,
        console=console,
        stem=stem.value,
        compile=compile_model,
        seed_workers=seed_workers,
        data_only=data_only,
        compile_backend=compile_backend,
    )


@bench_app.command("gpu-checks")
def bench_gpu_checks(json_path: JsonOpt = None) -> None:
    """Checks only a GPU settles (OOM recovery: memory given back, the next trial resident); skipped without CUDA."""
    from sweep_bench.gpu_checks import run_gpu_checks

    run_gpu_checks(json_path)


@bench_app.command("pretrain")
def bench_pretrain(
    data_root: Annotated[
        Path, typer.Option("--data-root", help="CIFAR-10 as an ImageFolder (train/ and test/), e.g. the JPEGs.")
    ],
    output: Annotated[
        Path, typer.Option("--output", help="The backbone state dict to write (.pt; metadata beside it as .json).")
    ] = Path("benchmarks/backbones/resnet18-cifar5.pt"),
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")] = 10,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="AdamW peak learning rate.")] = 2e-3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of initialisation, order and augmentation.")] = 0,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads (default: all).")] = None,
) -> None:
    """Pretrain the fine-tune table's backbone: a ResNet-18 (CIFAR stem) on airplane to deer.

    The source classes are airplane, automobile, bird, cat and deer; resumes from OUTPUT.ckpt when run again.
    """
    from sweep_bench.pretrain import Recipe, pretrain

    if threads:
        import torch

        torch.set_num_threads(threads)
    with user_errors():
        pretrain(
            data_root,
            output,
            recipe=Recipe(epochs=epochs, lr=lr, seed=seed),
            log=lambda line: console.print(line, highlight=False),
        )


@bench_app.command("storage")
def bench_storage(
    trials: Annotated[int, typer.Option("--trials", min=10, help="Trials timed per backend.")] = 200,
    big: Annotated[int, typer.Option("--big", min=100, help="Trials already in the study for the scale test.")] = 5000,
    pg_url: Annotated[
        str | None,
        typer.Option(
            "--pg-url",
            envvar="SWEEP_BENCH_PG_URL",
            help="PostgreSQL URL to measure (default: start a throwaway cluster).",
        ),
    ] = None,
    backends: Annotated[
        str | None,
        typer.Option(
            "--backends",
            help="Comma-separated subset of memory, sqlite, postgresql, postgresql_8_workers (default: all).",
        ),
    ] = None,
    json_path: JsonOpt = None,
) -> None:
    """Per-trial orchestration overhead on memory, SQLite and PostgreSQL against stock Optuna."""
    from sweep_bench.storage import BACKENDS, run_storage_bench

    chosen = BACKENDS if backends is None else tuple(b for b in backends.split(",") if b)
    unknown = [b for b in chosen if b not in BACKENDS]
    if unknown:
        raise fail(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    run_storage_bench(trials=trials, big=big, pg_url=pg_url, json_path=json_path, console=console, backends=chosen)


@bench_app.command("scale")
def bench_scale(
    workers: Annotated[str, typer.Option("--workers", help="Simulated worker counts, comma-separated.")] = "16,64,256",
    sizes: Annotated[
        str, typer.Option("--sizes", help="Finished trials for the study-size axis, comma-separated (0: skip).")
    ] = "1000,10000,100000",
    pgbouncer: Annotated[bool, typer.Option(help="Also run every worker count behind PgBouncer.")] = True,
    stock: Annotated[bool, typer.Option(help="Also run stock Optuna's RDBStorage.")] = True,
    stock_max: Annotated[int, typer.Option("--stock-max", help="Largest worker count stock Optuna runs at.")] = 64,
    trial_s: Annotated[float, typer.Option("--trial-s", min=0.1, help="Median simulated trial, seconds.")] = 2.0,
    trials_per_worker: Annotated[int, typer.Option("--trials-per-worker", min=1)] = 3,
    procs: Annotated[int, typer.Option("--procs", min=1, help="Processes the workers are spread over.")] = 8,
    pg_url: Annotated[
        str | None,
        typer.Option("--pg-url", envvar="SWEEP_BENCH_PG_URL", help="PostgreSQL URL (default: a throwaway cluster)."),
    ] = None,
    json_path: JsonOpt = None,
) -> None:
    """Hundreds of simulated workers on one PostgreSQL, directly and behind PgBouncer, against stock Optuna."""
    from sweep_bench.scale import run_scale_bench

    run_scale_bench(
        workers=[int(x) for x in workers.split(",") if x.strip()],
        sizes=[int(x) for x in sizes.split(",") if x.strip() and x.strip() != "0"],
        pg_url=pg_url,
        pgbouncer=pgbouncer,
        stock=stock,
        stock_max=stock_max,
        trial_s=trial_s,
        trials_per_worker=trials_per_worker,
        procs=procs,
        json_path=json_path,
        log=lambda line: console.print(line, highlight=False),
    )


@bench_app.command("report")
def bench_report(
    n_trials: Annotated[int, typer.Option("--n-trials", min=1, help="Trials in the synthetic study.")] = 10_000,
    output: Annotated[Path | None, typer.Option("--output", help="Where to write the HTML.")] = None,
    json_path: JsonOpt = None,
) -> None:
    """Time the report on a synthetic study of many trials."""
    from sweep_bench.report import run_report_bench

    run_report_bench(n_trials, json_path=json_path, output=output, console=console)


@bench_app.command("sweep")
def bench_sweep(
    table: Annotated[
        str | None,
        typer.Argument(help="Learning-curve table study (grid sampler, pruner none), e.g. table-cpu."),
    ] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Replays per method (seeds 0..N-1).")] = 10,
    budget_epochs: Annotated[
        int | None,
        typer.Option("--budget-epochs", min=1, help="Epochs per replay (default: a third of the table's epochs)."),
    ] = None,
    json_path: JsonOpt = None,
    html_path: Annotated[
        Path | None, typer.Option("--html", help="Anytime-curve figure (default: beside --json).")
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option(
            "--tolerance",
            min=0.0,
            help="Target: within this many points of the table best (default: "
            "the table's noise floor, the binomial s.e. of its best on its validation images; else 0.5).",
        ),
    ] = None,
    partial: Annotated[
        bool,
        typer.Option(
            "--partial",
            help="Replay a table still being built on the configs it has finished (a random subset of "
            "its grid); the JSON says table.partial. Without it, an unfinished table is an error.",
        ),
    ] = False,
    rung_noise: Annotated[
        str | None,
        typer.Option(
            "--rung-noise",
            help="Perturb every rung value before the last epoch by Gaussian noise of these standard "
            "deviations in points (epoch 1, 2, ...; the last repeats), a fresh draw per proposal, as if "
            "each config were trained with another seed (benchmarks/seed_noise.py measures them).",
        ),
    ] = None,
    storage: StorageOpt = DEFAULT_URL,
) -> None:
    """Replay random, TPE and TPE + median / successive halving / Hyperband against a learning-curve table."""
    from sweep_bench.sweep import parse_rung_noise, run_sweep_bench

    with user_errors():
        run_sweep_bench(
            table,
            storage_url=storage,
            seeds=seeds,
            budget_epochs=budget_epochs,
            json_path=json_path,
            html_path=html_path,
            console=console,
            tolerance=None if tolerance is None else tolerance / 100,
            partial=partial,
            rung_noise=parse_rung_noise(rung_noise) if rung_noise is not None else (),
        )


@bench_app.command("live")
def bench_live(
    table: Annotated[str | None, typer.Argument(help="The learning-curve table study the replay reads.")] = None,
    methods: Annotated[
        str, typer.Option("--methods", help="Comma-separated replay methods to run for real.")
    ] = "random,tpe+hyperband",
    seed: Annotated[int, typer.Option("--seed", help="Sampler seed, the same in the live run and its replay.")] = 0,
    budget_epochs: Annotated[
        int | None,
        typer.Option("--budget-epochs", min=1, help="Epochs per method (default: 12 full trials' worth)."),
    ] = None,
    live_storage: Annotated[
        str | None, typer.Option("--live-storage", help="Where the live studies go (default: a new SQLite file).")
    ] = None,
    device: Annotated[
        str, typer.Option("--device", envvar="SWEEP_DEVICE", help="cpu, cuda or cuda:N for the live training.")
    ] = "cpu",
    json_path: JsonOpt = None,
    html_path: Annotated[
        Path | None, typer.Option("--html", help="Live against replayed curves (default: beside --json).")
    ] = None,
    partial: Annotated[
        bool,
        typer.Option(
            "--partial",
            help="A table still being built: the live run and the replay both propose only its finished configs.",
        ),
    ] = False,
    storage: StorageOpt = DEFAULT_URL,
) -> None:
    """Run replay methods for real (real training) at one seed and compare with their replayed curves."""
    from sweep_bench.live import run_live_check

    with user_errors():
        run_live_check(
            table,
            storage_url=storage,
            live_storage_url=live_storage,
            methods=[m for m in methods.split(",") if m],
            seed=seed,
            budget_epochs=budget_epochs,
            device=device,
            json_path=json_path,
            html_path=html_path,
            partial=partial,
        )
