"""Load simulation: hundreds of workers on one PostgreSQL, directly and behind PgBouncer, against stock Optuna.

    sweep bench scale [--workers 16,64,256] [--pgbouncer/--no-pgbouncer] [--stock/--no-stock]
                      [--sizes 1000,10000,100000] [--pg-url URL] [--json out.json]

A simulated worker is the worker's real loop with training replaced by sleeps: its own storage
(``open_storage(heartbeat=True)``, so its own connection pool, as a worker process has), the real
budget gate under the real budget lock, the spec's real TPE sampler and median pruner (4 suggests),
a heartbeat thread, one report per epoch with a prune check, tell. A trial's length is drawn from a
log-normal distribution (median ``trial_s``, a one-minute trial scaled down) and split into 10
epochs; the heartbeat interval keeps its real ratio to it (1 s against a 2 s median: 10 s against a
minute, rounded up). Workers are threads spread over processes, so that hundreds fit on a small
machine; their Python work shares each process's GIL, so ask and tell latencies include that wait
(an upper bound for real workers, one process each).

Per run: the connections the server sees (``pg_stat_activity`` for the study's database, sampled
every 0.1 s), trials/s, ask latency (budget lock + gate + ask + the 4 suggests) and tell latency p50/
p99, errors (must be 0), whether the budget was met exactly, the server's CPU seconds per trial (the
``postgres`` processes' /proc times, children reaped by the postmaster included) and its WAL bytes per
trial (``pg_current_wal_lsn`` delta). The study-size axis times the first ask of a fresh worker and
its steady asks on studies pre-filled with 1,000 / 10,000 / 100,000 finished trials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing
import os
import platform
import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from sweep import record
from sweep.heartbeat import beating
from sweep.search import build_pruner, build_sampler
from sweep.service import BudgetGate, Decision, quiet_optuna
from sweep.spec import StudySpec, parse_spec
from sweep.storage import PGBOUNCER_OPTION, mask_url, open_storage
from sweep_bench import script, started, write_json
from sweep_bench.synthetic import DISTRIBUTIONS, suggest

EPOCHS = 10
HEARTBEAT_S = 1
GRACE_S = 60
# Stock Optuna's first ask reads every trial through its ORM: minutes past this many on a small machine.
STOCK_SIZE_CAP = 10_000  # no simulated worker dies: a stale check must never fire on a loaded machine


def _spec(name: str, n_trials: int) -> StudySpec:
    return parse_spec({"name": name, "n_trials": n_trials, "epochs": EPOCHS})


def _libpq(url: str) -> str:
    parsed = make_url(url).difference_update_query([PGBOUNCER_OPTION])  # sweep's option, not libpq's
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def _plain(url: str) -> str:
    """The URL as a stock Optuna user writes it (psycopg 3, no sweep settings)."""
    parsed = make_url(url).difference_update_query([PGBOUNCER_OPTION])
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(math.ceil(q * len(xs))) - 1)]


# --------------------------------------------------------------------------- one simulated worker


@dataclasses.dataclass
class _Tally:
    ask_ms: list[float] = dataclasses.field(default_factory=list)
    tell_ms: list[float] = dataclasses.field(default_factory=list)
    trials: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)


def _open(kind: str, url: str) -> Any:
    if kind == "sweep":
        return open_storage(url, heartbeat=True, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    return optuna.storages.RDBStorage(_plain(url), heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)


def _worker(kind: str, url: str, name: str, seed: int, trial_s: float, start: float, tally: _Tally) -> None:
    """One simulated worker: run_worker's loop with sleeps for training."""
    rng = random.Random(seed)
    try:
        storage = _open(kind, url)
        budget = int(storage.get_study_user_attrs(storage.get_study_id_from_name(name))[record.BUDGET.name])
        spec = _spec(name, budget)
        study = optuna.load_study(
            study_name=name, storage=storage, sampler=build_sampler(spec), pruner=build_pruner(spec)
        )
        study.sampler.reseed_rng()
        gate = BudgetGate(study, spec)
    except Exception as exc:  # a worker that cannot even start (too many clients) is the figure
        tally.errors.append(f"start: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        return
    time.sleep(max(0.0, start - time.time()))  # every worker starts together
    while len(tally.errors) < 20:
        trial = None
        try:
            t0 = time.perf_counter()
            decision, trial = gate.take()
            if decision == Decision.DONE:
                break
            if decision != Decision.RUN or trial is None:
                time.sleep(0.2)
                continue
            params = suggest(trial)
            lr, aug = params["lr"], params["aug_strength"]
            tally.ask_ms.append((time.perf_counter() - t0) * 1e3)
            quality = 0.9 - 0.1 * abs(math.log10(lr) + 3) + 0.05 * aug + rng.gauss(0, 0.02)
            epoch_s = rng.lognormvariate(math.log(trial_s), 0.5) / EPOCHS
            pruned = False
            with beating(storage, trial._trial_id, beaten=True):
                for epoch in range(1, EPOCHS + 1):
                    time.sleep(epoch_s)
                    trial.report(quality * (1 - 0.5**epoch), epoch)
                    if trial.should_prune():
                        pruned = True
                        break
            t1 = time.perf_counter()
            if pruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, quality)
            tally.tell_ms.append((time.perf_counter() - t1) * 1e3)
            tally.trials += 1
        except Exception as exc:
            tally.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
            if trial is not None:  # as the worker's trial runner: every ending is told
                with contextlib.suppress(Exception):
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
            time.sleep(0.1)
    with contextlib.suppress(Exception):
        storage.engine.dispose()


