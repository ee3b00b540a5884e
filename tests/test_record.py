"""sweep.record: one owner for every attribute name, readers that survive whatever a database holds."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from sweep import record

ROOT = Path(__file__).resolve().parent.parent

# A plausible value of every trial user attribute, as sweep writes it.
TRIAL_VALUES: dict[str, Any] = {
    "host": "gpu-node-01",
    "device": "cuda:0",
    "gpu_name": "NVIDIA H100",
    "seed": 100_003,
    "data_fingerprint": "abc123",
    "train_images": 45_000,
    "val_images": 5_000,
    "precision": "bf16",
    "weights_sha256": "f" * 64,
    "resumed_from_epoch": 2,
    "epochs_run": 4,
    "epoch_seconds": [1.5, 1.25, 1.0, 1.125],
    "rung_values": [{"trunk": 0.5, "ema": 0.55, "cooldown": None, "cooldown_steps": 0}],
    "duration_s": 7.125,
    "test_accuracy": 0.875,
    "fail_reason": "stopped",
    "traceback": "Traceback (most recent call last):\n  ...\nRuntimeError: boom\n",
    "device_lost": 1,
    "checkpoint": {"artifact_id": "c0ffee", "epoch": 4},
    "final_model": {"artifact_id": "beef", "path": "/art/beef"},
    "retry_of": 3,
    "pid": 4242,
    "environment": {"sweep": "0.1.0", "git_commit": None},
    "warm_start_from": "old#12",
    "enqueued": True,
}


def test_every_name_is_unique_and_named_after_its_constant() -> None:
    names = [a.name for a in record.ALL]
    assert len(names) == len(set(names))
    constants = {k: v for k, v in vars(record).items() if isinstance(v, record.Attr)}
    assert set(constants.values()) == set(record.ALL)
    assert all(k == v.name.upper() for k, v in constants.items())
    assert all(a.why and "\n" not in a.why for a in record.ALL)


def test_the_record_imports_neither_torch_nor_typer() -> None:
    code = "import sys, sweep.record; print('torch' in sys.modules, 'typer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def _conforms(value: Any, declared: Any) -> bool:
    """Whether a stored value has its attribute's declared type (one level of generics)."""
    origin = typing.get_origin(declared) or declared
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, origin)


def test_the_values_here_have_the_declared_types() -> None:
    trial_attrs = {a.name: a for a in record.ALL if a.scope is record.Scope.TRIAL}
    assert set(TRIAL_VALUES) == set(trial_attrs)  # a new trial attribute gets a value here
    assert all(_conforms(v, trial_attrs[k].type) for k, v in TRIAL_VALUES.items())


def _round_trip() -> tuple[optuna.Trial, optuna.trial.FrozenTrial]:
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    for name, value in TRIAL_VALUES.items():
        trial.set_user_attr(name, value)
    study.tell(trial, 0.9)
    return trial, study.trials[0]


@pytest.mark.parametrize("which", ["live", "frozen"])
def test_readers_round_trip_on_an_in_memory_trial(which: str) -> None:
    live, frozen = _round_trip()
    t: Any = live if which == "live" else frozen
    assert (record.host(t), record.device(t), record.gpu_name(t)) == ("gpu-node-01", "cuda:0", "NVIDIA H100")
    assert (record.seed(t), record.val_images(t), record.precision(t)) == (100_003, 5_000, "bf16")
    assert record.weights_sha256(t) == "f" * 64
    assert (record.resumed_from_epoch(t), record.epochs_run(t)) == (2, 4)
    assert record.epoch_seconds(t) == [1.5, 1.25, 1.0, 1.125]
    assert record.rung_values(t) == TRIAL_VALUES["rung_values"]
    assert (record.duration_s(t), record.test_accuracy(t)) == (7.125, 0.875)
    assert (record.fail_reason(t), record.traceback(t)) == ("stopped", TRIAL_VALUES["traceback"])
    assert record.fail_reason(t) == record.Reason.STOPPED and not record.diverged(t)
    assert record.device_lost(t) == 1
    assert record.checkpoint(t) == {"artifact_id": "c0ffee", "epoch": 4}
    assert record.final_model(t) == {"artifact_id": "beef", "path": "/art/beef"}
    assert (record.retry_of(t), record.warm_start_from(t)) == (3, "old#12")
    assert record.environment(t) == {"sweep": "0.1.0", "git_commit": None}


def test_readers_give_plain_defaults_for_a_bare_trial() -> None:
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    t = study.trials[0]
    assert record.host(t) == record.device(t) == record.gpu_name(t) == record.weights_sha256(t) == ""
    assert record.fail_reason(t) == record.traceback(t) == record.warm_start_from(t) == ""
    assert not record.diverged(t)
    assert record.seed(t) is record.val_images(t) is record.precision(t) is record.epochs_run(t) is None
    assert record.duration_s(t) is record.test_accuracy(t) is record.retry_of(t) is None
    assert record.checkpoint(t) is record.final_model(t) is None
    assert record.resumed_from_epoch(t) == record.device_lost(t) == 0
    assert record.epoch_seconds(t) == record.rung_values(t) == []
    assert record.environment(t) == {} and record.spec({}) == {}


