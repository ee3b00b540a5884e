"""The ``sweep`` command: create a study, run workers, write the report, look at studies.

Only argument parsing and printing live here; the work is in ``sweep.service``. Errors a user can
fix print one line on stderr and exit with code 2 — never a traceback.
"""

from __future__ import annotations

import enum
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from sweep.show import short
from sweep.spec import PRECISIONS
from sweep.terminal import DEFAULT_URL, StorageOpt, console, err_console, fail, styled, user_errors

if TYPE_CHECKING:  # the service (Optuna, SQLAlchemy) is imported by the commands that use it
    from sweep.service import WorkerPlan

# Every environment variable sweep reads, shown at the end of `sweep --help`.
ENVIRONMENT = {
    "SWEEP_STORAGE": "database URL, instead of --storage (keeps a password off command lines)",
    "SWEEP_ARTIFACTS": "checkpoints and kept models: a folder or s3://bucket/prefix, instead of --artifacts",
    "SWEEP_SIGNAL_EXIT": "exit code of a worker a signal stopped, instead of --signal-exit (Kubernetes: 143)",
    "AWS_ENDPOINT_URL": "with s3:// artifacts: an S3-compatible endpoint (MinIO, Ceph, R2); AWS_* credentials too",
    "SWEEP_CACHE_DIR": "decoded-image cache (default storage/cache)",
    "SWEEP_HEARTBEAT_INTERVAL": "seconds between a running trial's heartbeats (default 10)",
    "SWEEP_GRACE_PERIOD": "seconds without a heartbeat before a trial counts as dead (default 30)",
    "SWEEP_DB_PATIENCE": "seconds a worker waits out an unreachable database before it exits 69 (default 600)",
    "SWEEP_WORKER_LABEL": "prefix of a worker's output lines (set by the supervisor for its children)",
    "SWEEP_SUPERVISED": "set by the supervisor for its children: the group's Ctrl-C reaches them as one SIGTERM",
    "SWEEP_DEVICE": "device of `sweep bench live`",
    "SWEEP_BENCH_PG_URL": "PostgreSQL of `sweep bench storage|scale` (default: a throwaway cluster)",
    "SWEEP_CHROMIUM": "browser of `sweep bench report` (default: chromium on PATH)",
}
JSON_NOTE = "--json (every command that reports something): one JSON document on stdout (README: Machine output)."

app = typer.Typer(
    name="sweep",
    help="Hyperparameter sweeps for fine-tuning ResNet image classifiers. "
    "One SQL database (SQLite or PostgreSQL) is the only coordinator between workers.",
    epilog="\n\n".join(["Environment:", *(f"{k}: {v}" for k, v in ENVIRONMENT.items()), JSON_NOTE]),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
specs_app = typer.Typer(help="The study specs SPEC can name: ./studies/*.toml and the ones shipped with sweep.")
app.add_typer(specs_app, name="specs")


FORCE_HELP = "Replace an existing export folder whole (refused when it holds other files)."


def _version(value: bool) -> None:
    if value:
        from sweep import __version__

        print(f"sweep {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print sweep's version and exit.")
    ] = False,
) -> None:
    """Hyperparameter sweeps for fine-tuning ResNet image classifiers.

    One SQL database (SQLite or PostgreSQL) is the only coordinator between workers.
    """


JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")]
StoredArtifactsOpt = Annotated[
    str | None,
    typer.Option(
        "--artifacts",
        envvar="SWEEP_ARTIFACTS",
        show_default=False,
        help="Where the workers stored checkpoints and models: a folder (default: storage/artifacts) "
        "or s3://bucket/prefix.",
    ),
]


def _json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str))


# --------------------------------------------------------------------------- create


