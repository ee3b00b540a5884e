"""Storage benchmark: per-trial orchestration overhead of sweep's storage against stock Optuna, in one run.

    sweep bench storage [--trials 200] [--big 5000] [--pg-url URL] [--backends sqlite,...] [--json out.json]

One "trial" is the bookkeeping a worker does around training, with no training: ask, 4 suggests,
10 reports (one per epoch), a checkpoint-record user attr, tell. The random sampler is used so that
only storage is timed; the TPE sampler's ask is timed on its own. sweep's path is the worker's own
(``open_storage(heartbeat=True)``, ``BudgetGate.take`` under ``budget_lock``, a heartbeat thread per trial);
the baseline is the same work through stock Optuna defaults (``optuna.create_study(storage=URL)``
with a plain URL), timed in the same process, in alternating rounds, so machine noise hits both.

Backends: in-memory, SQLite file, PostgreSQL with 1 and with 8 concurrent worker processes (the
cluster from ``pg_url``, else a throwaway one from scripts/pg-test-cluster). Each is measured on a
study that already holds ~100 trials and on one that holds ``big`` (5,000) trials, pre-filled in
bulk. The TPE sampler's ask (+ 4 suggests) at ``big`` trials is timed too: sweep's (incremental,
``sweep.tpe``) against Optuna's ``TPESampler`` on the same study.

sweep's storage is ``sweep.rdb.SweepRDBStorage`` (Optuna's schema, one Core statement per call);
stock is Optuna's ``RDBStorage`` behind its default cache layer.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import multiprocessing
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

from sweep import record
from sweep.heartbeat import beating
from sweep.search import FeasibilityAwareTPE
from sweep.service import BudgetGate
from sweep.spec import StudySpec, parse_spec
from sweep.storage import mask_url, open_storage
from sweep_bench import script, started, write_json
from sweep_bench.synthetic import DISTRIBUTIONS, random_params, suggest

SMALL = 100  # trials already in the study for the headline figure
EPOCHS = 10
BACKENDS = ("memory", "sqlite", "postgresql", "postgresql_8_workers")

Trial = Callable[[], None]


# --------------------------------------------------------------------------- the work of one trial


def _bookkeeping(study: optuna.Study, trial: optuna.Trial) -> None:
    """Everything a worker tells the storage during one trial, training left out."""
    aug = suggest(trial)["aug_strength"]
    for epoch in range(1, EPOCHS + 1):
        trial.report(0.5 + 0.04 * epoch * aug, epoch)
    trial.set_user_attr(record.CHECKPOINT.name, {"path": f"storage/artifacts/t{trial.number}.pt", "epoch": EPOCHS})
    study.tell(trial, 0.5 + 0.4 * aug)


def _spec(name: str) -> StudySpec:
    return parse_spec({"name": name, "n_trials": 10_000_000, "sampler": {"type": "random"}})


def sweep_trial(study: optuna.Study, storage: Any, spec: StudySpec) -> Trial:
    """One trial the way ``sweep worker`` runs it: budget lock, stale check, count, ask, heartbeat."""
    beats = hasattr(storage, "get_heartbeat_interval")
    gate = BudgetGate(study, spec)  # one per worker process, as in run_worker

    def one() -> None:
        decision, trial = gate.take()
        assert decision == "run" and trial is not None
        with beating(storage, trial._trial_id, beaten=True) if beats else contextlib.nullcontext():
            _bookkeeping(study, trial)

    return one


def stock_trial(study: optuna.Study) -> Trial:
    """The same work through stock Optuna: ask, bookkeeping, tell."""
    return lambda: _bookkeeping(study, study.ask())


# --------------------------------------------------------------------------- studies


def _random() -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=0)


def _synthetic_trials(n: int, seed: int = 0) -> list[optuna.trial.FrozenTrial]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        params = random_params(rng)
        final = 0.5 + 0.4 * rng.random()
        pruned = rng.random() < 0.3
        epochs = rng.randint(1, EPOCHS - 1) if pruned else EPOCHS
        out.append(
            optuna.trial.create_trial(
                state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
                value=None if pruned else final,
                params=params,
                distributions=DISTRIBUTIONS,
                intermediate_values={e: final * e / EPOCHS for e in range(1, epochs + 1)},
                user_attrs={record.CHECKPOINT.name: {"path": "storage/artifacts/x.pt", "epoch": epochs}},
            )
        )
    return out


def prefill(study: optuna.Study, n: int, seed: int = 0) -> None:
    """Add ``n`` finished trials fast: ``study.add_trials`` in memory, one bulk transaction in SQL.

    Optuna's RDB ``add_trials`` commits trial by trial (~30 ms each on SQLite: minutes for 5,000);
    here the same rows go in through Optuna's own ORM models in one session. Benchmark set-up only.
    """
    trials = _synthetic_trials(n, seed)
    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        study.add_trials(trials)
        return
    from optuna.storages._rdb import models

    first = len(study.get_trials(deepcopy=False))
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    iv_type = models.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE
    v_type = models.TrialValueModel.TrialValueType.FINITE
    session = backend.scoped_session()
    try:
        for i, t in enumerate(trials):
            row = models.TrialModel(number=first + i, study_id=study._study_id, state=t.state)
            row._datetime_start_utc = now
            row._datetime_complete_utc = now
            row.params = [
                models.TrialParamModel(
                    param_name=name,
                    param_value=DISTRIBUTIONS[name].to_internal_repr(value),
                    distribution_json=optuna.distributions.distribution_to_json(DISTRIBUTIONS[name]),
                )
                for name, value in t.params.items()
            ]
            if t.value is not None:
                row.values = [models.TrialValueModel(objective=0, value=t.value, value_type=v_type)]
            row.intermediate_values = [
                models.TrialIntermediateValueModel(step=s, intermediate_value=v, intermediate_value_type=iv_type)
                for s, v in t.intermediate_values.items()
            ]
            row.user_attributes = [
                models.TrialUserAttributeModel(key=k, value_json=json.dumps(v)) for k, v in t.user_attrs.items()
            ]
            session.add(row)
        session.commit()
    finally:
        session.close()
    got = len(study.get_trials(deepcopy=False))
    if got != first + n:
        raise RuntimeError(f"prefill: expected {first + n} trials, the storage reads back {got}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        try:
            yield
        finally:
            optuna.logging.set_verbosity(level)


# --------------------------------------------------------------------------- timing


def _timed(fn: Trial, n: int) -> tuple[float, float]:
    """(wall ms, CPU ms of this process) per call, over n calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - wall) * 1000 / n, (time.process_time() - cpu) * 1000 / n