def _process(kind: str, url: str, name: str, seeds: list[int], trial_s: float, start: float, queue: Any) -> None:
    quiet_optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tallies = [_Tally() for _ in seeds]
    threads = [
        threading.Thread(target=_worker, args=(kind, url, name, s, trial_s, start, t), daemon=True)
        for s, t in zip(seeds, tallies, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put([dataclasses.asdict(t) for t in tallies])


# --------------------------------------------------------------------------- the server's side


def _server_cpu_s(postmaster: int) -> float:
    """CPU seconds of one PostgreSQL server (its postmaster and every backend), exited backends included:
    the postmaster reaps them, so their time is in its children's times."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(pid) == postmaster:
            total += sum(int(f) for f in fields[11:15])  # its own time and its reaped children's
        elif int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / tick


class _Watch:
    """Samples the connections the server holds to one database while a run goes on."""

    def __init__(self, admin_url: str, database: str) -> None:
        # On another database than the study's: the watcher's own connection is not counted.
        self.admin = psycopg.connect(_on(admin_url, "postgres"), autocommit=True)
        self.database = database
        row = self.admin.execute("SELECT pg_backend_pid()").fetchone()
        with open(f"/proc/{row[0] if row else 0}/stat") as fh:  # the server runs on this machine
            self.postmaster = int(fh.read().rsplit(")", 1)[1].split()[1])
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def count(self) -> int:
        row = self.admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.database,)
        ).fetchone()
        return int(row[0]) if row else 0

    def wal(self) -> int:
        row = self.admin.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
        return int(row[0]) if row else 0

    def _loop(self) -> None:
        while not self.done.wait(0.1):
            self.samples.append((time.time(), self.count()))

    def during(self, start: float, end: float) -> list[int]:
        return [n for t, n in self.samples if start <= t <= end]

    def __enter__(self) -> _Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


# --------------------------------------------------------------------------- one run


def run_once(
    kind: str, route: str, url: str, admin_url: str, n: int, *, trials_per_worker: int, trial_s: float, procs: int
) -> dict[str, Any]:
    """N simulated workers of ``kind`` (sweep / stock) on a fresh study; ``url`` is direct or PgBouncer."""
    name = f"scale-{kind}-{n}-{uuid.uuid4().hex[:6]}"
    # A database of its own: pg_stat_activity then counts this run's connections only (PgBouncer keeps
    # its idle server connections to a database it served for minutes). Needs CREATEDB.
    database = f"sweep_{name.replace('-', '_')}"
    with psycopg.connect(_on(admin_url, "postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        return _run_once(
            kind,
            route,
            make_url(url).set(database=database).render_as_string(hide_password=False),
            admin_url,
            n,
            name,
            trials_per_worker=trials_per_worker,
            trial_s=trial_s,
            procs=procs,
        )
    finally:
        with psycopg.connect(_on(admin_url, "postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def _on(url: str, database: str) -> str:
    return make_url(url).set(drivername="postgresql", database=database).render_as_string(hide_password=False)


def _run_once(
    kind: str,
    route: str,
    url: str,
    admin_url: str,
    n: int,
    name: str,
    *,
    trials_per_worker: int,
    trial_s: float,
    procs: int,
) -> dict[str, Any]:
    budget = n * trials_per_worker
    setup = open_storage(url)
    study = optuna.create_study(storage=setup, study_name=name, direction="maximize")
    study.set_user_attr(record.BUDGET.name, budget)
    setup.close()
    database = str(make_url(url).database)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    per = [list(range(i, n, procs)) for i in range(min(procs, n))]
    start = time.time() + 3.0 + 0.05 * n  # time for every worker to open its storage
    with _Watch(admin_url, database) as watch:
        wal0, cpu0 = watch.wal(), _server_cpu_s(watch.postmaster)
        ps = [ctx.Process(target=_process, args=(kind, url, name, seeds, trial_s, start, queue)) for seeds in per]
        for p in ps:
            p.start()
        tallies = [t for _ in ps for t in queue.get()]
        for p in ps:
            p.join()
        wall = time.time() - start
        wal1, cpu1 = watch.wal(), _server_cpu_s(watch.postmaster)
        timed = watch.during(start, start + wall)
    ask = [x for t in tallies for x in t["ask_ms"]]
    tell = [x for t in tallies for x in t["tell_ms"]]
    done = sum(t["trials"] for t in tallies)
    errors = [e for t in tallies for e in t["errors"]]
    check = open_storage(url)
    final = optuna.load_study(study_name=name, storage=check).get_trials(deepcopy=False)
    check.close()
    finished = sum(1 for t in final if t.state.is_finished())
    watch.admin.close()
    return {
        "kind": kind,
        "route": route,
        "workers": n,
        "processes": len(per),
        "budget": budget,
        "trials_done": done,
        "budget_exact": len(final) == budget and finished == budget,
        "wall_s": round(wall, 2),
        "trials_per_s": round(done / wall, 2) if wall > 0 else 0.0,
        "demand_trials_per_s": round(n / trial_s, 1),
        "ask_ms_p50": round(_pct(ask, 0.5), 1),
        "ask_ms_p99": round(_pct(ask, 0.99), 1),
        "tell_ms_p50": round(_pct(tell, 0.5), 1),
        "tell_ms_p99": round(_pct(tell, 0.99), 1),
        "errors": len(errors),
        "error_kinds": sorted({e.rsplit(": ", 1)[-1][:160] if "cannot reach" in e else e[:160] for e in errors})[:5],
        # From the moment every worker has opened its storage (and may start) to the last tell.
        "server_connections_max": max(timed, default=0),
        "server_connections_median": statistics.median(timed) if timed else 0,
        "server_cpu_ms_per_trial": round((cpu1 - cpu0) * 1e3 / done, 2) if done else None,
        "wal_bytes_per_trial": round((wal1 - wal0) / done) if done else None,
    }


# --------------------------------------------------------------------------- the study-size axis


_FILL = """
WITH t AS (
  INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete)
  SELECT g, %(study)s, CASE WHEN g %% 10 < 3 THEN 'PRUNED' ELSE 'COMPLETE' END::trialstate,
         now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'
  FROM generate_series(0, %(n)s - 1) g RETURNING trial_id, number, state
), p AS (
  INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json)
  SELECT t.trial_id, d.name, CASE d.name WHEN 'lr' THEN -5 + 4 * random() WHEN 'batch_size' THEN floor(4 * random())
         WHEN 'frozen_layers' THEN floor(6 * random()) ELSE random() END, d.json
  FROM t CROSS JOIN (VALUES %(dists)s) AS d(name, json) RETURNING 1
), v AS (
  INSERT INTO trial_values (trial_id, objective, value, value_type)
  SELECT trial_id, 0, 0.5 + 0.4 * random(), 'FINITE'::trialvaluetype
  FROM t WHERE state = 'COMPLETE'::trialstate RETURNING 1
)
INSERT INTO trial_intermediate_values (trial_id, step, intermediate_value, intermediate_value_type)
SELECT t.trial_id, s, 0.5 + 0.04 * s * random(), 'FINITE'::trialintermediatevaluetype
FROM t CROSS JOIN generate_series(1, 10) s WHERE t.state = 'COMPLETE'::trialstate OR s <= 1 + t.number %% 9
"""


def _prefill_sql(libpq: str, study_id: int, n: int) -> None:
    """``n`` finished trials (30 % pruned) with params, values and reports, inserted by the server."""
    with psycopg.connect(libpq, autocommit=True) as conn:
        values = ", ".join(
            f"({sql.Literal(k).as_string(conn)}, "
            f"{sql.Literal(optuna.distributions.distribution_to_json(d)).as_string(conn)})"
            for k, d in DISTRIBUTIONS.items()
        )
        # lr is stored in its internal (log-free) representation: Optuna stores the raw float.
        conn.execute(_FILL.replace("%(dists)s", values), {"study": study_id, "n": n})  # type: ignore[arg-type]
        conn.execute(
            "UPDATE trial_params SET param_value = power(10, param_value) WHERE param_name = 'lr' AND param_value < 0"
        )


def _ask_times(kind: str, url: str, name: str, steady: int) -> dict[str, float]:
    """A fresh worker's first ask (open + load + gate + ask + 4 suggests) and its next ``steady`` asks."""
    times = []
    t0 = time.perf_counter()
    storage = _open(kind, url)
    spec = _spec(name, 10_000_000)
    study = optuna.load_study(study_name=name, storage=storage, sampler=build_sampler(spec), pruner=build_pruner(spec))
    gate = BudgetGate(study, spec)
    for i in range(steady + 1):
        if i:
            t0 = time.perf_counter()
        _, trial = gate.take()
        assert trial is not None
        suggest(trial)
        times.append((time.perf_counter() - t0) * 1e3)
        study.tell(trial, 0.6)
    storage.engine.dispose()
    return {"first_ask_ms": round(times[0], 1), "steady_ask_ms": round(statistics.median(times[1:]), 1)}


