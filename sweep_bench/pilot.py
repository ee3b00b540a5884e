"""Pilot of anytime-valid rung values (issue 22, item 1): part of the fine-tune table retrained under wsd.

    python benchmarks/pilot_wsd.py run [--schedule wsd|schedulefree] [--threads 1]
    python benchmarks/pilot_wsd.py analyse [--db benchmarks/tables/table-pilot-wsd.db] [--json out.json]

The fine-tune table (``studies/table-finetune.toml``, committed as ``benchmarks/tables/table-finetune.db``)
trained 96 configs for 8 epochs under the cosine schedule, whose early epochs rank configs badly. The
pilot retrains ~24 of them with the same data, backbone, seed and everything else, under
warmup-stable-decay, and records after every epoch each candidate for a rung value at once: the trunk's
own validation accuracy, that of an EMA of its weights, and that of a short cooldown branch
(``sweep.train.fit``). :func:`analyse` then asks which candidate ranks the configs early as they finish.

Results go into a plain SQLite file (rollback journal, no WAL: the file alone is the whole database, so
it can be copied and committed while the run goes on), one row per config and per epoch, written as
each epoch ends. Every epoch is checkpointed beside it; a rerun skips finished configs and resumes the
unfinished one. SIGTERM or Ctrl-C stops after the current epoch; a second signal stops at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import random
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep import record
from sweep.spec import StudySpec
from sweep_bench.sweep import Table, spearman

TABLE_URL = "sqlite:///benchmarks/tables/table-finetune.db"
TABLE_STUDY = "table-finetune"
DEFAULT_DB = Path("benchmarks/tables/table-pilot-wsd.db")  # table-pilot-schedulefree.db for schedule-free
# The candidates' settings: decay over the last fifth of the run (1.6 of 8 epochs), a cooldown branch
# of a quarter epoch after each epoch but the last, an EMA with a half-life of half an epoch (short
# enough to follow the trunk after one epoch, long enough to average the stable phase's noise).
PILOT_TRAIN: dict[str, Any] = {
    "schedule": "wsd",
    "decay_fraction": 0.2,
    "cooldown_epochs": 0.25,
    "ema_halflife": 0.5,
    "rung_value": "trunk",
}
# Schedule-free AdamW needs runs of its own (issue 22, c): its trunk is the evaluated average x; the
# same EMA beside it; no cooldown (nothing to decay). decay_fraction is unused, kept at its default.
PILOT_TRAIN_SCHEDULE_FREE: dict[str, Any] = PILOT_TRAIN | {"schedule": "schedulefree", "cooldown_epochs": 0.0}
PILOT_TRAINS = {"wsd": PILOT_TRAIN, "schedulefree": PILOT_TRAIN_SCHEDULE_FREE}
VARIANTS = ("trunk", "ema", "cooldown", "cosine")  # cosine: the fine-tune table's own curve


@dataclass(frozen=True)
class PilotConfig:
    """One config of the pilot, with the fine-tune table's cosine run of it for comparison."""

    index: int  # the order it is trained in
    group: str  # "winner" (within the table's noise floor), "slow" (slow starter), "spread" (the rest)
    params: dict[str, Any]
    seed: int  # the table trial's training seed: the same init and data order as its cosine run
    cosine_curve: tuple[float, ...]
    cosine_test: float | None


# --------------------------------------------------------------------------- choosing the configs


def table_seeds(study: Any, table: Table) -> dict[tuple[Any, ...], int]:
    """The training seed of each table row's trial (the newest finished trial, as ``table_from_study``)."""
    from optuna.trial import TrialState

    seeds: dict[tuple[Any, ...], int] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if all(name in t.params for name in table.grid) and (seed := record.seed(t)) is not None:
            seeds[table.key(t.params)] = seed
    return seeds