def compare(runs: dict[str, Trial], trials: int, rounds: int = 5, warmup: int = 3) -> dict[str, dict[str, float]]:
    """Median per-trial wall and CPU ms of each runner, measured in alternating rounds."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    per_round = max(1, trials // rounds)
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    for _ in range(rounds):
        for key, fn in runs.items():
            samples[key].append(_timed(fn, per_round))
    return {
        key: {
            "ms": statistics.median(w for w, _ in s),
            "cpu_ms": statistics.median(c for _, c in s),
            "spread_ms": [round(min(w for w, _ in s), 2), round(max(w for w, _ in s), 2)],
        }
        for key, s in samples.items()
    }


def tpe_ask_ms(study: optuna.Study, n: int = 7) -> dict[str, float]:
    """Median ms of a TPE ask + 4 suggests on this study: sweep's sampler and stock ``TPESampler``.

    Alternating asks, each told at once (nothing left running), same seed. sweep's is the worker's
    own (``build_sampler``: incremental, same proposals); its first ask, which reads every finished
    trial once into its columns, is reported on its own (``first``).
    """
    samplers = {"sweep": FeasibilityAwareTPE(seed=0), "stock": optuna.samplers.TPESampler(seed=0)}
    times: dict[str, list[float]] = {key: [] for key in samplers}
    original = study.sampler
    try:
        for _ in range(n + 1):
            for key, sampler in samplers.items():
                study.sampler = sampler
                start = time.perf_counter()
                trial = study.ask(DISTRIBUTIONS)
                times[key].append((time.perf_counter() - start) * 1000)
                study.tell(trial, 0.5)
    finally:
        study.sampler = original
    return {
        "sweep": statistics.median(times["sweep"][1:]),
        "sweep_first": times["sweep"][0],
        "stock": statistics.median(times["stock"][1:]),
    }


# --------------------------------------------------------------------------- one backend


# A variant makes a study for a tag and returns it with its one-trial function.
Variant = Callable[[str], tuple[optuna.Study, Trial]]


def _measure(variants: dict[str, Variant], *, trials: int, big: int, log: Callable[[str], None], label: str) -> dict:
    """Every variant at SMALL and at ``big`` trials in its study, in alternating rounds; TPE ask at ``big``."""
    out: dict[str, Any] = {}
    for tag, n_prefill, n_trials in (("small", SMALL, trials), ("big", big, max(10, trials // 4))):
        made = {key: make(f"{tag}") for key, make in variants.items()}
        log(f"{label}: pre-filling {len(made)} studies with {n_prefill} trials")
        for study, _ in made.values():
            prefill(study, n_prefill, seed=n_prefill)
        log(f"{label}: {n_trials} trials for each of {', '.join(made)} at {n_prefill} trials in the study")
        res = compare({key: run for key, (_, run) in made.items()}, n_trials)
        stock = res["stock"]["ms"]
        if tag == "small":
            out.update(
                ms_per_trial=round(res["sweep"]["ms"], 3),
                stock_ms_per_trial=round(stock, 3),
                ratio_vs_stock=round(res["sweep"]["ms"] / stock, 3),
                cpu_ms_per_trial=round(res["sweep"]["cpu_ms"], 3),
                stock_cpu_ms_per_trial=round(res["stock"]["cpu_ms"], 3),
                spread_ms=res["sweep"]["spread_ms"],
                stock_spread_ms=res["stock"]["spread_ms"],
            )
        else:
            out[f"ms_per_trial_at_{big}"] = round(res["sweep"]["ms"], 3)
            out[f"stock_ms_per_trial_at_{big}"] = round(stock, 3)
            out[f"ratio_vs_stock_at_{big}"] = round(res["sweep"]["ms"] / stock, 3)
            ask = tpe_ask_ms(made["sweep"][0])
            out[f"tpe_ask_ms_at_{big}"] = round(ask["sweep"], 2)
            out[f"tpe_first_ask_ms_at_{big}"] = round(ask["sweep_first"], 2)
            out[f"stock_tpe_ask_ms_at_{big}"] = round(ask["stock"], 2)
    return out


def _sweep_variant(storage_for: Callable[[str], Any], name_for: Callable[[str], str]) -> Variant:
    def make(tag: str) -> tuple[optuna.Study, Trial]:
        storage = storage_for(tag)
        study = optuna.create_study(storage=storage, study_name=name_for(tag), direction="maximize", sampler=_random())
        return study, sweep_trial(study, storage, _spec(study.study_name))

    return make


def _stock_variant(url_for: Callable[[str], str | None], name_for: Callable[[str], str]) -> Variant:
    def make(tag: str) -> tuple[optuna.Study, Trial]:
        study = optuna.create_study(
            storage=url_for(tag), study_name=name_for(tag), direction="maximize", sampler=_random()
        )
        return study, stock_trial(study)

    return make


def bench_memory(trials: int, big: int, log: Callable[[str], None]) -> dict[str, Any]:
    """In-memory storage: the floor (no database at all); sweep adds only its lock and budget count."""
    variants = {
        "sweep": _sweep_variant(lambda tag: optuna.storages.InMemoryStorage(), lambda tag: f"sweep-{tag}"),
        "stock": _stock_variant(lambda tag: None, lambda tag: f"stock-{tag}"),
    }
    return _measure(variants, trials=trials, big=big, log=log, label="memory")


def bench_sqlite(trials: int, big: int, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """A SQLite file each: sweep's open_storage and a plain sqlite:/// URL."""

    def url(kind: str) -> Callable[[str], str]:
        return lambda tag: f"sqlite:///{workdir / f'{kind}-{tag}.db'}"

    variants = {
        "sweep": _sweep_variant(lambda tag: open_storage(url("sweep")(tag), heartbeat=True), lambda tag: "sweep"),
        "stock": _stock_variant(url("stock"), lambda tag: "stock"),
    }
    return _measure(variants, trials=trials, big=big, log=log, label="sqlite")