@app.command()
def create(
    spec: Annotated[
        str, typer.Argument(help="A spec name (./studies/NAME.toml, else built in: sweep specs) or a .toml path.")
    ],
    name: Annotated[str | None, typer.Option("--name", help="Study name (default: the spec's `name`).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a spec key by dotted path, value as TOML: --set epochs=3 "
            "--set params.lr.high=0.01 --set data.name=synthetic. Repeatable.",
        ),
    ] = None,
    warm_start: Annotated[
        str | None,
        typer.Option(
            "--warm-start",
            help="An existing study whose finished trials the new one starts from "
            "(params both search, values inside the new space); the budget grows by as many.",
        ),
    ] = None,
    as_json: JsonFlag = False,
    storage: StorageOpt = DEFAULT_URL,
) -> None:
    """Define a study from a spec and store it (with its resolved spec) in the shared storage."""
    from sweep.service import create_study
    from sweep.storage import mask_url

    with user_errors():
        result = create_study(spec, name=name, overrides=set_ or [], storage_url=storage, warm_start=warm_start)
    for warning in result.warnings:
        err_console.print(styled("warning:", "yellow", f" {warning}"), highlight=False)
    where = mask_url(storage)
    if as_json:
        _json(
            {
                "study": result.name,
                "created": result.created,
                "storage": where,
                "n_trials": result.spec.n_trials,
                "epochs": result.spec.epochs,
                "params": list(result.spec.params),
                "warnings": list(result.warnings),
                "warm_started": result.warm_started,
            }
        )
        return
    if result.created:
        console.print(
            f"created study {result.name} in {where}: {result.spec.n_trials} trials × "
            f"≤{result.spec.epochs} epochs, searching {', '.join(result.spec.params) or 'nothing'}"
            + (
                f"; {result.warm_started} finished trials of {warm_start} copied in as a warm start"
                if warm_start
                else ""
            ),
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print(f"study {result.name} already exists in {where} with this spec; nothing to do", highlight=False)


# --------------------------------------------------------------------------- specs


@specs_app.callback(invoke_without_command=True)
def specs(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")] = False,
) -> None:
    """List the specs `sweep create SPEC` can name; a local studies/NAME.toml wins over a built-in one."""
    if ctx.invoked_subcommand is not None:
        return
    from sweep.spec import spec_files

    files = spec_files()
    if as_json:
        print(json.dumps([f.to_json() for f in files], indent=2))
        return
    table = Table(title="study specs (sweep specs show NAME prints one)")
    for col in ("spec", "source", "about"):
        table.add_column(col, overflow="fold")
    for f in files:
        table.add_row(f.name, f.source if f.source == "built-in" else str(f.path), f.about)
    console.print(table)


@specs_app.command("show")
def specs_show(
    spec: Annotated[str, typer.Argument(help="A spec name (sweep specs) or a path to a .toml file.")],
) -> None:
    """Print a spec's TOML, to start a new spec from: sweep specs show lr-freeze > studies/mine.toml."""
    from sweep.spec import find_spec_file

    with user_errors():
        path = find_spec_file(spec)
    print(path.read_text(encoding="utf-8"), end="")


# --------------------------------------------------------------------------- worker


class _WorkerDisplay:
    """Progress of one worker: a line per trial, an epoch bar for the running trial."""

    def __init__(self, label: str | None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.prefix = f"[{label}] " if label else ""
        self.plain = label is not None or not console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=self.plain,
        )
        self.task: Any = None

    def message(self, text: str) -> None:
        console.print(f"{self.prefix}{text}", highlight=False, soft_wrap=True)

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        shown = ", ".join(f"{k}={short(v)}" for k, v in params.items()) or "no searched params"
        self.message(f"trial {number} started: {shown}")
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"{self.prefix}trial {number}", total=None)

    def epoch_done(self, number: int, epoch: int, epochs: int, acc: float, secs: float) -> None:
        if self.task is not None:
            self.progress.update(
                self.task, completed=epoch, total=epochs, description=f"{self.prefix}trial {number} val_acc={acc:.4f}"
            )
        self.message(f"trial {number} epoch {epoch}/{epochs}: val_acc={acc:.4f} ({secs:.1f} s)")

    def trial_finished(self, number: int, state: str, value: float | None, why: str | None) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        colour = {"COMPLETE": "green", "PRUNED": "yellow"}.get(state, "red")
        text = Text.assemble(f"{self.prefix}trial {number} ", (state, colour))
        if value is not None:
            text.append(f" val_acc={value:.4f}")
        if why:
            text.append(f" ({why})")
        console.print(text, highlight=False, soft_wrap=True)