def pilot_configs(
    table: Table, seeds: Mapping[tuple[Any, ...], int], *, n_slow: int = 7, n_spread: int = 10
) -> list[PilotConfig]:
    """The pilot's configs from the table: every config within its noise floor of the best (the targets),
    the ``n_slow`` worst starters at the table's highest lr with at most two frozen units (they finish
    well and start worst, so early rungs cut them), and ``n_spread`` more evenly spaced over the
    remaining final ranking (down to the linear probes). Interleaved, so that a partial run has some of
    each group."""
    rows = [(k, r) for k, r in table.rows.items() if len(r.curve) == table.epochs and not r.diverged]
    rows.sort(key=lambda kr: -kr[1].curve[-1])
    best = rows[0][1].curve[-1]
    floor = table.noise_floor() or 0.0
    winners = [kr for kr in rows if kr[1].curve[-1] >= best - floor]
    top_lr = max(table.grid["lr"])
    slow_pool = [
        kr for kr in rows if kr not in winners and kr[1].params["lr"] == top_lr and kr[1].params["frozen_layers"] <= 2
    ]
    slow = sorted(slow_pool, key=lambda kr: kr[1].curve[0])[:n_slow]
    rest = [kr for kr in rows if kr not in winners and kr not in slow]
    picks = sorted({round(i * (len(rest) - 1) / max(1, n_spread - 1)) for i in range(min(n_spread, len(rest)))})
    spread = [rest[i] for i in picks]
    groups = [("winner", winners), ("slow", slow), ("spread", spread)]
    order: list[tuple[str, tuple[Any, ...], Any]] = []
    for i in range(max(len(g) for _, g in groups)):
        for name, g in groups:
            if i < len(g):
                order.append((name, *g[i]))
    return [
        PilotConfig(
            index=i,
            group=name,
            params=dict(row.params),
            seed=seeds[key],
            cosine_curve=row.curve,
            cosine_test=row.test_accuracy,
        )
        for i, (name, key, row) in enumerate(order)
    ]


# --------------------------------------------------------------------------- the database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS configs (
    idx INTEGER PRIMARY KEY, grp TEXT NOT NULL, params TEXT NOT NULL, seed INTEGER NOT NULL,
    cosine_curve TEXT NOT NULL, cosine_test REAL,
    test_accuracy REAL, precision TEXT, host TEXT, finished_at TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    idx INTEGER NOT NULL, epoch INTEGER NOT NULL, train_loss REAL NOT NULL, val_accuracy REAL NOT NULL,
    trunk REAL, ema REAL, cooldown REAL, cooldown_steps INTEGER NOT NULL, cooldown_seconds REAL NOT NULL,
    seconds REAL NOT NULL, steps INTEGER NOT NULL, written_at TEXT NOT NULL,
    PRIMARY KEY (idx, epoch)
);
"""


def open_db(path: Path, configs: Sequence[PilotConfig], meta: Mapping[str, Any]) -> sqlite3.Connection:
    """The pilot database at ``path``: created with ``configs`` and ``meta``, or opened when it exists
    with the same meta (the configs it holds are kept: a rerun continues the same pilot)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=60)
    con.execute("PRAGMA journal_mode=DELETE")  # no -wal file: the .db alone is the database
    con.executescript(_SCHEMA)
    stored = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta")}
    if stored:
        differs = [k for k, v in meta.items() if k in _MUST_MATCH and stored.get(k) != json.loads(json.dumps(v))]
        if differs:
            con.close()
            raise ValueError(f"{path}: a pilot with other settings ({', '.join(differs)}); use another --db")
        return con
    with con:
        con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        con.executemany(
            "INSERT INTO configs (idx, grp, params, seed, cosine_curve, cosine_test) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (c.index, c.group, json.dumps(c.params), c.seed, json.dumps(list(c.cosine_curve)), c.cosine_test)
                for c in configs
            ],
        )
    return con


_MUST_MATCH = ("train", "epochs", "table", "data_fingerprint")


def stored_configs(con: sqlite3.Connection) -> list[tuple[PilotConfig, bool]]:
    """Every config of the pilot in training order, and whether it has finished."""
    out = []
    for idx, grp, params, seed, curve, test, finished in con.execute(
        "SELECT idx, grp, params, seed, cosine_curve, cosine_test, finished_at FROM configs ORDER BY idx"
    ):
        out.append(
            (PilotConfig(idx, grp, json.loads(params), seed, tuple(json.loads(curve)), test), finished is not None)
        )
    return out