def bench_postgresql(trials: int, big: int, url: str, run_id: str, log: Callable[[str], None]) -> dict[str, Any]:
    """One PostgreSQL worker: sweep's open_storage and the plain URL, studies side by side."""
    variants = {
        "sweep": _sweep_variant(lambda tag: open_storage(url, heartbeat=True), lambda tag: f"{run_id}-sweep-{tag}"),
        "stock": _stock_variant(lambda tag: _plain(url), lambda tag: f"{run_id}-stock-{tag}"),
    }
    return _measure(variants, trials=trials, big=big, log=log, label="postgresql")


def _plain(url: str) -> str:
    """The URL a stock Optuna user would pass (psycopg 3 named explicitly, nothing else)."""
    from sweep.storage import validate_url

    return validate_url(url)


def _concurrent_worker(kind: str, url: str, name: str, n: int, barrier: Any, queue: Any) -> None:
    """One of the concurrent workers (a forked process): n trials, per-trial ms back on the queue."""
    try:
        with _quiet():
            if kind == "stock":
                study = optuna.load_study(study_name=name, storage=url, sampler=_random())
                one = stock_trial(study)
            else:
                storage = open_storage(url, heartbeat=True)
                study = optuna.load_study(study_name=name, storage=storage, sampler=_random())
                one = sweep_trial(study, storage, _spec(name))
            one()  # connect, warm the trial cache
            barrier.wait(timeout=300)
            start = time.time()
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                one()
                times.append((time.perf_counter() - t0) * 1000)
            queue.put({"times": times, "start": start, "end": time.time()})
    except BaseException as exc:  # noqa: B036 - the parent reports it
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _concurrent(kind: str, url: str, name: str, workers: int, per_worker: int) -> dict[str, float]:
    import gc

    gc.collect()  # no engine of this process gets finalised inside a child
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    procs = [
        ctx.Process(target=_concurrent_worker, args=(kind, url, name, per_worker, barrier, queue))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=1800) for _ in procs]
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"{kind} worker failed: {mask_url(errors[0])}")
    means = [statistics.fmean(r["times"]) for r in results]
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"ms": statistics.median(means), "throughput": workers * per_worker / span}