def _install_stop_handlers(stop: Any, display: _WorkerDisplay, *, supervised: bool) -> None:
    """First SIGTERM/SIGINT: finish the epoch, hand the trial back, exit 0. Second: exit now.

    ``supervised`` (a child of ``sweep worker --workers/--gpus``): SIGINT stays ignored (a terminal's
    Ctrl-C reaches the supervisor too, which forwards a SIGTERM) and a repeated SIGTERM is the same stop;
    the supervisor kills its children when the user insists (sweep.supervisor).
    """

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            if supervised:
                return
            display.message("second signal: exiting now")
            os._exit(128 + signum)
        stop.set()
        text = "stopping after the current epoch (the trial goes back to the queue)"
        # From a thread of its own: the handler may interrupt a print of the main thread, and rich's
        # buffer is per thread, so a print nested in that one could be lost. Not a daemon: on a loaded
        # machine the worker can finish its epoch and exit before the thread is scheduled.
        threading.Thread(
            target=display.message, args=(text + ("" if supervised else "; signal again to exit now"),), daemon=False
        ).start()

    signal.signal(signal.SIGINT, signal.SIG_IGN if supervised else handler)
    signal.signal(signal.SIGTERM, handler)


class GpuSet(enum.StrEnum):
    """What ``--gpus`` may name (single GPUs are ``--gpu N``)."""

    all = "all"


@app.command()
def worker(
    study: Annotated[str | None, typer.Argument(help="Study name; may be omitted when the storage holds one.")] = None,
    gpu: Annotated[
        list[int] | None,
        typer.Option("--gpu", help="GPU index to use (repeatable: one worker process per GPU)."),
    ] = None,
    gpus: Annotated[
        GpuSet | None,
        typer.Option("--gpus", help="all = one worker per visible GPU (--gpu N picks GPUs one by one)."),
    ] = None,
    per_gpu: Annotated[int, typer.Option("--per-gpu", min=1, help="Worker processes per GPU.")] = 1,
    device: Annotated[
        str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (auto = cuda if visible).")
    ] = "auto",
    workers: Annotated[int, typer.Option("--workers", min=1, help="CPU worker processes (with --device cpu).")] = 1,
    n_trials: Annotated[
        int | None,
        typer.Option(
            "--n-trials",
            min=1,
            help="Stop this worker after N trials (the study's budget, shared by all workers, always applies).",
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="CPU threads per worker (default: cores / workers).")
    ] = None,
    artifacts: Annotated[
        str | None,
        typer.Option(
            "--artifacts",
            envvar="SWEEP_ARTIFACTS",
            help="Checkpoints and kept models, shared by all workers: a folder (default: storage/artifacts) or "
            "s3://bucket/prefix (endpoint and credentials from the AWS environment).",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="While the study is paused (sweep pause), stay and poll instead of exiting.")
    ] = False,
    signal_exit: Annotated[
        int,
        typer.Option(
            "--signal-exit",
            envvar="SWEEP_SIGNAL_EXIT",
            min=0,
            max=255,
            help="Exit code after a signal made this worker hand its trial back (default 0). Kubernetes: 143, "
            "so that a preempted pod counts as failed and its index is started again.",
        ),
    ] = 0,
    storage: StorageOpt = DEFAULT_URL,
) -> None:
    """Pull trials from the study and run them until its budget is spent.

    Without a GPU it trains on the CPU.

    Ctrl-C / SIGTERM: finish the current epoch, checkpoint, hand the trial back and exit 0.

    Another worker resumes the trial from that checkpoint; a second signal exits at once.
    """
    from sweep.service import plan_workers

    with user_errors():
        plan = plan_workers(
            study,
            storage_url=storage,
            gpu=gpu or [],
            all_gpus=gpus is GpuSet.all,
            per_gpu=per_gpu,
            device=device,
            workers=workers,
            threads=threads,
            n_trials=n_trials,
            artifacts=artifacts,
            wait_paused=wait,
        )
    if plan.slots:
        from sweep.supervisor import supervise

        if signal_exit:  # the children decide it: each is stopped by the signal the supervisor passes on
            os.environ["SWEEP_SIGNAL_EXIT"] = str(signal_exit)
        console.print(f"starting {len(plan.slots)} worker processes: {', '.join(s.label for s in plan.slots)}")
        raise typer.Exit(supervise(plan.slots, plan.child_args, log=lambda m: console.print(m, highlight=False)))
    _run_in_this_process(
        plan, study, storage, n_trials=n_trials, artifacts=artifacts, wait=wait, signal_exit=signal_exit
    )


