"""Is the replay honest? Run methods for real (real training) and compare with their replayed curves.

    sweep bench live TABLE_STUDY --storage URL [--methods random,tpe+hyperband] [--seed 0]
        [--budget-epochs 72] [--live-storage URL] [--device cpu] [--json out.json] [--html out.html]

``sweep bench sweep`` looks every epoch up in the learning-curve table. Here the same methods run
through the worker's own trial runner (``sweep.service.TrialRunner``: real training with the
table's data, model and training settings, reports, pruning, heartbeats, checkpoints, a real
storage), with the sampler seeded as in the replay. The epoch budget is spent exactly as in the
replay: when it runs out mid-trial, that trial is stopped (FAIL). Then, per method: the live and the
replayed anytime curves side by side, the final best validation accuracy of each, how many proposals
were the same config in the same order, and how far the live validation accuracy of a config lies
from the table's at the same epoch (training noise: the live trial has another training seed).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sweep import record
from sweep.spec import StudySpec
from sweep_bench import save_figure, write_json
from sweep_bench.sweep import (
    TOLERANCE,
    Method,
    RowSampler,
    Table,
    default_methods,
    load_table,
    replay,
    replay_spec,
)

DEFAULT_METHODS = ("random", "tpe+hyperband")


def live_run(
    table: Table,
    method: Method,
    seed: int,
    budget_epochs: int,
    storage_url: str,
    *,
    device: str = "cpu",
    log: Any = print,
) -> dict[str, Any]:
    """Run ``method`` for real until ``budget_epochs`` epochs are trained; the replay's figures."""
    from sweep.search import build_pruner, build_sampler
    from sweep.service import load_spec_data
    from sweep.storage import open_storage

    spec = replay_spec(table, method, seed, budget_epochs)
    # The sampler is built from this spec (TPE's start-up count comes from n_trials, as in the replay);
    # the stored budget is wide, the epoch budget below is what stops the run.
    # Proposals moved onto the table's rows as in the replay (the identity on a finished table; on one
    # still being built, every live config has a row to compare with).
    sampler, pruner = RowSampler(build_sampler(spec), table), build_pruner(spec)
    # The replay's study name: Hyperband assigns brackets from a hash of the study name and trial number.
    name = spec.name
    spec = dataclasses.replace(spec, n_trials=budget_epochs)
    storage = open_storage(storage_url, heartbeat=True)
    if name in {s.study_name for s in storage.get_all_studies()}:
        # Already run into this database (e.g. while the table was still being built): read it back.
        return _read_back(table, name, budget_epochs, storage, storage_url, log)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler, pruner=pruner)
    study.set_user_attr(record.SPEC.name, spec.to_dict())
    data = load_spec_data(spec, storage_url)
    seconds = _train_budget(study, spec, data, method.name, budget_epochs, storage, storage_url, device=device, log=log)
    study.set_user_attr(record.LIVE_SECONDS.name, round(seconds, 1))
    study.set_user_attr(record.LIVE_BUDGET_EPOCHS.name, budget_epochs)  # last: marks the run as finished
    return summarize_live(table, study, seconds)


def _read_back(table: Table, name: str, budget_epochs: int, storage: Any, storage_url: str, log: Any) -> dict[str, Any]:
    """The figures of a live run already finished in ``storage``; an error if unfinished or for another budget."""
    from sweep.service import ServiceError
    from sweep.storage import mask_url

    study = optuna.load_study(study_name=name, storage=storage)
    if study.user_attrs.get(record.LIVE_BUDGET_EPOCHS.name) != budget_epochs:
        raise ServiceError(
            f"{mask_url(storage_url)} already holds {name!r}, unfinished or for another budget; "
            "use another --live-storage"
        )
    log(f"  {name}: already run in {mask_url(storage_url)}; reading it back")
    return summarize_live(table, study, float(study.user_attrs.get(record.LIVE_SECONDS.name, 0.0)))


def _train_budget(
    study: optuna.Study,
    spec: StudySpec,
    data: Any,
    label: str,
    budget_epochs: int,
    storage: Any,
    storage_url: str,
    *,
    device: str,
    log: Any,
) -> float:
    """Run trials through the worker's TrialRunner until ``budget_epochs`` epochs are trained; the seconds."""
    from sweep.objective import Progress, StopFlag
    from sweep.service import BudgetGate, TrialRunner
    from sweep.storage import artifact_store

    stop = StopFlag()
    used = 0

    def epoch_done(number: int, epoch: int, epochs: int, acc: float, secs: float) -> None:
        nonlocal used
        used += 1
        log(
            f"  {label} trial {number} epoch {epoch}/{epochs}: val {acc:.4f} ({secs:.1f} s), "
            f"{used}/{budget_epochs} epochs"
        )
        if used >= budget_epochs:
            stop.set()  # checked at the end of this epoch: the trial is cut here, as in the replay

    runner = TrialRunner(
        study, spec, data, device, stop, Progress(epoch_done=epoch_done), storage, artifact_store(storage_url)
    )
    gate = BudgetGate(study, spec)
    started = time.perf_counter()
    while used < budget_epochs:
        decision, trial = gate.take()
        assert decision == "run" and trial is not None
        out = runner.run(trial, None)
        log(f"  {label} trial {trial.number}: {out.state} {'' if out.value is None else out.value} {out.reason or ''}")
    return time.perf_counter() - started