def bench_postgresql_workers(
    trials: int, url: str, run_id: str, log: Callable[[str], None], workers: int = 8
) -> dict[str, Any]:
    """``workers`` processes on one study each (own connection pools): per-trial latency and throughput."""
    per_worker = max(5, trials // workers)
    kinds = ("sweep", "stock")
    names = {kind: f"{run_id}-{kind}-{workers}w" for kind in kinds}
    for kind, name in names.items():
        storage: Any = _plain(url) if kind == "stock" else open_storage(url)
        prefill(optuna.create_study(storage=storage, study_name=name, direction="maximize"), SMALL, seed=3)
    res = {}
    for kind in kinds:
        log(f"postgresql: {workers} {kind} worker processes × {per_worker} trials")
        res[kind] = _concurrent(kind, _plain(url) if kind == "stock" else url, names[kind], workers, per_worker)
    stock = res["stock"]["ms"]
    return {
        "workers": workers,
        "ms_per_trial": round(res["sweep"]["ms"], 3),
        "stock_ms_per_trial": round(stock, 3),
        "ratio_vs_stock": round(res["sweep"]["ms"] / stock, 3),
        "trials_per_s": round(res["sweep"]["throughput"], 2),
        "stock_trials_per_s": round(res["stock"]["throughput"], 2),
    }


@contextlib.contextmanager
def postgres_url(pg_url: str | None, log: Callable[[str], None]) -> Iterator[str]:
    """``pg_url``, else a throwaway cluster from scripts/pg-test-cluster (durable settings), stopped after."""
    if pg_url:
        yield pg_url
        return
    env = {k: v for k, v in os.environ.items() if k != "PG_TEST_OPTS"}  # measure a durable server
    log("postgresql: starting a throwaway cluster (scripts/pg-test-cluster)")
    with started(script("pg-test-cluster"), [], env) as url:
        yield url


def _drop_studies(url: str, prefix: str) -> None:
    storage = open_storage(url)
    for s in storage.get_all_studies():
        if s.study_name.startswith(prefix):
            with contextlib.suppress(Exception):
                optuna.delete_study(study_name=s.study_name, storage=storage)


# --------------------------------------------------------------------------- entry point


def run_storage_bench(
    *,
    trials: int = 200,
    big: int = 5000,
    pg_url: str | None = None,
    json_path: Path | None = None,
    console: Any = None,
    backends: tuple[str, ...] = BACKENDS,
) -> dict[str, Any]:
    """Measure every backend against stock Optuna; print a table, optionally write JSON; return the figures."""
    from rich.console import Console

    console = console or Console()

    def log(text: str) -> None:
        console.print(f"[dim]{text}[/]", highlight=False)

    result = _header(trials, big)
    started = time.perf_counter()
    result |= _measure_backends(backends, trials=trials, big=big, pg_url=pg_url, log=log)
    result["seconds"] = round(time.perf_counter() - started, 1)
    _print_results(result, big, console)
    write_json(result, json_path)
    return result


def _header(trials: int, big: int) -> dict[str, Any]:
    return {
        "trials": trials,
        "big": big,
        "trials_in_study": SMALL,
        "work_per_trial": "ask + 4 suggests + 10 reports + 1 user attr + tell",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "optuna": optuna.__version__,
            "sqlalchemy": sqlalchemy.__version__,
            "loadavg_1m": round(os.getloadavg()[0], 2),
        },
    }