def read_meta(con: sqlite3.Connection) -> dict[str, Any]:
    """The pilot's meta rows (settings, the table's best and noise floor, machine)."""
    return {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM meta")}


# --------------------------------------------------------------------------- running it


class Stop(Exception):
    """Raised at an epoch boundary after SIGTERM/SIGINT, once the epoch is written and checkpointed."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by the first SIGTERM/SIGINT; a second one raises KeyboardInterrupt at once."""
    event = threading.Event()

    def handle(signum: int, frame: Any) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield event
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def pilot_spec(
    table_spec: StudySpec,
    *,
    train: Mapping[str, Any] = PILOT_TRAIN,
    epochs: int | None = None,
    data_root: str | None = None,
) -> StudySpec:
    """The table's spec with the pilot's training settings ``train`` (and, for a smoke run, fewer epochs)."""
    spec = dataclasses.replace(table_spec, train=dataclasses.replace(table_spec.train, **train))
    if data_root is not None:
        spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, root=data_root))
    return spec if epochs is None else dataclasses.replace(spec, epochs=epochs)


def run_pilot(
    con: sqlite3.Connection,
    spec: StudySpec,
    data: Any,
    *,
    ckpt_dir: Path,
    stop: threading.Event | None = None,
    limit: int | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Train the pilot's unfinished configs in order (at most ``limit``), writing every epoch; the
    number finished now. Raises :class:`Stop` after the epoch in which ``stop`` was set."""
    import torch

    from sweep.atomic import torch_save_atomic
    from sweep.objective import train_config
    from sweep.train import EpochResult, fit, steps_per_epoch

    done = 0
    for cfg, finished in stored_configs(con):
        if finished:
            continue
        if limit is not None and done >= limit:
            break
        config = train_config(spec, spec.fixed_params() | cfg.params, num_classes=data.num_classes, seed=cfg.seed)
        ckpt = ckpt_dir / f"config{cfg.index}.pt"
        resume = torch.load(ckpt, map_location="cpu", weights_only=True) if ckpt.is_file() else None
        per_epoch = steps_per_epoch(len(data.train_y), config.batch_size)
        log(
            f"config {cfg.index} ({cfg.group}) {cfg.params} seed {cfg.seed}"
            + (f": resuming after epoch {resume['epoch']}" if resume else "")
        )

        def on_epoch(
            r: EpochResult,
            checkpoint: Callable[[], dict],
            cfg: PilotConfig = cfg,
            ckpt: Path = ckpt,
            per_epoch: int = per_epoch,
        ) -> None:
            with con:
                con.execute(
                    "INSERT OR REPLACE INTO epochs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        cfg.index,
                        r.epoch,
                        r.train_loss,
                        r.val_accuracy,
                        r.trunk_accuracy,
                        r.ema_accuracy,
                        r.cooldown_accuracy,
                        r.cooldown_steps,
                        r.cooldown_seconds,
                        r.seconds,
                        per_epoch,
                        _now(),
                    ),
                )
            log(
                f"  epoch {r.epoch}/{spec.epochs}: trunk {_pct(r.trunk_accuracy)} ema {_pct(r.ema_accuracy)} "
                f"cooldown {_pct(r.cooldown_accuracy)} (cosine {_pct(_at(cfg.cosine_curve, r.epoch))}); "
                f"{r.seconds:.0f} s, of which cooldown {r.cooldown_seconds:.0f} s"
            )
            if r.epoch < spec.epochs:
                torch_save_atomic(checkpoint(), ckpt)
            if stop is not None and stop.is_set() and r.epoch < spec.epochs:
                raise Stop(f"stopped after epoch {r.epoch} of config {cfg.index}")

        started = time.perf_counter()
        result = fit(config, data, "cpu", on_epoch=on_epoch, resume=resume)
        with con:
            con.execute(
                "UPDATE configs SET test_accuracy = ?, precision = ?, host = ?, finished_at = ? WHERE idx = ?",
                (result.test_accuracy, result.precision, socket.gethostname(), _now(), cfg.index),
            )
        ckpt.unlink(missing_ok=True)
        done += 1
        log(
            f"config {cfg.index} done in {time.perf_counter() - started:.0f} s: final {_pct(result.val_accuracy)} "
            f"(cosine {_pct(cfg.cosine_curve[-1])}), test {_pct(result.test_accuracy)}"
        )
        if stop is not None and stop.is_set():
            raise Stop(f"stopped after config {cfg.index}")
    return done


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _at(curve: Sequence[float], epoch: int) -> float | None:
    return curve[epoch - 1] if 0 < epoch <= len(curve) else None


# --------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class VariantFigures:
    """How well one rung-value candidate's early values rank the configs as they finish."""

    variant: str
    spearman: tuple[float, ...]  # per epoch 1..E-1: rank correlation with the final values
    top_recall: tuple[float, ...]  # per epoch: share of the top-k finals among the top-k at that epoch
    top_kept_by_half: tuple[float, ...]  # per epoch: share of the top-k finals in the upper half at that epoch
    spearman_ci: tuple[tuple[float, float], ...]  # per epoch: 90 % bootstrap interval over the configs


def curves(con: sqlite3.Connection) -> dict[int, dict[str, list[float | None]]]:
    """The finished configs' curves by variant (``trunk``, ``ema``, ``cooldown``, ``cosine``), one value
    per epoch (None where not measured: no cooldown after the last epoch)."""
    epochs = int(read_meta(con)["epochs"])
    out: dict[int, dict[str, list[float | None]]] = {}
    for cfg, finished in stored_configs(con):
        if not finished:
            continue
        rows = con.execute(
            "SELECT epoch, trunk, ema, cooldown FROM epochs WHERE idx = ? ORDER BY epoch", (cfg.index,)
        ).fetchall()
        if [r[0] for r in rows] != list(range(1, epochs + 1)):
            continue
        out[cfg.index] = {
            "trunk": [r[1] for r in rows],
            "ema": [r[2] for r in rows],
            "cooldown": [r[3] for r in rows],
            "cosine": list(cfg.cosine_curve[:epochs]),
        }
    return out


def variant_figures(
    values: Mapping[int, Sequence[float | None]], finals: Mapping[int, float], top_k: int, variant: str
) -> VariantFigures:
    """Rank figures of ``values`` (config -> per-epoch values) against ``finals`` (config -> final value)."""
    keys = sorted(finals)
    epochs = min(len(values[k]) for k in keys) if keys else 0
    top_final = set(sorted(keys, key=lambda k: -finals[k])[:top_k])
    nan = float("nan")
    rho, recall, kept, ci = [], [], [], []
    for e in range(epochs - 1):
        have = [k for k in keys if values[k][e] is not None]
        if len(have) < 3:
            rho.append(nan)
            recall.append(nan)
            kept.append(nan)
            ci.append((nan, nan))
            continue
        at_e = {k: float(values[k][e]) for k in have}  # type: ignore[arg-type]
        rho.append(round(spearman([at_e[k] for k in have], [finals[k] for k in have]), 4))
        ci.append(bootstrap_spearman([(at_e[k], finals[k]) for k in have]))
        ranked = sorted(have, key=lambda k: -at_e[k])
        recall.append(round(len(top_final & set(ranked[:top_k])) / top_k, 4))
        kept.append(round(len(top_final & set(ranked[: math.ceil(len(ranked) / 2)])) / top_k, 4))
    return VariantFigures(variant, tuple(rho), tuple(recall), tuple(kept), tuple(ci))


def bootstrap_spearman(
    pairs: Sequence[tuple[float, float]], *, rounds: int = 500, seed: int = 0
) -> tuple[float, float]:
    """A 90 % percentile-bootstrap interval of the Spearman correlation of ``pairs`` (configs resampled
    with replacement): with two dozen configs a single figure says little without its spread."""
    rng = random.Random(seed)
    n = len(pairs)
    draws = []
    for _ in range(rounds):
        sample = [pairs[rng.randrange(n)] for _ in range(n)]
        r = spearman([a for a, _ in sample], [b for _, b in sample])
        if not math.isnan(r):
            draws.append(r)
    if not draws:
        return (float("nan"), float("nan"))
    draws.sort()
    return (round(draws[int(0.05 * (len(draws) - 1))], 4), round(draws[int(0.95 * (len(draws) - 1))], 4))


def analyse(con: sqlite3.Connection, *, top_k: int | None = None) -> dict[str, Any]:
    """Per variant: Spearman of each epoch's values with the final ones, recall of the top configs at
    each epoch (top-k and kept by a halving rung), on the finished configs; and the best final accuracy
    under wsd against the cosine table's best minus its noise floor.

    The wsd variants are judged against the wsd run's final (trunk) accuracy, ``cosine`` against the
    table's own final accuracy: each asks whether early values predict where *that* schedule ends.
    """
    meta = read_meta(con)
    data = curves(con)
    n = len(data)
    k = top_k if top_k is not None else max(1, round(n / 4))
    out: dict[str, Any] = {
        "configs_finished": n,
        "configs_total": len(stored_configs(con)),
        "top_k": k,
        "epochs": meta["epochs"],
        "train": meta["train"],
    }
    # The baseline on every chosen config, finished under wsd or not (the table has all of them).
    chosen = {c.index: c.cosine_curve for c, _ in stored_configs(con)}
    if len(chosen) >= 3:
        k_all = top_k if top_k is not None else max(1, round(len(chosen) / 4))
        finals_all = {i: c[-1] for i, c in chosen.items()}
        out["cosine_all_chosen"] = dataclasses.asdict(variant_figures(chosen, finals_all, k_all, "cosine"))
    if n == 0:
        return out
    wsd_final = {i: float(c["trunk"][-1]) for i, c in data.items()}  # type: ignore[arg-type]
    cos_final = {i: float(c["cosine"][-1]) for i, c in data.items()}  # type: ignore[arg-type]
    figures = {}
    for v in VARIANTS:
        finals = cos_final if v == "cosine" else wsd_final
        figures[v] = dataclasses.asdict(variant_figures({i: c[v] for i, c in data.items()}, finals, k, v))
    out["variants"] = figures
    best_idx = max(wsd_final, key=lambda i: wsd_final[i])
    ema_final = {i: c["ema"][-1] for i, c in data.items() if c["ema"][-1] is not None}
    floor, table_best = float(meta["noise_floor"]), float(meta["table_best"])
    out["best"] = {
        "wsd_final": wsd_final[best_idx],
        "wsd_config": best_idx,
        "wsd_ema_final": max(ema_final.values()) if ema_final else None,
        "cosine_best_same_configs": max(cos_final.values()),
        "cosine_table_best": table_best,
        "noise_floor": floor,
        "wsd_within_noise_of_table_best": wsd_final[best_idx] >= table_best - floor,
    }
    out["final_spearman_wsd_vs_cosine"] = round(spearman([wsd_final[i] for i in data], [cos_final[i] for i in data]), 4)
    cost = con.execute(
        "SELECT SUM(cooldown_steps), SUM(steps), SUM(cooldown_seconds), SUM(seconds) FROM epochs"
    ).fetchone()
    if cost and cost[1]:
        out["cooldown_cost"] = {
            "steps_share": round(cost[0] / cost[1], 4),
            "seconds_share": round(cost[2] / cost[3], 4),
        }
    return out


def format_analysis(result: Mapping[str, Any]) -> str:
    """The analysis as a few plain-text table lines (markdown)."""
    lines = [f"{result['configs_finished']} of {result['configs_total']} configs finished; top-k = {result['top_k']}"]
    if not result.get("variants"):
        return "\n".join(lines)
    lines += [
        "",
        "| variant | Spearman e1 [90 % CI] | e2 [90 % CI] | e3 | top-k recall e1 | e2 | kept by half e1 | e2 |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def g(xs: Sequence[float], i: int) -> str:
        return f"{xs[i]:.2f}" if i < len(xs) and not math.isnan(xs[i]) else "-"

    def with_ci(f: Mapping[str, Any], i: int) -> str:
        lo, hi = f["spearman_ci"][i] if i < len(f["spearman_ci"]) else (float("nan"), float("nan"))
        return g(f["spearman"], i) + ("" if math.isnan(lo) else f" [{lo:.2f}, {hi:.2f}]")

    for v, f in result["variants"].items():
        s, r, h = f["spearman"], f["top_recall"], f["top_kept_by_half"]
        lines.append(
            f"| {v} | {with_ci(f, 0)} | {with_ci(f, 1)} | {g(s, 2)} | {g(r, 0)} | {g(r, 1)} | {g(h, 0)} | {g(h, 1)} |"
        )
    b = result["best"]
    lines += [
        "",
        f"best wsd final {_pct(b['wsd_final'])} % (config {b['wsd_config']}); EMA final best "
        f"{_pct(b['wsd_ema_final'])} %; cosine on the same configs {_pct(b['cosine_best_same_configs'])} %; "
        f"table best {_pct(b['cosine_table_best'])} % - noise floor {_pct(b['noise_floor'])} = "
        f"{_pct(b['cosine_table_best'] - b['noise_floor'])} %: "
        f"{'within' if b['wsd_within_noise_of_table_best'] else 'below'}",
        f"Spearman of wsd finals with cosine finals: {result['final_spearman_wsd_vs_cosine']:.2f}",
    ]
    if "cosine_all_chosen" in result:
        c = result["cosine_all_chosen"]
        lines.append(
            f"cosine on all {result['configs_total']} chosen configs: Spearman e1 {c['spearman'][0]:.2f}, "
            f"e2 {c['spearman'][1]:.2f}; top-k recall e1 {c['top_recall'][0]:.2f}, e2 {c['top_recall'][1]:.2f}"
        )
    if "cooldown_cost" in result:
        c = result["cooldown_cost"]
        lines.append(
            f"cooldown branch cost: {100 * c['steps_share']:.1f} % of the trunk's steps, "
            f"{100 * c['seconds_share']:.1f} % of the wall time"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- replaying the pilot


def pilot_table(con: sqlite3.Connection, base: Table, variant: str) -> Table:
    """The pilot's finished configs as a learning-curve table the replay can search (its rows a subset
    of ``base``'s grid): each epoch's ``variant`` value as the rung value, the trunk's at the last epoch
    (what ``train.rung_value = variant`` reports), the pilot's test accuracy; ``cosine`` gives the same
    configs' rows from the cosine table instead."""
    from sweep_bench.sweep import Row

    rows = {}
    tests = dict(con.execute("SELECT idx, test_accuracy FROM configs"))
    configs = {c.index: c for c, _ in stored_configs(con)}  # one read, not one per config
    for idx, curve in curves(con).items():
        cfg = configs[idx]
        key = base.key(cfg.params)
        if variant == "cosine":
            rows[key] = base.rows[key]
            continue
        values = curve[variant][:-1] + curve["trunk"][-1:]
        if any(v is None for v in values):
            raise ValueError(f"pilot config {idx} has no {variant!r} value at every epoch")
        rows[key] = Row(dict(cfg.params), tuple(float(v) for v in values), tests[idx])  # type: ignore[arg-type]
    if not rows:
        raise ValueError("the pilot has no finished config yet: run it first (benchmarks/pilot_wsd.py run)")
    spec = base.spec
    if variant != "cosine":  # the table says which schedule its curves come from (the replay's JSON)
        meta = read_meta(con)
        train = {**meta["train"], "rung_value": variant}
        if variant != "cooldown":
            # The pilot ran its cooldown branches beside the trunk, which they leave bit for bit as it
            # was: a study that reports the trunk or the EMA runs none and pays nothing for them.
            train["cooldown_epochs"] = 0.0
        spec = pilot_spec(spec, train=train, epochs=int(meta["epochs"]))
    return dataclasses.replace(base, name=f"pilot-{variant}", spec=spec, rows=rows)
