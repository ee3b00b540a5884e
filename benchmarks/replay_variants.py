"""The pruner variants of BENCHMARKS.md's "More variants" table, replayed on the fine-tune table.

    python benchmarks/replay_variants.py [--seeds 10]      (from the repository root; ~15 s)

The same replay as ``sweep bench sweep`` (``sweep_bench.sweep.run_replays``), with methods that the
spec cannot express: Optuna's PatientPruner around a stock pruner, and a margin pruner written for
this test (prune a trial more than ``margin`` behind the best accuracy any trial reached at the same
epoch). Neither ships: neither beat TPE alone (BENCHMARKS.md says why).
"""

from __future__ import annotations

import argparse
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

import sweep_bench.sweep as bench
from sweep.search import build_pruner
from sweep.spec import StudySpec

TABLE = "sqlite:///benchmarks/tables/table-finetune.db"


class MarginPruner(optuna.pruners.BasePruner):
    """Prune when the trial trails the best value reported at the same step by more than ``margin``."""

    def __init__(self, margin: float, warmup: int = 0, startup: int = 3) -> None:
        self.margin, self.warmup, self.startup = margin, warmup, startup

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step <= self.warmup:
            return False
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        others = [t.intermediate_values[step] for t in finished if step in t.intermediate_values]
        return len(others) >= self.startup and trial.intermediate_values[step] < max(others) - self.margin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    seeds = parser.parse_args().seeds
    table = bench.load_table("table-finetune", TABLE)
    floor, epochs = table.noise_floor() or 0.0, table.epochs
    wrapped: dict[str, Any] = {}  # replay study-name prefix -> the pruner to use instead
    method = bench.Method
    methods = [
        method("random", "random", "none"),
        method("tpe", "tpe", "none"),
        method("tpe+median(w4)", "tpe", "median", {"n_warmup_steps": 4, "n_startup_trials": 5}),
        method("tpe+sha(min3)", "tpe", "successive-halving", {"min_resource": 3, "reduction_factor": 3}),
        method(
            "tpe+hyperband(min2,rf2)",
            "tpe",
            "hyperband",
            {"min_resource": 2, "max_resource": epochs, "reduction_factor": 2},
        ),
    ]
    for inner, pruner, args in [
        ("median(w1)", "median", {}),
        ("median(w3)", "median", {"n_warmup_steps": 3, "n_startup_trials": 5}),
        ("sha(min1)", "successive-halving", {"min_resource": 1, "reduction_factor": 3}),
        ("sha(min2)", "successive-halving", {"min_resource": 2, "reduction_factor": 3}),
    ]:
        for patience, delta in [(1, 0.0), (2, 0.0), (1, floor), (2, floor)]:
            name = f"tpe+patient({patience},{delta * 100:.2f}pt)+{inner}"
            wrapped[f"replay-{name}-"] = ("patient", patience, delta)
            methods.append(method(name, "tpe", pruner, args))
    for margin in (0.03, 0.05, 0.08, 0.12):
        for warmup in (0, 1, 2):
            name = f"tpe+margin({margin * 100:.0f}pt,w{warmup})"
            wrapped[f"replay-{name}-"] = ("margin", margin, warmup)
            methods.append(method(name, "tpe", "none"))

    def pruner_for(spec: StudySpec) -> optuna.pruners.BasePruner:
        for prefix, (kind, a, b) in wrapped.items():
            if spec.name.startswith(prefix):
                if kind == "patient":
                    return optuna.pruners.PatientPruner(build_pruner(spec), patience=a, min_delta=b)
                return MarginPruner(a, warmup=b)
        return build_pruner(spec)

    bench.build_pruner = pruner_for  # the replay builds each study's pruner through this name
    result = bench.run_replays(table, seeds=seeds, methods=methods)
    bench.print_table(result, Console(width=170))


if __name__ == "__main__":
    main()