def test_a_trial_stopped_by_its_own_loss_reads_as_diverged() -> None:
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, user_attrs={"fail_reason": "diverged"}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, user_attrs={"fail_reason": "a newer reason"}))
    diverged, unknown = study.trials
    assert record.diverged(diverged) and record.fail_reason(diverged) == record.Reason.DIVERGED
    assert not record.diverged(unknown) and record.fail_reason(unknown) == "a newer reason"  # shown as stored


def test_readers_refuse_what_sweep_never_writes() -> None:
    junk = {
        "epochs_run": "two",
        "epoch_seconds": [1.0, "fast", math.nan, True, 2],
        "test_accuracy": math.inf,
        "duration_s": None,
        "retry_of": True,
        "precision": 16,
        "checkpoint": None,
        "environment": "x",
        "rung_values": "none",
        "fail_reason": None,
    }
    t = optuna.trial.create_trial(state=TrialState.FAIL, user_attrs=junk)
    assert record.epochs_run(t) is None and record.epoch_seconds(t) == [1.0, 2]
    assert record.test_accuracy(t) is None and record.duration_s(t) is None and record.retry_of(t) is None
    assert record.precision(t) is None and record.checkpoint(t) is None and record.environment(t) == {}
    assert record.rung_values(t) == [] and record.fail_reason(t) == ""
    assert record.spec({"spec": "not a dict"}) == {}


# --------------------------------------------------------------------------- nothing spells a name itself

_SETTERS = {"set_user_attr": 0, "set_system_attr": 0}  # the key's position among the arguments
_SETTERS |= {f"set_{on}_{kind}_attr": 1 for on in ("study", "trial") for kind in ("user", "system")}
_STORED = {"user_attrs", "system_attrs"}


def _text(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _attrs(node: ast.AST) -> bool:
    """Whether ``node`` reads like stored attributes: ``x.user_attrs``, ``attrs``, ``get_study_user_attrs(...)``."""
    if isinstance(node, ast.Attribute):
        return node.attr in _STORED
    if isinstance(node, ast.Name):
        return node.id.endswith("attrs")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr.startswith("get_") and node.func.attr.endswith("_attrs")
    return False


def _keyed_by_text(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Dict) and any(_text(k) for k in node.keys)


def spelled_names(source: str) -> list[int]:
    """Lines where ``source`` gives a stored attribute's name as a string literal."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        bad = False
        if isinstance(node, ast.Call):
            bad = any(k.arg in _STORED and _keyed_by_text(k.value) for k in node.keywords)
            name = node.func.attr if isinstance(node.func, ast.Attribute) else ""
            if name in _SETTERS:
                pos = _SETTERS[name]
                bad = (
                    bad
                    or (len(node.args) > pos and _text(node.args[pos]))
                    or any(k.arg == "key" and _text(k.value) for k in node.keywords)
                )
            elif name in ("get", "pop", "setdefault") and _attrs(node.func.value):  # type: ignore[attr-defined]
                bad = bad or (bool(node.args) and _text(node.args[0]))
        elif isinstance(node, ast.Subscript):
            bad = _attrs(node.value) and _text(node.slice)
        elif isinstance(node, ast.Compare):
            bad = _text(node.left) and any(
                isinstance(op, (ast.In, ast.NotIn)) and _attrs(c)
                for op, c in zip(node.ops, node.comparators, strict=True)
            )
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bad = any(_attrs(t) for t in targets) and _keyed_by_text(node.value)
            # A name of its own (``SPEC_ATTR = "spec"``), as modules kept before sweep.record.
            bad = bad or (
                _text(node.value) and any(isinstance(t, ast.Name) and t.id.endswith(("_ATTR", "_KEY")) for t in targets)
            )
        if bad:
            lines.append(node.lineno)
    return sorted(set(lines))


def test_the_check_finds_every_spelling() -> None:
    bad = """
trial.set_user_attr("host", 1)
storage.set_study_user_attr(study_id, "control", "paused")
t.user_attrs.get("epochs_run")
t.user_attrs["seed"]
study_attrs.get("spec")
storage.get_study_user_attrs(i)["budget"]
"seed" in t.user_attrs
create_trial(user_attrs={"checkpoint": 1})
attrs: dict = {"host": "x"}
SPEC_ATTR = "spec"
"""
    assert spelled_names(bad) == list(range(2, 12))
    good = """
trial.set_user_attr(record.CONTROL.name, "paused")
storage.set_study_user_attr(study_id, record.CONTROL.name, "paused")
t.user_attrs.get(record.HOST.name, "?")
payload.get("data_fingerprint")
env.get("git_commit")
"""
    assert spelled_names(good) == []


def test_no_module_but_the_record_spells_an_attribute_name() -> None:
    sources = sorted((ROOT / "sweep").rglob("*.py")) + sorted((ROOT / "sweep_bench").rglob("*.py"))
    found = {
        str(p.relative_to(ROOT)): lines
        for p in sources
        if p != ROOT / "sweep" / "record.py" and (lines := spelled_names(p.read_text()))
    }
    assert found == {}, "name stored attributes through sweep.record (its Attr constants and readers)"