def _run_in_this_process(
    plan: WorkerPlan,
    study: str | None,
    storage: str,
    *,
    n_trials: int | None,
    artifacts: str | None,
    wait: bool,
    signal_exit: int = 0,
) -> None:
    """One worker here: its display, its stop handlers, the run, the one-line summary, the exit code."""
    plan.pin_here()
    device, threads = plan.device, plan.threads
    label = os.environ.get("SWEEP_WORKER_LABEL")
    display = _WorkerDisplay(label)
    from sweep.objective import StopFlag
    from sweep.service import WorkerEvents, run_worker
    from sweep.supervisor import SUPERVISED_ENV

    stop = StopFlag()
    _install_stop_handlers(stop, display, supervised=os.environ.get(SUPERVISED_ENV) == "1")
    events = WorkerEvents(
        message=display.message,
        trial_started=display.trial_started,
        epoch_done=display.epoch_done,
        trial_finished=display.trial_finished,
    )
    started = time.time()
    with user_errors(), display.progress:
        summary = run_worker(
            study,
            storage_url=storage,
            device=device,
            n_trials=n_trials,
            threads=threads,
            stop=stop,
            events=events,
            artifacts=artifacts,
            wait_paused=wait,
        )
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary.states.items())) or "no trials"
    if summary.lost:
        counts += f", {summary.lost} failed meanwhile by a peer (retried there)"
    how = (
        "stopped"
        if summary.stopped
        else "lost its GPU"
        if summary.device_lost
        else "paused"
        if summary.paused
        else "tripped"
        if summary.tripped
        else "out of disk"
        if summary.disk_full
        else "done"
    )
    display.message(
        f"worker {how}: {counts} on {summary.device} in {time.time() - started:.0f} s (study {summary.study})"
    )
    if summary.tripped:
        from sweep.service import BREAKER_TRIPS

        raise fail(
            f"{BREAKER_TRIPS} trials in a row failed with the same error, so this worker takes no more "
            f"(restarting it would fail more of the budget): {summary.tripped}"
        )
    if summary.disk_full:
        from sweep.service import EXIT_DISK_FULL

        raise fail(
            f"the disk of {summary.disk_full} is full: this worker takes no more trials (the rest of the "
            "budget is left); free space there and start it again",
            EXIT_DISK_FULL,
        )
    if summary.device_lost:
        from sweep.supervisor import EXIT_DEVICE_LOST

        raise typer.Exit(EXIT_DEVICE_LOST)  # a fresh process gets a fresh CUDA context: restart me
    if summary.stopped and signal_exit:
        # Work is left (the trial just handed back): an engine that reads 0 as "this worker's work is
        # done" (a Kubernetes Job's index) must start it again.
        raise typer.Exit(signal_exit)


# --------------------------------------------------------------------------- report


# How the report carries plotly.js: sweep.report.page.PLOTLYJS_MODES (not imported here: it loads Optuna;
# tests/test_report.py holds the two equal).
PlotlyJS = enum.StrEnum("PlotlyJS", {m: m for m in ("inline", "cdn")})


@app.command()
def report(
    studies: Annotated[list[str] | None, typer.Argument(help="Studies to compare (default: the only one).")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="HTML file (default: storage/reports/<study>.html).")
    ] = None,
    plotlyjs: Annotated[
        PlotlyJS, typer.Option("--plotlyjs", help="inline = opens offline (~5 MB); cdn = small file, needs internet.")
    ] = PlotlyJS.inline,
    watch: Annotated[
        float | None, typer.Option("--watch", min=1, help="Rewrite the report every SECONDS until Ctrl-C.")
    ] = None,
    as_json: JsonFlag = False,
    storage: StorageOpt = DEFAULT_URL,
) -> None:
    """Write a self-contained HTML dashboard comparing the trials of one or more studies."""
    from sweep.service import write_report

    while True:
        with user_errors():
            path = write_report(
                studies or [],
                storage_url=storage,
                output=output,
                plotlyjs=plotlyjs.value,
                refresh_s=int(watch) if watch else None,
            )
        if as_json:
            _json({"path": str(path.resolve())})
        else:
            console.print(f"report written: {path.resolve()}", highlight=False, soft_wrap=True)
        if watch is None:
            return
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return


# --------------------------------------------------------------------------- dashboard