def study_size_axis(url: str, sizes: list[int], kinds: list[str], log: Callable[[str], None]) -> list[dict[str, Any]]:
    out = []
    for size in sizes:
        name = f"scale-size-{size}-{uuid.uuid4().hex[:6]}"
        setup = open_storage(url)
        study = optuna.create_study(storage=setup, study_name=name, direction="maximize")
        t0 = time.perf_counter()
        _prefill_sql(_libpq(url), study._study_id, size)
        setup.close()
        row: dict[str, Any] = {"finished_trials": size, "prefill_s": round(time.perf_counter() - t0, 1)}
        timed = [k for k in kinds if k == "sweep" or size <= STOCK_SIZE_CAP]
        for kind in timed:
            row[kind] = _ask_times(kind, url, name, steady=5)
        log(
            f"  {size:>7} trials: "
            + "  ".join(
                f"{k} first {row[k]['first_ask_ms']:.0f} ms, steady {row[k]['steady_ask_ms']:.0f} ms" for k in timed
            )
        )
        out.append(row)
    return out


# --------------------------------------------------------------------------- entry point


def _load() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def run_scale_bench(
    *,
    workers: list[int],
    sizes: list[int],
    pg_url: str | None = None,
    pgbouncer: bool = True,
    stock: bool = True,
    stock_max: int = 64,
    trial_s: float = 2.0,
    trials_per_worker: int = 3,
    procs: int = 8,
    json_path: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Simulated workers on PostgreSQL, direct and through PgBouncer, sweep against stock Optuna; the figures."""
    quiet_optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    result: dict[str, Any] = {
        "command": _command(
            workers,
            sizes,
            pgbouncer=pgbouncer,
            stock=stock,
            stock_max=stock_max,
            trial_s=trial_s,
            trials_per_worker=trials_per_worker,
            procs=procs,
        ),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": _load(),
        "runs": [],
    }
    # Direct connections to the server: room for every worker (stock Optuna keeps up to 15 each).
    env = {**os.environ, "PG_TEST_OPTS": f"-c max_connections={max(200, 3 * max(workers) + 50)}"}
    with contextlib.ExitStack() as stack:
        url = pg_url or stack.enter_context(started(script("pg-test-cluster"), [], env))
        admin = _libpq(url)
        log(f"postgresql: {mask_url(url)}")
        routes = {"direct": url}
        if pgbouncer:
            routes["pgbouncer"] = stack.enter_context(started(script("pgbouncer-test"), [url]))
        kinds = ["sweep", "stock"] if stock else ["sweep"]
        result["runs"] = _worker_axis(
            routes,
            admin,
            workers,
            kinds,
            stock_max=stock_max,
            trial_s=trial_s,
            trials_per_worker=trials_per_worker,
            procs=procs,
            log=log,
        )
        if sizes:
            log("study size (direct):")
            result["study_size"] = study_size_axis(url, sizes, kinds, log)
    result["load_after"] = _load()
    if json_path:
        write_json(result, json_path)
    return result


def _command(
    workers: list[int],
    sizes: list[int],
    *,
    pgbouncer: bool,
    stock: bool,
    stock_max: int,
    trial_s: float,
    trials_per_worker: int,
    procs: int,
) -> str:
    """The command line that reruns this bench."""
    return "sweep bench scale " + " ".join(
        [
            f"--workers {','.join(map(str, workers))}",
            f"--sizes {','.join(map(str, sizes)) or '0'}",
            f"--trial-s {trial_s}",
            f"--stock-max {stock_max}",
            f"--trials-per-worker {trials_per_worker}",
            f"--procs {procs}",
        ]
        + ([] if pgbouncer else ["--no-pgbouncer"])
        + ([] if stock else ["--no-stock"])
    )


def _worker_axis(
    routes: dict[str, str],
    admin: str,
    workers: list[int],
    kinds: list[str],
    *,
    stock_max: int,
    trial_s: float,
    trials_per_worker: int,
    procs: int,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """One run per worker count, route and kind (stock only up to ``stock_max`` workers), logged as it ends."""
    runs = []
    for n in workers:
        for route, route_url in routes.items():
            for kind in [k for k in kinds if k == "sweep" or n <= stock_max]:
                run = run_once(
                    kind, route, route_url, admin, n, trials_per_worker=trials_per_worker, trial_s=trial_s, procs=procs
                )
                run["load_after"] = _load()
                runs.append(run)
                log(_run_line(n, route, kind, run))
    return runs


def _run_line(n: int, route: str, kind: str, run: dict[str, Any]) -> str:
    return (
        f"  N={n:>4} {route:9} {kind:5}: {run['trials_per_s']:6.1f} trials/s "
        f"(demand {run['demand_trials_per_s']}), "
        f"ask p50/p99 {run['ask_ms_p50']}/{run['ask_ms_p99']} ms, "
        f"tell {run['tell_ms_p50']}/{run['tell_ms_p99']} ms, "
        f"conns max/median {run['server_connections_max']}/{run['server_connections_median']}, "
        f"errors {run['errors']}, budget {'exact' if run['budget_exact'] else 'MISSED'}, "
        f"server {run['server_cpu_ms_per_trial']} ms CPU and {run['wal_bytes_per_trial']} B WAL/trial"
        + (f"  {run['error_kinds'][:2]}" if run["errors"] else "")
    )
