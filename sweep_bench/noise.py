"""Training-seed noise of a learning-curve table's rung values (issue 22): its configs retrained with other seeds.

A table holds one run per config, so its replay cannot say how much of an early rung value is the
config and how much the run's seed (weight init of the head, data order, augmentation draws). A
pruner that compares configs at epoch 1 needs that figure: a margin of the validation set's binomial
noise alone (the auto pruner's ``margin_se``) protects against the wrong noise if seeds move early
values by several points. This retrains a few of the table's configs, the best and a spread of the
rest, with other seeds for the first epochs of the same schedule (wsd's early values do not depend on
where training ends), and measures per epoch: the pooled standard deviation across seeds, and how
often a top config would fall below a rung's bar (the table's best third at that epoch).

Results are appended one run per line to a JSONL file as they finish, so a stopped run continues.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep_bench.sweep import Row, Table

# Far from every table trial's seed (study seed x 100,003 + trial number): a retrain never repeats one.
SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class NoiseConfig:
    """One config to retrain: ``group`` is "top" (a config a pruner must keep), "spread" or "slow"."""

    group: str
    row: Row

    @property
    def params(self) -> dict[str, Any]:
        return self.row.params


def noise_configs(table: Table, *, top: int, spread: int, slow: int = 0) -> list[NoiseConfig]:
    """The table's ``top`` best full-length configs, ``spread`` more evenly spaced over the rest of the
    ranking, and the ``slow`` worst starters (epoch 1) of the best quarter not yet chosen: the configs
    an early rung is likeliest to cut wrongly. Adding ``slow`` later keeps the first two groups."""
    rows = sorted(
        (r for r in table.rows.values() if len(r.curve) == table.epochs and not r.diverged),
        key=lambda r: -r.curve[-1],
    )
    best, rest = rows[:top], rows[top:]
    picks = sorted({round(i * (len(rest) - 1) / max(1, spread - 1)) for i in range(min(spread, len(rest)))})
    chosen = [NoiseConfig("top", r) for r in best] + [NoiseConfig("spread", rest[i]) for i in picks]
    taken = {id(c.row) for c in chosen}
    quarter = [r for r in rows[: max(1, math.ceil(len(rows) / 4))] if id(r) not in taken]
    starters = sorted(quarter, key=lambda r: r.curve[0])[:slow]
    return chosen + [NoiseConfig("slow", r) for r in starters]


def run_key(params: Mapping[str, Any], seed: int) -> str:
    return json.dumps({"params": dict(params), "seed": seed}, sort_keys=True)


def _records(path: Path) -> list[dict[str, Any]]:
    """The runs written to ``path``; a last line cut off by a crash mid-write is left out (rerun)."""
    records: list[dict[str, Any]] = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def load_runs(path: Path) -> dict[str, list[float]]:
    """Finished runs in ``path``: run_key → rung values of the epochs trained (fewer when it diverged)."""
    return {run_key(r["params"], r["seed"]): r["curve"] for r in _records(path)}


def stored_configs(table: Table, path: Path) -> list[NoiseConfig]:
    """The configs ``path`` has runs of, in the order first trained, with their table rows (the analysis
    reads these, not a new choice: the table may have grown since the runs were chosen)."""
    configs: dict[tuple[Any, ...], NoiseConfig] = {}
    for r in _records(path):
        key = table.key(r["params"])
        if key not in configs and key in table.rows:
            configs[key] = NoiseConfig(r["group"], table.rows[key])
    return list(configs.values())


class _Enough(Exception):
    """Raised from the epoch callback once the epochs wanted are trained."""


@dataclass(frozen=True)
class Retrain:
    curve: list[float]  # rung values of the epochs trained
    diverged: bool = False  # the loss became NaN/inf after ``len(curve)`` epochs


def retrain_curve(spec: Any, params: Mapping[str, Any], data: Any, device: str, *, seed: int, epochs: int) -> Retrain:
    """The rung values (what the pruner would see) of the first ``epochs`` epochs of the table's schedule,
    trained as ``sweep rerun`` trains a trial (``objective.retrain``: the spec's fixed params, the same
    TrainConfig), stopped by raising from its epoch callback."""
    from sweep.objective import retrain
    from sweep.train import Diverged

    curve: list[float] = []

    def on_epoch(epoch: int, total: int, accuracy: float) -> None:
        curve.append(float(accuracy))
        if len(curve) >= epochs:
            raise _Enough

    try:
        retrain(spec, {**spec.fixed_params(), **params}, data, device, seed=seed, on_epoch=on_epoch)
    except _Enough:
        pass
    except Diverged:  # another seed of a config at the edge of stability: a result, not an error
        return Retrain(curve, diverged=True)
    return Retrain(curve)


def run_noise(
    configs: Sequence[NoiseConfig],
    out: Path,
    train: Callable[[Mapping[str, Any], int], Retrain],
    *,
    seeds: int,
    table_seed: Callable[[Mapping[str, Any]], int],
    log: Callable[[str], None] = print,
) -> int:
    """Train every (config, seed) not yet in ``out``, appending each run (one JSON line, flushed
    whole); the number trained now.

    The retrains of a config use its table run's seed (``table_seed(params)``) plus multiples of
    SEED_STRIDE.
    """
    done = load_runs(out)
    trained = 0
    for i, c in enumerate(configs):
        base = table_seed(c.params)
        for s in range(1, seeds + 1):
            seed = base + s * SEED_STRIDE
            if run_key(c.params, seed) in done:
                continue
            run = train(c.params, seed)
            line = {"params": c.params, "seed": seed, "group": c.group, "curve": run.curve, "diverged": run.diverged}
            _append(out, json.dumps(line))
            trained += 1
            table = ", ".join(f"{v:.3f}" for v in c.row.curve[: len(run.curve)])
            end = ", diverged" if run.diverged else ""
            log(f"config {i} ({c.group}) seed {seed}: {', '.join(f'{v:.3f}' for v in run.curve)}{end} (table: {table})")
    return trained


def _append(path: Path, line: str) -> None:
    """One whole line at the end of ``path``, after a line a crash left unfinished (read as no run)."""
    torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with path.open("a") as f:
        f.write(("\n" if torn else "") + line + "\n")


def _bar(table: Table, epoch: int, reduction_factor: int) -> float:
    """The lowest value successive halving keeps at ``epoch`` once every row of the table has reached
    it, in any order: the best ``floor(n / reduction_factor)`` (at least one), as Optuna's does."""
    values = sorted((r.curve[epoch - 1] for r in table.rows.values() if len(r.curve) >= epoch), reverse=True)
    return values[max(1, len(values) // reduction_factor) - 1]


def _pooled_sd(groups: Sequence[Sequence[float]]) -> float | None:
    """Pooled within-group standard deviation: sum((n_i - 1) s_i^2) / sum(n_i - 1), groups of 2 or more."""
    groups = [g for g in groups if len(g) >= 2]
    dof = sum(len(g) - 1 for g in groups)
    if not dof:
        return None
    return math.sqrt(sum((len(g) - 1) * statistics.variance(g) for g in groups) / dof)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def analyse(
    table: Table, configs: Sequence[NoiseConfig], runs: Mapping[str, list[float]], *, reduction_factor: int = 3
) -> dict[str, Any]:
    """Per epoch: the seed standard deviation pooled over the configs, from the retrains alone and with
    the table's run as one more seed (the slow group was chosen for its low table value at epoch 1,
    which biases the latter there); the largest spread of one config's runs; successive halving's bar
    on the table at that epoch (see :func:`_bar`) and the auto pruner's (the bar less one binomial
    standard error at the bar on the table's validation images, its default ``margin_se``); and per
    group, how many runs fall below each bar: a top config's run below it is a winner a rung there cuts."""
    retrains: dict[int, list[list[float]]] = {
        i: [v for k, v in runs.items() if json.loads(k)["params"] == c.params] for i, c in enumerate(configs)
    }
    epochs = max((len(v) for vs in retrains.values() for v in vs), default=0)
    per_epoch = []
    for e in range(1, epochs + 1):
        own = [[v[e - 1] for v in retrains[i] if len(v) >= e] for i in range(len(configs))]
        both = [[c.row.curve[e - 1], *o] if len(c.row.curve) >= e else o for c, o in zip(configs, own, strict=True)]
        bar = _bar(table, e, reduction_factor)
        se = math.sqrt(bar * (1 - bar) / table.val_images) if table.val_images else 0.0
        below: dict[str, dict[str, int]] = {}
        for c, values in zip(configs, both, strict=True):
            g = below.setdefault(c.group, {"runs": 0, "below_bar": 0, "below_auto_bar": 0})
            g["runs"] += len(values)
            g["below_bar"] += sum(v < bar for v in values)
            g["below_auto_bar"] += sum(v < bar - se for v in values)
        per_epoch.append(
            {
                "epoch": e,
                "configs": sum(len(b) >= 2 for b in both),
                "runs": sum(len(b) for b in both),
                "seed_sd": _round(_pooled_sd(own)),
                "seed_sd_with_table": _round(_pooled_sd(both)),
                "max_spread": round(max((max(b) - min(b) for b in both if len(b) >= 2), default=0.0), 4),
                "bar": round(bar, 4),
                "binomial_se_at_bar": round(se, 4),
                "groups": below,
            }
        )
    return {
        "table": table.name,
        "table_configs": len(table.rows),
        "val_images": table.val_images,
        "reduction_factor": reduction_factor,
        "configs": [
            {"group": c.group, "params": c.params, "table_curve": list(c.row.curve), "retrains": retrains[i]}
            for i, c in enumerate(configs)
        ],
        "per_epoch": per_epoch,
    }


def _pts(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def format_analysis(result: Mapping[str, Any]) -> str:
    lines = [
        f"seed noise on {result['table']} ({result['table_configs']} configs, {result['val_images']} validation "
        f"images): {len(result['configs'])} configs retrained; SHA's bar keeps the table's best "
        f"1/{result['reduction_factor']}, auto's is 1 s.e. lower",
        "epoch  runs  seed sd  (with table)  max spread  bar   s.e.  below SHA's / auto's bar, per group",
    ]
    for r in result["per_epoch"]:
        groups = "  ".join(
            f"{name} {g['below_bar']}/{g['below_auto_bar']} of {g['runs']}" for name, g in r["groups"].items()
        )
        lines.append(
            f"{r['epoch']:>5}  {r['runs']:>4}  {_pts(r['seed_sd']):>7}  {_pts(r['seed_sd_with_table']):>12}"
            f"  {_pts(r['max_spread']):>10}  {100 * r['bar']:>4.1f}  {_pts(r['binomial_se_at_bar']):>4}  {groups}"
        )
    return "\n".join(lines)