@app.command()
def dashboard(
    study: Annotated[str | None, typer.Argument(help="Study whose page the URL opens (default: the list).")] = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; 0.0.0.0 exposes it (no login, and it can edit).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")] = 8080,
    as_json: JsonFlag = False,
    storage: StorageOpt = DEFAULT_URL,
) -> None:
    """Serve optuna-dashboard's live UI on the storage and print its URL; runs until Ctrl-C.

    Needs the optional package: pip install 'sweep[dashboard]'.
    """
    from sweep.service import start_dashboard

    with user_errors():
        board = start_dashboard(storage, study, host=host, port=port)
    # Before the URL is out: SIGTERM (a supervisor, `kill`) stops it as Ctrl-C does, and SIGINT is set
    # again in case the shell that started us in the background ignored it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:  # from the URL on: whoever reads it may stop us at once
        if as_json:
            print(json.dumps({"url": board.url, "study": board.study, "storage": board.storage}), flush=True)
        else:
            console.print(
                f"optuna-dashboard on {board.storage} at {board.url} (Ctrl-C stops it)", highlight=False, soft_wrap=True
            )
        board.serve()
    except KeyboardInterrupt:
        pass
    finally:
        board.close()


# --------------------------------------------------------------------------- status / list


def _state_cell(states: dict[str, int]) -> str:
    order = ["COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL"]
    return "  ".join(f"{states[s]} {s.lower()}" for s in order if states.get(s))


@app.command()
def status(
    study: Annotated[str | None, typer.Argument(help="Study name; may be omitted when the storage holds one.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")] = False,
    storage: StorageOpt = DEFAULT_URL,
) -> None:
    """Show one study: trials by state, best value and params, running trials."""
    from sweep.service import status_of

    with user_errors():
        st = status_of(storage, study)
    if as_json:
        _json(_status_json(st))
        return
    table = Table(title=f"study {st.name}", show_header=False)
    table.add_column(overflow="fold")
    table.add_column(overflow="fold")
    done = sum(n for s, n in st.states.items() if s in ("COMPLETE", "PRUNED", "FAIL"))
    table.add_row("state", st.state.value)
    table.add_row("trials", f"{done} finished of {st.n_trials} budgeted")
    table.add_row("by state", _state_cell(st.states) or "none yet")
    table.add_row(
        "best val acc", f"{st.best_value:.4f} (trial {st.best_number})" if st.best_value is not None else "none yet"
    )
    for k, v in st.best_params.items():
        table.add_row(f"  {k}", short(v))
    _cost_rows(table, st.cost)
    hours = f"{st.compute_hours:.2f} h" + (f" of max_hours {short(st.max_hours)}" if st.max_hours is not None else "")
    table.add_row("compute", hours)
    kept = f"{len(st.kept)} (sweep export {st.name} --trial N --output DIR)" if st.kept else "none"
    table.add_row("kept models", kept)
    for k in st.kept:
        table.add_row(f"  trial {k.trial}", f"{k.value:.4f}  {k.path or k.artifact_id}")
    console.print(table)
    if st.running:
        run = Table(title="running")
        for col in ("trial", "host", "device", "epoch", "last val acc"):
            run.add_column(col)
        for r in st.running:
            acc = f"{r.last_acc:.4f}" if r.last_acc is not None else "-"
            run.add_row(str(r.number), r.host, r.device, str(r.epoch), acc)
        console.print(run)


def _status_json(st: Any) -> dict[str, Any]:
    """One study as `status --json` and each entry of `list --json` print it."""
    return {
        "name": st.name,
        "n_trials": st.n_trials,
        "states": st.states,
        "best_value": st.best_value,
        "best_params": st.best_params,
        "best_number": st.best_number,
        "running": [r.to_json() for r in st.running],
        "state": st.state.value,
        "kept_models": [k.to_json() for k in st.kept],
        "cost": st.cost.to_json() if st.cost is not None else None,
        "compute_hours": round(st.compute_hours, 6),
        "max_hours": st.max_hours,
    }


def _cost_rows(table: Table, cost: Any) -> None:
    """Best trial's compute and the cheapest trial within one point of it."""
    if cost is None or cost.best is None:
        return
    best, cheap = cost.best, cost.cheapest_near_best
    table.add_row("best's compute", f"{best.compute_s:.1f} {cost.unit} ({best.epoch_s:.2f} per epoch)")
    if cheap is not None and cheap.number != best.number:
        table.add_row(
            "cheapest within 1 pt",
            f"trial {cheap.number}: {cheap.value:.4f}, frozen_layers={cheap.frozen_layers}, "
            f"{cheap.compute_s:.1f} {cost.unit}, {cost.speedup:.2f}x faster",
        )
    table.add_row("Pareto front", ", ".join(f"#{r.number}" for r in cost.pareto))


