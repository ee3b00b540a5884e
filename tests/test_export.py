"""Kept models through export and predict: one small study trained once for the whole module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import torchvision
from helpers import SWEEP, write_tiny_spec
from optuna.trial import TrialState
from PIL import Image
from typer.testing import CliRunner

from sweep.cli import app
from sweep.data import SYNTHETIC_CLASSES
from sweep.export import build_trained
from sweep.kept import kept_models
from sweep.service import create_study, export_trial, load_spec_data, load_spec_of, predict, run_worker
from sweep.service.results import _download_model
from sweep.storage import artifact_store, open_storage

pytestmark = pytest.mark.usefixtures("torch_one_thread")
runner = CliRunner()


class Sweep:
    """The trained study: its folder, storage URL and the Optuna study."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"sqlite:///{root / 'sweep.db'}"
        self.study = optuna.load_study(study_name="tiny", storage=self.url)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sweep]:
    """3 trials × 2 epochs, CIFAR stem in fp32 (exact on any CPU), the best 2 models kept."""
    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SWEEP_CACHE_DIR", str(root / "cache"))
        write_tiny_spec(root, n_trials=3, epochs=2)
        url = f"sqlite:///{root / 'sweep.db'}"
        create_study(
            "tiny",
            storage_url=url,
            studies_dir=root / "studies",
            overrides=["train.stem=cifar", "train.precision=fp32", "checkpoint.keep_best=2"],
        )
        run_worker("tiny", storage_url=url, device="cpu", artifacts=str(root / "artifacts"))
        yield Sweep(root)


def _best(s: Sweep) -> optuna.trial.FrozenTrial:
    return max(s.study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: (t.value, -t.number))


def test_worker_keeps_the_best_two_models_and_nothing_else(swept: Sweep) -> None:
    trials = swept.study.get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    expected = [t.number for t in sorted(trials, key=lambda t: (-t.value, t.number))[:2]]
    kept = kept_models(swept.study.user_attrs)
    assert [k.trial for k in kept] == expected
    # Epoch checkpoints are gone with their trials; only the two kept models remain.
    assert sorted(p.name for p in (swept.root / "artifacts").iterdir()) == sorted(k.artifact_id for k in kept)
    assert all(k.path == str(swept.root / "artifacts" / k.artifact_id) for k in kept)


def test_export_writes_program_state_dict_and_card(swept: Sweep, tmp_path: Path) -> None:
    best = _best(swept)
    out = tmp_path / "best"
    result = export_trial("tiny", None, out, storage_url=swept.url, artifacts=str(swept.root / "artifacts"))
    assert result.number == best.number and {p.name for p in result.files} == {
        "model.pt2",
        "state_dict.pt",
        "model.json",
    }
    card = json.loads((out / "model.json").read_text())
    assert card["arch"] == "resnet18" and card["stem"] == "cifar" and "3x3 stride 1" in card["stem_note"]
    assert card["num_classes"] == 10 and card["classes"] == list(SYNTHETIC_CLASSES)
    assert card["input_resolution"] == 16 and card["data_resolution"] == 16
    assert card["mean"] == [0.485, 0.456, 0.406] and card["std"] == [0.229, 0.224, 0.225]
    assert card["params"] == best.params and card["trial"] == best.number
    assert card["val_accuracy"] == best.value and card["test_accuracy"] == best.user_attrs["test_accuracy"]
    assert card["data_fingerprint"] == best.user_attrs["data_fingerprint"]
    assert card["environment"]["torch"] == torch.__version__ and "git_commit" in card
    assert card["trained_precision"] == "fp32"
    # torchvision's names; the CIFAR stem as model.json says: 3x3 conv1, no max-pool.
    state = torch.load(out / "state_dict.pt", weights_only=True)
    plain = torchvision.models.resnet18(num_classes=10)
    assert set(state) == set(plain.state_dict()) and state["conv1.weight"].shape == (64, 3, 3, 3)
    plain.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    plain.maxpool = torch.nn.Identity()
    plain.load_state_dict(state)


def test_export_loads_with_torch_alone_and_predicts_as_the_trial_model(swept: Sweep, tmp_path: Path) -> None:
    best = _best(swept)
    out = tmp_path / "best"
    export_trial("tiny", best.number, out, storage_url=swept.url, artifacts=str(swept.root / "artifacts"))
    x = torch.randn(5, 3, 16, 16)
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch\n"
        f"m = torch.export.load({str(out / 'model.pt2')!r}).module()\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        "with torch.no_grad():\n"
        f"    torch.save(m(x), {str(tmp_path / 'y.pt')!r}); torch.save(m(x[:1]), {str(tmp_path / 'y1.pt')!r})\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('sweep', 'torchvision', 'optuna')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # nothing but torch was needed
    kept = {k.trial: k for k in kept_models(swept.study.user_attrs)}[best.number]
    model = build_trained(_download_model(artifact_store(swept.url, str(swept.root / "artifacts")), kept))
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.load(tmp_path / "y1.pt"), expected[:1], rtol=1e-5, atol=1e-5)


