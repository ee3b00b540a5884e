"""Spec loading, overrides and validation messages."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import SWEEP

from sweep.pruner import EvidencePruner, ladder
from sweep.search import build_pruner
from sweep.spec import (
    MAX_FROZEN,
    SpecError,
    apply_overrides,
    find_spec_file,
    load_spec,
    parse_override,
    parse_spec,
    spec_files,
    spec_from_dict,
)

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "studies"


def test_shipped_specs_load() -> None:
    real = load_spec("lr-freeze", studies_dir=STUDIES)
    assert real.data.name == "cifar10" and real.model.weights == "imagenet"
    assert set(real.params) == {"lr", "batch_size", "frozen_layers", "aug_strength"}
    lr = real.params["lr"]
    assert (lr.low, lr.high, lr.log) == (1e-5, 1e-1, True)
    assert real.params["batch_size"].choices == (64, 128, 256, 512)
    assert real.params["frozen_layers"].high == MAX_FROZEN
    # The wide table's verdict (issue 22): the evidence pruner with a prior rung at epoch 1, keep a third.
    assert (real.sampler.type, real.pruner.type) == ("tpe", "auto")
    pruner = build_pruner(real)
    assert isinstance(pruner, EvidencePruner)
    assert (pruner.first_rung, pruner.reduction_factor, pruner.margin_se) == (1, 3, 4)
    assert ladder(pruner.first_rung, pruner.max_resource, pruner.reduction_factor) == (1, 3, 9)
    # The pilot's winner (issue 22): wsd, rungs read off an EMA of the weights.
    assert (real.train.schedule, real.train.ema_halflife, real.train.rung_value) == ("wsd", 0.5, "ema")
    demo = load_spec("demo", studies_dir=STUDIES)
    assert demo.data.name == "synthetic" and demo.model.weights == "none"


def test_spec_by_path_and_name_override(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('n_trials = 3\n[data]\nname = "synthetic"\n')
    spec = load_spec(str(path))
    assert spec.name == "mine" and spec.n_trials == 3
    assert load_spec(str(path), name="other").name == "other"


def test_overrides_are_toml_values() -> None:
    assert parse_override("epochs=3") == (["epochs"], 3)
    assert parse_override("params.lr.high=0.01") == (["params", "lr", "high"], 0.01)
    assert parse_override("data.name=synthetic") == (["data", "name"], "synthetic")
    assert parse_override('model.weights="/a b/c.pt"') == (["model", "weights"], "/a b/c.pt")
    assert parse_override("params.batch_size.choices=[32, 64]") == (["params", "batch_size", "choices"], [32, 64])
    assert parse_override("train.compile=true") == (["train", "compile"], True)
    spec = load_spec("demo", studies_dir=STUDIES, overrides=["epochs=5", "params.lr.high=0.01", "seed=7"])
    assert (spec.epochs, spec.params["lr"].high, spec.seed) == (5, 0.01, 7)


def test_overrides_do_not_mutate_input() -> None:
    raw = {"data": {"name": "cifar10"}}
    out = apply_overrides(raw, ["data.name=synthetic"])
    assert raw["data"]["name"] == "cifar10" and out["data"]["name"] == "synthetic"


@pytest.mark.parametrize(
    ("override", "field", "hint"),
    [
        ("bogus=1", "bogus", "unknown key"),
        ("data.bogus=1", "data.bogus", "unknown key"),
        ("epochs=three", "epochs", "integer"),
        ("epochs=0", "epochs", "integer in [1"),
        ("n_trials=1.5", "n_trials", "integer"),
        ("data.name=mnist", "data.name", "cifar10, imagefolder, synthetic"),
        ("model.arch=vgg16", "model.arch", "resnet18, resnet34, resnet50"),
        ("pruner.type=asha", "pruner.type", "median, successive-halving, hyperband, auto, none"),
        ("sampler.type=cma", "sampler.type", "tpe, random"),
        ("params.lr.low=0.5", "params.lr.low", "must be <= params.lr.high"),
        ("params.batch_size.choices=[]", "params.batch_size.choices", "non-empty"),
        ("params.frozen_layers.high=9", "params.frozen_layers.high", "[0, 5]"),
        ("params.momentum.type=float", "params.momentum", "searchable: lr"),
        ("params.lr.type=int", "params.lr.type", "float"),
        ("params.lr.log=1", "params.lr.log", "true or false"),
        ("data.val_fraction=0", "data.val_fraction", "(0.0, 0.9]"),
        ("pruner.bogus=3", "pruner.bogus", "not an argument of the median pruner"),
        # Optuna takes these and fails only when it uses them: every trial of the sweep would fail.
        ('sampler.n_startup_trials="x"', "sampler.n_startup_trials", "the tpe sampler takes int"),
        ("sampler.n_startup_trials=true", "sampler.n_startup_trials", "the tpe sampler takes int"),
        ("sampler.gamma=3", "sampler.gamma", "which a spec cannot hold"),
        ("pruner.n_warmup_steps=1.5", "pruner.n_warmup_steps", "the median pruner takes int"),
        ("pruner.n_startup_trials=-1", "pruner", "rejected by Optuna"),
        ("train.stem=tiny", "train.stem", "imagenet, cifar"),
    ],
)
def test_bad_values_name_field_value_and_allowed(override: str, field: str, hint: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec("demo", studies_dir=STUDIES, overrides=[override])
    message = str(info.value)
    assert message.startswith(field), message
    assert hint in message, message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["noequals", "=3", "a..b=1", "a=", "x=[1, 2"])
def test_malformed_set(text: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_override(text)
    assert "--set" in str(info.value)


def test_missing_spec_lists_available(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="one of demo, lr-freeze"):
        load_spec("nope", studies_dir=STUDIES)
    with pytest.raises(SpecError, match="file not found"):
        load_spec(str(tmp_path / "missing.toml"))


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("n_trials = = 3\n")
    with pytest.raises(SpecError, match="invalid TOML"):
        load_spec(str(path))


def test_round_trip_through_stored_dict() -> None:
    spec = load_spec("lr-freeze", studies_dir=STUDIES)
    again = spec_from_dict(spec.to_dict())
    assert again == spec
    assert again.fingerprint() == spec.fingerprint()
    assert spec.fingerprint() != load_spec("lr-freeze", studies_dir=STUDIES, overrides=["seed=1"]).fingerprint()


def test_fixed_params_fill_what_is_not_searched() -> None:
    spec = parse_spec(
        {"name": "x", "train": {"lr": 0.003}, "params": {"batch_size": {"type": "categorical", "choices": [8, 16]}}}
    )
    fixed = spec.fixed_params()
    assert fixed["lr"] == 0.003 and "batch_size" not in fixed and fixed["frozen_layers"] == 0


def test_grid_needs_discrete_space() -> None:
    with pytest.raises(SpecError, match="grid sampler"):
        parse_spec(
            {"name": "g", "sampler": {"type": "grid"}, "params": {"lr": {"type": "float", "low": 0.1, "high": 0.2}}}
        )
    spec = parse_spec(
        {
            "name": "g",
            "n_trials": 3,
            "sampler": {"type": "grid"},
            "params": {"lr": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1}},
        }
    )
    assert spec.params["lr"].step == 0.1
    with pytest.raises(SpecError, match="the grid has 3 points"):
        parse_spec(
            {
                "name": "g",
                "n_trials": 4,
                "sampler": {"type": "grid"},
                "params": {"lr": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1}},
            }
        )


def test_max_frozen_matches_model_units() -> None:
    from sweep.model import UNITS

    assert MAX_FROZEN == len(UNITS)


def test_precision_and_classes_keys() -> None:
    spec = parse_spec({"name": "p", "train": {"precision": "bf16"}, "data": {"classes": ["dog", "cat"]}})
    assert spec.train.precision == "bf16" and spec.data.classes == ("dog", "cat")
    assert spec_from_dict(spec.to_dict()) == spec
    default = parse_spec({"name": "p"})
    assert default.train.precision == "auto" and default.data.classes is None
    assert spec_from_dict(default.to_dict()) == default
    with pytest.raises(SpecError, match=r"train.precision = 'fp16': must be one of auto, bf16, fp32"):
        parse_spec({"name": "p", "train": {"precision": "fp16"}})
    for bad in (["dog"], ["dog", "dog"], "dog", ["dog", 3]):
        with pytest.raises(SpecError, match="data.classes"):
            parse_spec({"name": "p", "data": {"classes": bad}})


def test_checkpoint_keep_best() -> None:
    spec = load_spec("demo", studies_dir=STUDIES)
    assert spec.checkpoint.keep_best == 3
    assert load_spec("demo", studies_dir=STUDIES, overrides=["checkpoint.keep_best=0"]).checkpoint.keep_best == 0
    with pytest.raises(SpecError, match=r"checkpoint.keep_best = -1: must be an integer in \[0, 1000\]"):
        load_spec("demo", studies_dir=STUDIES, overrides=["checkpoint.keep_best=-1"])
    with pytest.raises(SpecError, match="checkpoint.every = 2: unknown key; allowed: keep_best"):
        load_spec("demo", studies_dir=STUDIES, overrides=["checkpoint.every=2"])
    assert spec_from_dict(spec.to_dict()) == spec


def test_check_raises_the_callers_error_type_with_the_same_one_line_message() -> None:
    from sweep.spec import check

    assert check("train.aug_strength", 0.5, error=ValueError) == 0.5
    with pytest.raises(SpecError, match=r"train.aug_strength = 1.5"):
        check("train.aug_strength", 1.5)
    with pytest.raises(ValueError, match=r"^train\.aug_strength=1\.5: must be a number in \[0\.0, 1\.0\]$"):
        check("train.aug_strength", 1.5, error=ValueError)


# --------------------------------------------------------------------------- built-in specs


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SWEEP), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.slow
def test_builtin_specs_work_from_any_folder_and_a_local_file_wins(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    done = _run("create", "lr-freeze", "--storage", url, cwd=tmp_path)  # no studies/ here
    assert done.returncode == 0, done.stderr
    assert "created study lr-freeze" in done.stdout and "60 trials" in done.stdout
    (tmp_path / "studies").mkdir()
    mine = tmp_path / "studies" / "lr-freeze.toml"
    mine.write_text((STUDIES / "lr-freeze.toml").read_text().replace("n_trials = 60", "n_trials = 7"))
    assert find_spec_file("lr-freeze", tmp_path / "studies") == mine
    done = _run("create", "lr-freeze", "--name", "mine", "--storage", url, cwd=tmp_path)
    assert done.returncode == 0 and "7 trials" in done.stdout, done.stdout + done.stderr
    listed = {f.name: f for f in spec_files(tmp_path / "studies")}
    assert listed["lr-freeze"].source == "local" and listed["demo"].source == "built-in"


def test_sweep_specs_lists_and_shows(tmp_path: Path) -> None:
    done = _run("specs", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert {"demo", "lr-freeze"} <= set(rows) and rows["demo"]["source"] == "built-in"
    assert rows["demo"]["about"].startswith("Offline demo:") and rows["demo"]["about"].endswith("cores.")
    shown = _run("specs", "show", "lr-freeze", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout == (STUDIES / "lr-freeze.toml").read_text()
    missing = _run("specs", "show", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("error: SPEC = 'nope': no such study spec")


@pytest.mark.slow
def test_a_wheel_ships_the_specs_as_package_data(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("sweep-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert {p.name for p in (site / "sweep" / "studies").glob("*.toml")} == {p.name for p in STUDIES.glob("*.toml")}
    code = "from sweep.spec import builtin_specs_dir as d, find_spec_file as f; print(d()); print(f('demo'))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [str(site / "sweep" / "studies"), str(site / "sweep" / "studies" / "demo.toml")]


def test_schedule_keys_and_the_rung_value_rule() -> None:
    default = parse_spec({"name": "s"})
    assert (default.train.schedule, default.train.rung_value) == ("cosine", "trunk")
    assert (default.train.cooldown_epochs, default.train.ema_halflife) == (0.0, 0.0)
    wsd = load_spec(
        "demo",
        studies_dir=STUDIES,
        overrides=[
            "train.schedule=wsd",
            "train.cooldown_epochs=0.25",
            "train.ema_halflife=0.5",
            "train.rung_value=cooldown",
        ],
    )
    assert (wsd.train.schedule, wsd.train.cooldown_epochs, wsd.train.rung_value) == ("wsd", 0.25, "cooldown")
    assert spec_from_dict(wsd.to_dict()) == wsd
    # A study stored before these keys existed reads back with their defaults.
    stored = default.to_dict()
    for key in ("schedule", "decay_fraction", "cooldown_epochs", "ema_halflife", "rung_value"):
        del stored["train"][key]
    assert spec_from_dict(stored) == default
    for overrides, message in [
        (["train.schedule=linear"], "train.schedule = 'linear': must be one of cosine, wsd"),
        (["train.rung_value=ema"], "train.rung_value = 'ema': needs train.ema_halflife > 0"),
        (["train.rung_value=cooldown", "train.cooldown_epochs=0.5"], "needs train.schedule = 'wsd'"),
        (["train.decay_fraction=0"], r"train.decay_fraction = 0.0: must be a number in \(0.0, 1.0\]"),
    ]:
        with pytest.raises(SpecError, match=message):
            load_spec("demo", studies_dir=STUDIES, overrides=overrides)


def test_search_arguments_optuna_only_checks_when_it_uses_them_are_refused() -> None:
    """Built and tried on a throwaway study: an argument Optuna accepts but fails on at its first use."""
    with pytest.raises(SpecError, match=r"^sampler/pruner = .*reduction_factor.*Optuna fails using them") as info:
        load_spec("demo", studies_dir=STUDIES, overrides=["pruner={type='hyperband', reduction_factor=0}"])
    assert "\n" not in str(info.value)