@app.command("list")
def list_(as_json: JsonFlag = False, storage: StorageOpt = DEFAULT_URL) -> None:
    """List the studies in the storage with their progress and best value."""
    from sweep.service import list_statuses

    with user_errors():
        statuses = list_statuses(storage)
    if as_json:
        _json([_status_json(st) for st in statuses])
        return
    if not statuses:
        console.print("no studies yet; create one: sweep create SPEC")
        return
    table = Table(title="studies")
    for col in ("study", "state", "budget", "trials", "best val acc", "best params"):
        table.add_column(col)
    for st in statuses:
        best = f"{st.best_value:.4f}" if st.best_value is not None else "-"
        params = ", ".join(f"{k}={short(v)}" for k, v in st.best_params.items())
        table.add_row(st.name, st.state.value, str(st.n_trials), _state_cell(st.states) or "-", best, params)
    console.print(table)


# --------------------------------------------------------------------------- rerun


# What a training run computes in: the choices of the spec key train.precision (sweep.spec owns them).
Precision = enum.StrEnum("Precision", {p: p for p in PRECISIONS})


@app.command()
def rerun(
    study: Annotated[str, typer.Argument(help="Study name.")],
    trial: Annotated[int, typer.Argument(help="Trial number (as shown in the report and `sweep status`).")],
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads.")] = None,
    precision: Annotated[
        Precision | None,
        typer.Option("--precision", help="Override the study's train.precision, e.g. fp32 to check a bf16 trial."),
    ] = None,
    export: Annotated[
        Path | None, typer.Option("--export", help="Also write the retrained model here, as `sweep export` does.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP)] = False,
    storage: StorageOpt = DEFAULT_URL,
) -> None:
    """Train one trial's params again from scratch (same seed) and compare with the stored values.

    All epochs are run, even when the trial was pruned; the study is not changed.
    """
    from sweep.service import rerun_trial

    def show(epoch: int, epochs: int, acc: float) -> None:
        console.print(f"epoch {epoch}/{epochs}: val_acc={acc:.4f}", highlight=False)

    with user_errors():
        r = rerun_trial(
            study,
            trial,
            storage_url=storage,
            device=device,
            threads=threads,
            on_epoch=show,
            precision=precision.value if precision is not None else None,
            export=export,
            force=force,
        )
    table = Table(
        title=f"study {r.study}, trial {r.number}: " + ", ".join(f"{k}={short(v)}" for k, v in r.params.items())
    )
    table.add_column("epoch")
    table.add_column(f"stored val acc ({r.stored_precision or '?'})")
    table.add_column(f"rerun val acc ({r.new_precision})")
    for i in range(max(len(r.stored_curve), len(r.new_curve))):
        old = f"{r.stored_curve[i]:.4f}" if i < len(r.stored_curve) else "-"
        new = f"{r.new_curve[i]:.4f}" if i < len(r.new_curve) else "-"
        table.add_row(str(i + 1), old, new)
    table.add_row("test", f"{r.stored_test:.4f}" if r.stored_test is not None else "-", f"{r.new_test:.4f}")
    console.print(table)
    if export is not None:
        console.print(f"retrained model exported to {export.resolve()}", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- export / predict


@app.command()
def export(
    study: Annotated[str, typer.Argument(help="Study name.")],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Folder to write model.pt2, state_dict.pt, model.json into (must not exist, unless --force).",
        ),
    ],
    trial: Annotated[int | None, typer.Option("--trial", min=0, help="Trial number (default: the best trial).")] = None,
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP)] = False,
    artifacts: StoredArtifactsOpt = None,
    as_json: JsonFlag = False,
    storage: StorageOpt = DEFAULT_URL,
) -> None:
    """Export a kept model: a torch.export program, a torchvision state dict and model.json."""
    from sweep.service import export_trial

    with user_errors():
        r = export_trial(study, trial, output, storage_url=storage, artifacts=artifacts, force=force)
    if as_json:
        _json(
            {
                "study": r.study,
                "trial": r.number,
                "value": r.value,
                "output": str(output.resolve()),
                "files": [str(p.resolve()) for p in r.files],
            }
        )
        return
    console.print(
        f"trial {r.number} of {r.study} (val acc {r.value:.4f}) exported to {output.resolve()}: "
        + ", ".join(p.name for p in r.files),
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Argument(help="A folder written by `sweep export`.")],
    inputs: Annotated[list[str], typer.Argument(help="Image files or folders (searched recursively).")],
    top: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes shown per image.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads.")] = None,
) -> None:
    """Classify images with an exported model: the top classes per image.

    Nothing in the folder is unpickled: the network is rebuilt from model.json and state_dict.pt is loaded as
    plain tensors after its SHA-256 is checked (model.pt2 is never opened).

    A file that is not a readable image gets a line on stderr; the others are still classified.

    Exit code 1 at the end when any file was unreadable.
    """
    from sweep.export import Prediction
    from sweep.service import predict as run_predict

    with user_errors():
        results = run_predict(model_dir, inputs, k=top, threads=threads)
    bad = [r for r in results if not isinstance(r, Prediction)]
    good = [r for r in results if isinstance(r, Prediction)]
    for r in bad:
        err_console.print(styled("error:", "bold red", f" {r.path}: {r.reason}"), highlight=False, soft_wrap=True)
    if as_json:
        print(
            json.dumps(
                [{"path": r.path, "top": [{"class": c, "probability": p} for c, p in r.top]} for r in good], indent=2
            )
        )
    else:
        table = Table(title=f"{len(good)} images")
        table.add_column("image")
        for i in range(1, top + 1):
            table.add_column(f"top-{i}" if top > 1 else "class")
        for r in good:
            table.add_row(r.path, *(f"{c} {p:.3f}" for c, p in r.top))
        console.print(table)
    if bad:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- enqueue