def test_predict_on_the_trials_own_validation_images_gives_its_accuracy(swept: Sweep, tmp_path: Path) -> None:
    out = tmp_path / "best"
    result = export_trial("tiny", None, out, storage_url=swept.url, artifacts=str(swept.root / "artifacts"))
    storage = open_storage(swept.url, create=False)
    data = load_spec_data(load_spec_of(storage, "tiny"), swept.url)
    labels = {}
    for i, (img, y) in enumerate(zip(data.val_x, data.val_y, strict=True)):
        path = tmp_path / "val" / data.classes[int(y)] / f"{i:04d}.png"  # lossless: the same pixels
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)
        labels[str(path)] = data.classes[int(y)]
    predictions = predict(out, [str(tmp_path / "val")], k=3)
    assert len(predictions) == len(labels) and all(len(p.top) == 3 for p in predictions)
    correct = sum(p.top[0][0] == labels[p.path] for p in predictions)
    assert correct / len(labels) == result.value  # exactly the trial's stored validation accuracy
    # Scores that depend on the image (a two-epoch tiny model may still pick one class for all).
    assert len({round(p.top[0][1], 6) for p in predictions}) > 1


def test_bad_exports_one_line_exit_2(swept: Sweep, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEP_ARTIFACTS", str(swept.root / "artifacts"))
    base = ["--storage", swept.url]
    kept = {k.trial for k in kept_models(swept.study.user_attrs)}
    (not_kept,) = {0, 1, 2} - kept
    (tmp_path / "exists").mkdir()
    cases = {
        "already exists; choose a new folder or pass --force": ["export", "tiny", "--output", str(tmp_path / "exists")],
        "has trials 0..2": ["export", "tiny", "--trial", "7", "--output", str(tmp_path / "a")],
        f"sweep rerun tiny {not_kept} --export": [
            "export",
            "tiny",
            "--trial",
            str(not_kept),
            "--output",
            str(tmp_path / "b"),
        ],
        "no model.json and state_dict.pt": ["predict", str(tmp_path / "exists"), str(tmp_path)],
    }
    for needle, args in cases.items():
        result = runner.invoke(app, [*args, *(base if args[0] == "export" else [])])
        assert result.exit_code == 2, result.output
        assert needle in result.output.replace("\n", "") and "Traceback" not in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # --force replaces an existing (here empty) export folder.
    result = runner.invoke(app, ["export", "tiny", "--output", str(tmp_path / "exists"), "--force", *base])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "exists" / "model.pt2").is_file()


def test_export_of_a_trial_that_did_not_complete_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    write_tiny_spec(tmp_path)
    create_study("tiny", storage_url=url, studies_dir=tmp_path / "studies")
    study = optuna.load_study(study_name="tiny", storage=url)
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    result = runner.invoke(app, ["export", "tiny", "--trial", "0", "--output", str(tmp_path / "o"), "--storage", url])
    assert result.exit_code == 2 and "did not complete (state fail)" in result.output
    result = runner.invoke(app, ["export", "tiny", "--output", str(tmp_path / "o"), "--storage", url])
    assert result.exit_code == 2 and "no completed trial yet" in result.output


@pytest.mark.slow
def test_predict_console_script_reports_unreadable_files_and_classifies_the_rest(swept: Sweep, tmp_path: Path) -> None:
    out = tmp_path / "best"
    export_trial("tiny", None, out, storage_url=swept.url, artifacts=str(swept.root / "artifacts"))
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "in" / "a.jpg")  # resized like data
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    done = subprocess.run(
        [str(SWEEP), "predict", str(out), str(tmp_path / "in"), str(tmp_path / "missing.png"), "--json", "-k", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    (pred,) = json.loads(done.stdout)
    assert pred["path"].endswith("a.jpg") and len(pred["top"]) == 2
    assert {c["class"] for c in pred["top"]} <= set(SYNTHETIC_CLASSES)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and any("missing.png: no such file" in e for e in errors)
    assert any("notes.txt" in e for e in errors) and any("broken.png" in e for e in errors)


def test_status_json_names_kept_models_and_cost(swept: Sweep) -> None:
    result = runner.invoke(app, ["status", "tiny", "--json", "--storage", swept.url])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    kept = kept_models(swept.study.user_attrs)
    assert [k["trial"] for k in status["kept_models"]] == [k.trial for k in kept]
    assert all(Path(k["path"]).is_file() for k in status["kept_models"])
    cost = status["cost"]
    assert cost["unit"] == "seconds" and len(cost["trials"]) == 3
    assert cost["best"]["trial"] == _best(swept).number and cost["pareto"]
    front = [p for p in cost["trials"] if p["trial"] in cost["pareto"]]
    assert front[-1]["val_accuracy"] == cost["best"]["val_accuracy"]  # the front ends at the best accuracy
    assert all(p["compute_s"] > 0 and p["epochs"] == 2 for p in cost["trials"])
    table = runner.invoke(app, ["status", "tiny", "--storage", swept.url])
    assert "kept models" in table.output and "Pareto front" in table.output


def test_rerun_export_gives_a_trial_without_kept_model_its_model(swept: Sweep, tmp_path: Path) -> None:
    kept = {k.trial for k in kept_models(swept.study.user_attrs)}
    (number,) = {0, 1, 2} - kept
    trial = swept.study.trials[number]
    result = runner.invoke(
        app, ["rerun", "tiny", str(number), "--device", "cpu", "--export", str(tmp_path / "m"), "--storage", swept.url]
    )
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    # On a CPU the retrained model is the trial's model: the same validation accuracy.
    assert card["retrained"] is True and card["trial"] == number and card["val_accuracy"] == trial.value
    assert (tmp_path / "m" / "model.pt2").is_file() and (tmp_path / "m" / "state_dict.pt").is_file()
    again = runner.invoke(app, ["rerun", "tiny", str(number), "--export", str(tmp_path / "m"), "--storage", swept.url])
    assert again.exit_code == 2 and "already exists" in again.output
