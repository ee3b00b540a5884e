"""Report benchmark: a synthetic many-trial study, timed through gather and render+write.

    sweep bench report [--n-trials 10000] [--json out.json] [--output report.html]

The study lives in memory and is built with ``optuna.trial.create_trial`` + ``study.add_trials``, with
realistic params, learning curves, user attrs and states (~30% pruned, a few failed, a few running).
``synthetic_study`` is reused by the report tests.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from sweep import report
from sweep_bench import write_json

EPOCHS = 12
DISTRIBUTIONS: dict[str, Any] = {
    "lr": FloatDistribution(1e-5, 1e-1, log=True),
    "batch_size": CategoricalDistribution([32, 64, 128, 256]),
    "frozen_layers": IntDistribution(0, 5),
    "aug_strength": FloatDistribution(0.0, 1.0),
}
FAIL_REASONS = ("oom", "diverged", "error")


def synthetic_spec(name: str, n_trials: int, epochs: int = EPOCHS) -> dict[str, Any]:
    """A resolved spec shaped like the one ``sweep create`` stores in the study."""
    return {
        "name": name,
        "n_trials": n_trials,
        "epochs": epochs,
        "seed": 0,
        "data": {"name": "synthetic", "root": "data", "val_fraction": 0.1, "resolution": 32, "subset": None},
        "model": {"arch": "resnet18", "weights": "imagenet"},
        "sampler": {"type": "tpe"},
        "pruner": {"type": "hyperband"},
        "params": {
            "lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
            "batch_size": {"type": "categorical", "choices": [32, 64, 128, 256]},
            "frozen_layers": {"type": "int", "low": 0, "high": 5, "log": False},
            "aug_strength": {"type": "float", "low": 0.0, "high": 1.0, "log": False},
        },
    }


def _final_accuracy(rng: random.Random, p: dict[str, Any]) -> float:
    lr_pen = 0.06 * (math.log10(p["lr"]) + 3.3) ** 2
    acc = 0.93 - lr_pen - 0.025 * p["frozen_layers"] - 0.05 * (p["aug_strength"] - 0.4) ** 2
    acc += 0.01 * math.log2(p["batch_size"] / 32) * (1 if p["lr"] > 1e-3 else -1) + rng.gauss(0, 0.01)
    return min(max(acc, 0.1), 0.99)


def synthetic_trial(
    rng: random.Random, number: int, *, epochs: int = EPOCHS, state: TrialState | None = None
) -> optuna.trial.FrozenTrial:
    """One realistic fine-tuning trial (state drawn at random unless given)."""
    if state is None:
        u = rng.random()
        state = (TrialState.PRUNED if u < 0.30 else TrialState.FAIL if u < 0.33
                 else TrialState.RUNNING if u < 0.34 else TrialState.COMPLETE)
    params = {
        "lr": 10 ** rng.uniform(-5, -1),
        "batch_size": rng.choice([32, 64, 128, 256]),
        "frozen_layers": rng.randint(0, 5),
        "aug_strength": rng.random(),
    }
    final = _final_accuracy(rng, params)
    ran = {TrialState.PRUNED: rng.randint(1, epochs - 1), TrialState.FAIL: rng.randint(0, epochs - 1),
           TrialState.RUNNING: rng.randint(0, epochs - 1)}.get(state, epochs)
    speed = 3.0 * (1 - 0.12 * params["frozen_layers"]) * (0.7 + 0.3 * 128 / params["batch_size"])
    epoch_seconds = [round(speed * rng.uniform(0.9, 1.1), 3) for _ in range(ran)]
    curve = {e: round(final * (1 - math.exp(-e / 2.5)) + rng.gauss(0, 0.008), 5) for e in range(1, ran + 1)}
    attrs: dict[str, Any] = {
        "epochs_run": ran,
        "epoch_seconds": epoch_seconds,
        "host": f"gpu-node-{number % 4:02d}",
        "pid": 1000 + number,
        "device": f"cuda:{number % 2}",
        "gpu_name": "NVIDIA H100",
    }
    value = None
    if state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        attrs["duration_s"] = round(sum(epoch_seconds) + rng.uniform(2, 6), 3)
    if state == TrialState.COMPLETE:
        value = curve[epochs]
        attrs["test_accuracy"] = round(value - abs(rng.gauss(0.005, 0.005)), 5)
    elif state == TrialState.PRUNED:
        value = curve[ran]
    elif state == TrialState.FAIL:
        attrs["fail_reason"] = rng.choice(FAIL_REASONS)
        reason = attrs["fail_reason"]
        attrs["traceback"] = f"Traceback (most recent call last):\n  ...\nRuntimeError: {reason}\n"
    return optuna.trial.create_trial(
        state=state, value=value, params=params, distributions=DISTRIBUTIONS, user_attrs=attrs,
        intermediate_values=curve,
    )


def synthetic_study(n_trials: int, *, name: str = "synthetic-resnet", seed: int = 0) -> optuna.Study:
    """An in-memory study of ``n_trials`` synthetic trials (maximize validation accuracy)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, direction="maximize")
    study.set_user_attr("spec", synthetic_spec(name, n_trials))
    rng = random.Random(seed)
    study.add_trials([synthetic_trial(rng, i) for i in range(n_trials)])
    return study


def run_report_bench(
    n_trials: int = 10_000,
    *,
    json_path: Path | None = None,
    output: Path | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """Time gather and render+write of an ``n_trials`` report; print, return (and save) the figures."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t0 = time.perf_counter()
    study = synthetic_study(n_trials)
    t1 = time.perf_counter()
    data = report.gather([study], storage_label="in-memory (synthetic benchmark)")
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(output) if output is not None else Path(tmp) / "report.html"
        figures = report.build_figures(data)
        t3 = time.perf_counter()
        report.write_html(report.render_html(data, figures=figures), target)
        t4 = time.perf_counter()
        size = target.stat().st_size
    result: dict[str, Any] = {
        "n_trials": n_trials,
        "build_study_s": round(t1 - t0, 3),
        "gather_s": round(t2 - t1, 3),
        "figures_s": round(t3 - t2, 3),
        "render_s": round(t4 - t2, 3),
        "total_s": round(t4 - t1, 3),
        "size_mb": round(size / 1e6, 2),
        "n_figures": len(figures),
    }
    if output is not None:
        result["output"] = str(output)
    table = Table(title=f"sweep report benchmark: {n_trials:,} trials")
    table.add_column("step")
    table.add_column("value", justify="right")
    table.add_row("build synthetic study", f"{result['build_study_s']:.2f} s")
    table.add_row("gather (read + importances)", f"{result['gather_s']:.2f} s")
    table.add_row("render + write (incl. figures)", f"{result['render_s']:.2f} s")
    table.add_row("total (gather + render)", f"{result['total_s']:.2f} s  (budget 15 s)")
    table.add_row("file size", f"{result['size_mb']:.2f} MB  (budget 15 MB)")
    table.add_row("figures", str(len(figures)))
    console.print(table)
    write_json(result, json_path)
    return result