@app.command()
def enqueue(
    study: Annotated[str, typer.Argument(help="Study name.")],
    param: Annotated[
        list[str],
        typer.Option("--param", help="NAME=VALUE of a searched param (repeatable); the others are sampled."),
    ],
    as_json: JsonFlag = False,
    storage: StorageOpt = DEFAULT_URL,
) -> None:
    """Queue a config you already believe in: a worker runs it before sampling new ones.

    It counts against the budget (refused when the budget is spent: sweep extend first). Each value is
    checked against the study's search space.
    """
    from sweep.service import enqueue_trial

    with user_errors():
        r = enqueue_trial(storage, study, param)
    if as_json:
        _json({"study": r.study, "params": r.params, "queued": r.queued, "n_trials": r.n_trials})
        return
    shown = ", ".join(f"{k}={short(v)}" for k, v in r.params.items())
    console.print(
        f"study {r.study}: queued {shown} ({r.queued} queued, budget {r.n_trials} trials)",
        highlight=False,
        soft_wrap=True,
    )


# --------------------------------------------------------------------------- pause / resume / extend


def _said(r: Any, what: str, as_json: bool) -> None:
    if as_json:
        _json(
            {
                "study": r.study,
                "state": r.state.value,
                "n_trials": r.n_trials,
                "previous_n_trials": r.previous_n_trials,
                "running": r.running,
            }
        )
        return
    console.print(f"study {r.study}: {what}; now {r.state.value}, budget {r.n_trials} trials", highlight=False)


@app.command("clean-artifacts")
def clean_artifacts(
    artifacts: Annotated[
        str | None,
        typer.Option(
            "--artifacts",
            envvar="SWEEP_ARTIFACTS",
            help="The workers' artifact folder (default: storage/artifacts) or s3://bucket/prefix.",
            show_default=False,
        ),
    ] = None,
    older_than: Annotated[
        float, typer.Option("--older-than", min=0, help="Only files older than this many seconds.")
    ] = 3600.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would go; remove nothing.")] = False,
    storage: StorageOpt = DEFAULT_URL,
) -> None:
    """Remove artifact files no trial refers to: checkpoints of crashed workers, writes cut off by a full disk.

    Only files this storage's trials stored are judged, so a folder shared with another storage is safe.

    Every worker does the same when it starts, for files older than an hour.
    """
    from sweep.service import clean_artifacts as clean

    with user_errors():
        result = clean(storage, artifacts=artifacts, older_than_s=older_than, dry_run=dry_run)
    verb = "would remove" if result.dry_run else "removed"
    for name in result.orphans.files:
        console.print(f"  {name}", highlight=False)
    console.print(
        f"{verb} {len(result.orphans.files)} files ({result.orphans.bytes / 1e6:.1f} MB) from {result.folder}",
        highlight=False,
    )