def _measure_backends(
    backends: tuple[str, ...], *, trials: int, big: int, pg_url: str | None, log: Callable[[str], None]
) -> dict[str, Any]:
    """The figures of each backend in ``backends``, in the order of BACKENDS."""
    result: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="sweep-bench-storage-"))
    run_id = f"bench{os.getpid()}x{int(time.time())}"
    try:
        with _quiet():
            if "memory" in backends:
                result["memory"] = bench_memory(trials, big, log)
            if "sqlite" in backends:
                result["sqlite"] = bench_sqlite(trials, big, workdir, log)
            if "postgresql" in backends or "postgresql_8_workers" in backends:
                result |= _measure_postgresql(backends, trials=trials, big=big, pg_url=pg_url, run_id=run_id, log=log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _measure_postgresql(
    backends: tuple[str, ...], *, trials: int, big: int, pg_url: str | None, run_id: str, log: Callable[[str], None]
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with postgres_url(pg_url, log) as url:
        result["postgresql_server"] = mask_url(url)
        try:
            if "postgresql" in backends:
                result["postgresql"] = bench_postgresql(trials, big, url, run_id, log)
            if "postgresql_8_workers" in backends:
                result["postgresql_8_workers"] = bench_postgresql_workers(trials, url, run_id, log)
        finally:
            if pg_url:  # someone else's database: leave nothing behind
                _drop_studies(url, run_id)
    return result


def _print_results(result: dict[str, Any], big: int, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"storage: ms per trial of orchestration ({result['work_per_trial']})")
    columns = {
        "sweep": "ms_per_trial",
        "stock Optuna": "stock_ms_per_trial",
        "ratio": "ratio_vs_stock",
        f"sweep @{big}": f"ms_per_trial_at_{big}",
        f"stock @{big}": f"stock_ms_per_trial_at_{big}",
        f"TPE ask @{big}": f"tpe_ask_ms_at_{big}",
        f"stock TPE @{big}": f"stock_tpe_ask_ms_at_{big}",
    }
    table.add_column("backend")
    for col in columns:
        table.add_column(col, justify="right")
    for name in BACKENDS:
        row = result.get(name)
        if row is not None:
            table.add_row(name, *_cells(row, list(columns.values())))
    console.print(table)
    if "postgresql_8_workers" in result:
        r = result["postgresql_8_workers"]
        console.print(
            f"postgresql, {r['workers']} workers: {r['trials_per_s']} trials/s (stock {r['stock_trials_per_s']})",
            highlight=False,
        )
    console.print(f"load average {result['machine']['loadavg_1m']} on {result['machine']['cpus']} CPUs", style="dim")


def _cells(row: dict[str, Any], keys: list[str]) -> list[str]:
    return ["-" if row.get(k) is None else f"{row[k]:.2f}" if "ratio" in k else f"{row[k]:.1f}" for k in keys]