def summarize_live(table: Table, study: optuna.Study, seconds: float) -> dict[str, Any]:
    """The replay's per-run figures, computed from a live study (trials ran one after another)."""
    target = table.best().curve[-1] - TOLERANCE
    used, best, curve, to_target = 0, None, [], None
    proposals, gaps, counts = [], [], {"trials": 0, "complete": 0, "pruned": 0, "cut": 0}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state == TrialState.WAITING or not t.params:
            continue  # the stopped trial handed back for a retry: not a new proposal
        params = {k: t.params[k] for k in table.grid}
        proposals.append(params)
        counts["trials"] += 1
        ran = len(t.intermediate_values)
        used += ran
        row = table.rows.get(table.key(params))
        for epoch, acc in t.intermediate_values.items():
            if row is not None and epoch <= len(row.curve):
                gaps.append(abs(acc - row.curve[epoch - 1]))
        if t.state == TrialState.COMPLETE:
            counts["complete"] += 1
            if best is None or t.value > best:
                best = t.value
                curve.append([used, best])
                if to_target is None and best >= target:
                    to_target = used
        elif t.state == TrialState.PRUNED:
            counts["pruned"] += 1
        else:
            counts["cut"] += 1
    return {
        "epochs_used": used,
        "best_val_accuracy": best,
        "epochs_to_target": to_target,
        "curve": curve,
        "proposals": proposals,
        "abs_gap_to_table_mean": round(statistics.fmean(gaps), 5) if gaps else None,
        "abs_gap_to_table_max": round(max(gaps), 5) if gaps else None,
        "seconds": round(seconds, 1),
        **counts,
    }


def compare(live: dict[str, Any], replayed: dict[str, Any]) -> dict[str, Any]:
    """How the live run and its replay agree."""
    same = 0
    for a, b in zip(live["proposals"], replayed["proposals"], strict=False):
        if a != b:
            break
        same += 1
    return {
        "same_proposals_prefix": same,
        "best_val_live": live["best_val_accuracy"],
        "best_val_replay": replayed["best_val_accuracy"],
        "trials_live": live["trials"],
        "trials_replay": replayed["trials"],
        "epochs_to_target_live": live["epochs_to_target"],
        "epochs_to_target_replay": replayed["epochs_to_target"],
    }


def run_live_check(
    table_study: str | None,
    *,
    storage_url: str,
    live_storage_url: str | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    seed: int = 0,
    budget_epochs: int | None = None,
    device: str = "cpu",
    json_path: Path | None = None,
    html_path: Path | None = None,
    partial: bool = False,
) -> dict[str, Any]:
    """Replay and live-run each method at one seed; print the comparison, write JSON and a figure.

    ``partial``: a table still being built, both runs restricted to the configs it has."""
    table = load_table(table_study, storage_url, complete=not partial)
    budget = budget_epochs or 12 * table.epochs
    by_name = {m.name: m for m in default_methods(table.epochs)}
    unknown = [m for m in methods if m not in by_name]
    if unknown:
        from sweep.service import ServiceError

        raise ServiceError(f"--methods {unknown[0]!r}: choose from {', '.join(by_name)}")
    if live_storage_url is None:  # live studies reuse the replay's names: a fresh database each run
        import tempfile

        live_storage_url = f"sqlite:///{tempfile.mkdtemp(prefix='sweep-live-')}/live.db"
    print(f"live studies go to {live_storage_url}")
    result: dict[str, Any] = {
        "table": table.name,
        "table_configs": len(table.rows),
        "seed": seed,
        "budget_epochs": budget,
        "live_storage": live_storage_url,
        "methods": {},
    }
    for name in methods:
        method = by_name[name]
        replayed = replay(table, method, seed, budget)
        print(f"{name}: replayed best val {replayed['best_val_accuracy']:.4f} in {replayed['trials']} trials")
        live = live_run(table, method, seed, budget, live_storage_url, device=device)
        result["methods"][name] = {"replay": replayed, "live": live, "comparison": compare(live, replayed)}
        c = result["methods"][name]["comparison"]
        print(
            f"{name}: live best val {c['best_val_live']} ({c['trials_live']} trials) vs replay "
            f"{c['best_val_replay']} ({c['trials_replay']} trials); same first {c['same_proposals_prefix']} "
            f"proposals; live vs table val acc: mean |gap| {live['abs_gap_to_table_mean']}, max "
            f"{live['abs_gap_to_table_max']}; {live['seconds']} s"
        )
    if html_path is None and json_path is not None:
        html_path = Path(json_path).with_suffix(".html")
    if html_path is not None:
        result["figures"] = write_figure(result, Path(html_path))
    write_json(result, json_path)
    return result


def write_figure(result: dict[str, Any], html_path: Path) -> list[str]:
    """Live (solid) and replayed (dashed) anytime curves per method, as HTML (+ PNG where possible)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    palette = ("#636efa", "#ef553b", "#00cc96", "#ab63fa")
    for i, (name, entry) in enumerate(result["methods"].items()):
        color = palette[i % len(palette)]
        for kind, dash in (("live", "solid"), ("replay", "dash")):
            points = entry[kind]["curve"]
            xs = [p[0] for p in points] + [result["budget_epochs"]]
            ys = [p[1] for p in points] + ([points[-1][1]] if points else [])
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",
                    name=f"{name} ({kind})",
                    line={"color": color, "dash": dash, "shape": "hv"},
                )
            )
    fig.update_layout(
        title=f"Live vs replayed anytime curves, table {result['table']!r}, seed {result['seed']}, "
        f"budget {result['budget_epochs']} epochs",
        xaxis_title="cumulative training epochs",
        yaxis_title="best validation accuracy of a completed trial",
        template="plotly_white",
        height=620,
    )
    return save_figure(fig, html_path)