@app.command()
def pause(
    study: Annotated[str, typer.Argument(help="Study name.")],
    as_json: JsonFlag = False,
    storage: StorageOpt = DEFAULT_URL,
) -> None:
    """No worker takes a new trial; running trials finish their epoch, checkpoint and go back to the queue.

    Workers then exit 0 (`sweep worker --wait`: they stay and poll until `sweep resume`).
    """
    from sweep.service import pause_study

    with user_errors():
        r = pause_study(storage, study)
    _said(r, f"paused ({r.running} running trials hand themselves back after their current epoch)", as_json)


@app.command()
def resume(
    study: Annotated[str, typer.Argument(help="Study name.")],
    as_json: JsonFlag = False,
    storage: StorageOpt = DEFAULT_URL,
) -> None:
    """Hand trials out again; a handed-back trial resumes from its checkpoint. Start workers if none wait."""
    from sweep.service import resume_study

    with user_errors():
        r = resume_study(storage, study)
    _said(r, "resumed", as_json)


@app.command()
def stop(
    study: Annotated[str, typer.Argument(help="Study name.")],
    as_json: JsonFlag = False,
    storage: StorageOpt = DEFAULT_URL,
) -> None:
    """End a sweep early: no new trials; running trials checkpoint after their epoch and go back to the queue.

    Workers exit 0, even with --wait. `sweep extend STUDY --n-trials N` reopens it; the queued trials resume first.
    """
    from sweep.service import stop_study

    with user_errors():
        r = stop_study(storage, study)
    _said(r, f"stopped ({r.running} running trials checkpoint and hand themselves back after their epoch)", as_json)


@app.command()
def delete(
    study: Annotated[str, typer.Argument(help="Study name.")],
    yes: Annotated[
        bool, typer.Option("--yes", help="Really delete: the study, its trials, checkpoints and kept models, for good.")
    ] = False,
    artifacts: StoredArtifactsOpt = None,
    as_json: JsonFlag = False,
    storage: StorageOpt = DEFAULT_URL,
) -> None:
    """Delete a study with its trials and every checkpoint and kept model file (refused while trials run)."""
    from sweep.service import delete_study

    with user_errors():
        r = delete_study(storage, study, yes=yes, artifacts=artifacts)
    if as_json:
        _json({"study": r.study, "trials": r.trials, "artifacts_removed": r.artifacts_removed})
        return
    console.print(f"deleted study {r.study}: {r.trials} trials, {r.artifacts_removed} artifact files", highlight=False)


@app.command()
def extend(
    study: Annotated[str, typer.Argument(help="Study name.")],
    n_trials: Annotated[int, typer.Option("--n-trials", min=1, help="The new trial budget of the whole study.")],
    as_json: JsonFlag = False,
    storage: StorageOpt = DEFAULT_URL,
) -> None:
    """Set a new trial budget (never below the trials already finished, running or queued)."""
    from sweep.service import extend_study

    with user_errors():
        r = extend_study(storage, study, n_trials)
    before = r.previous_n_trials if r.previous_n_trials is not None else r.n_trials
    _said(r, f"budget {before} -> {r.n_trials}", as_json)


# --------------------------------------------------------------------------- bench


def _mount_bench() -> None:
    """``sweep bench``: sweep_bench's own sub-app where that package is installed (a checkout), else one
    line saying it is not (the worker image ships sweep alone)."""
    import importlib.util

    if importlib.util.find_spec("sweep_bench") is not None:
        from sweep_bench.cli import bench_app

        app.add_typer(bench_app, name="bench")
        return

    @app.command(
        "bench", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False
    )
    def bench_missing(ctx: typer.Context) -> None:
        """Measurements (package sweep_bench: not installed here)."""
        raise fail(
            "the benchmarks (package sweep_bench) are not installed here, e.g. in the worker image; "
            "run `sweep bench` from a checkout: pip install -e ."
        )


_mount_bench()
