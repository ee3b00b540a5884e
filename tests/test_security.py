"""Nothing a user receives or types runs code or leaks a secret (issue #20).

Each test causes the thing it guards against: an export whose ``model.pt2`` really carries a pickle
payload (checked live with ``torch.export.load`` first), a password really in a worker's URL read
back from ``/proc/PID/cmdline``, a real ``umask 077``, a real rename failing mid-swap.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import optuna
import pytest
import torch
from helpers import SWEEP, held_worker_env, write_tiny_spec
from PIL import Image
from typer.testing import CliRunner

import sweep.export
from sweep.atomic import write_atomic
from sweep.cli import app
from sweep.data import decode_images
from sweep.data.datasets import DataError
from sweep.export import CARD, PROGRAM, STATE_DICT, ExportError, export_model, file_sha256, predict_files
from sweep.model import build_model
from sweep.service import create_study, write_report
from sweep.service.status import default_report_path
from sweep.storage import mask_text, mask_url

pytestmark = pytest.mark.usefixtures("torch_one_thread")
runner = CliRunner()
CLASSES = ["cat", "dog", "ship"]


class Payload:
    """Unpickling this runs ``touch MARKER``: what a hostile file would do, made visible."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _payload(seed: int) -> dict[str, Any]:
    """A kept model file's contents for a small untrained network (``seed`` tells two apart)."""
    torch.manual_seed(seed)
    model = build_model("resnet18", weights="none", num_classes=len(CLASSES), stem="cifar")
    return {
        "model": model.state_dict(),
        "config": {"arch": "resnet18", "stem": "cifar", "num_classes": len(CLASSES), "resolution": 16},
        "classes": CLASSES,
        "data_resolution": 16,
        "data_fingerprint": f"fp{seed}",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
    }


def _export(folder: Path, seed: int, *, force: bool = False) -> list[Path]:
    payload = _payload(seed)
    card = {**sweep.export.model_card(payload), "trial": seed}
    return export_model(payload, card, folder, force=force)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("exp") / "best"
    _export(folder, seed=1)
    return folder


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)
    return path


def _copy(folder: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in (PROGRAM, STATE_DICT, CARD):
        (dest / name).write_bytes((folder / name).read_bytes())
    return dest


def _poison_program(path: Path, marker: Path) -> None:
    """Rewrite a .pt2 archive so that loading it unpickles ``Payload`` (its first weight, use_pickle)."""
    src = path.read_bytes()
    with zipfile.ZipFile(path.with_suffix(".orig"), "w") as out, zipfile.ZipFile(_bytes_file(path, src)) as zin:
        config_name = next(n for n in zin.namelist() if n.endswith("data/weights/model_weights_config.json"))
        config = json.loads(zin.read(config_name))
        first = next(iter(config["config"]))
        config["config"][first]["use_pickle"] = True
        weight_name = config_name.rsplit("/", 1)[0] + "/" + config["config"][first]["path_name"]
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == config_name:
                data = json.dumps(config).encode()
            elif info.filename == weight_name:
                data = pickle.dumps(Payload(marker))
            out.writestr(info, data)
    path.with_suffix(".orig").replace(path)


def _bytes_file(path: Path, data: bytes) -> Path:
    copy = path.with_suffix(".read")
    copy.write_bytes(data)
    return copy


def _run_sweep(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SWEEP), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


# --------------------------------------------------------------------------- exports never unpickle


@pytest.mark.slow
def test_predict_classifies_from_the_state_dict_and_never_loads_the_program(
    exported: Path, image: Path, tmp_path: Path
) -> None:
    folder, marker = _copy(exported, tmp_path / "gift"), tmp_path / "PWNED"
    _poison_program(folder / PROGRAM, marker)
    # The crafted archive is live: loading it the way model.pt2 is meant to be loaded runs the payload.
    loaded = subprocess.run(
        [sys.executable, "-c", f"import torch; torch.export.load({str(folder / PROGRAM)!r})"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert marker.exists(), loaded.stderr[-2000:]
    marker.unlink()

    done = _run_sweep("predict", str(folder), str(image), "--json")
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    (row,) = json.loads(done.stdout)
    assert row["path"] == str(image) and {t["class"] for t in row["top"]} <= set(CLASSES)
    # The same scores as the trial's network on the same input.
    (pred,) = predict_files(folder, [str(image)], k=3)
    model = sweep.export.build_trained(_payload(1))
    x = sweep.export.preprocess(
        torch.tensor(sweep.data.decode_image(str(image), 16)).permute(2, 0, 1)[None],
        json.loads((folder / CARD).read_text()),
    )
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)[0]
    assert pred.top[0][1] == pytest.approx(float(probs.max()), abs=1e-5)


@pytest.mark.slow
def test_a_state_dict_carrying_a_pickle_payload_is_one_line_and_runs_nothing(
    exported: Path, image: Path, tmp_path: Path
) -> None:
    folder, marker = _copy(exported, tmp_path / "gift"), tmp_path / "PWNED"
    with open(folder / STATE_DICT, "wb") as fh:
        torch.save({"conv1.weight": Payload(marker)}, fh)
    # Swapped behind model.json's back: the recorded SHA-256 no longer matches.
    done = _run_sweep("predict", str(folder), str(image))
    assert done.returncode == 2 and not marker.exists()
    assert done.stderr.strip().splitlines() == [
        f"error: DIR {folder}: state_dict.pt is not the file model.json was written with (its SHA-256 differs); "
        "export again"
    ]
    # A card rewritten to match: the weights-only unpickler still refuses it.
    card = json.loads((folder / CARD).read_text())
    card["state_dict_sha256"] = file_sha256(folder / STATE_DICT)
    (folder / CARD).write_text(json.dumps(card))
    done = _run_sweep("predict", str(folder), str(image))
    assert done.returncode == 2 and not marker.exists() and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: DIR {folder}: state_dict.pt is not a plain tensor file; refusing to load it (")


def test_model_json_records_the_state_dict_hash_and_a_foreign_arch_is_refused(exported: Path, tmp_path: Path) -> None:
    card = json.loads((exported / CARD).read_text())
    assert card["state_dict_sha256"] == file_sha256(exported / STATE_DICT)
    folder = _copy(exported, tmp_path / "odd")
    (folder / CARD).write_text(json.dumps({**card, "arch": "os.system"}))
    with pytest.raises(ExportError, match="names arch 'os.system'"):
        predict_files(folder, [])


# --------------------------------------------------------------------------- export --force swaps whole folders


def test_export_force_swaps_the_whole_folder(tmp_path: Path) -> None:
    folder = tmp_path / "best"
    _export(folder, seed=1)
    _export(folder, seed=2, force=True)
    card = json.loads((folder / CARD).read_text())
    assert card["trial"] == 2 and card["state_dict_sha256"] == file_sha256(folder / STATE_DICT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no staging or old folder left
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"holds files that are not an export's \(notes.txt\)"):
        _export(folder, seed=3, force=True)
    assert (folder / "notes.txt").read_text() == "mine"


def test_an_export_interrupted_between_its_renames_leaves_one_trials_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "best"
    _export(folder, seed=1)
    real_rename, calls = os.rename, []

    def rename(src: Any, dst: Any) -> None:
        calls.append((src, dst))
        if len(calls) == 2:  # the old folder is aside, the new one not yet in place
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(sweep.export.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        _export(folder, seed=2, force=True)
    monkeypatch.setattr(sweep.export.os, "rename", real_rename)
    assert len(calls) == 3  # aside, (interrupted), back
    card = json.loads((folder / CARD).read_text())
    assert card["trial"] == 1 and card["state_dict_sha256"] == file_sha256(folder / STATE_DICT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql+psycopg://sweep:s3cret@db:5432/sweep", "s3cret"),
        ("postgresql://sweep@db/sweep?password=s3cret", "s3cret"),
        ("postgresql://sweep@db/sweep?sslmode=verify-full&sslpassword=k3y&application_name=w", "k3y"),
        ("postgresql://sweep@db/sweep?PassWord=s3cret#frag", "s3cret"),
        ("postgresql://sweep:p%40ss@db/sweep?sslpassword=k%26y", "p%40ss"),
        ("postgresql://sweep:p%40ss@db/sweep?sslpassword=k%26y", "k%26y"),
    ],
)
def test_every_password_form_is_masked(url: str, secret: str) -> None:
    masked = mask_url(url)
    assert secret not in masked and "***" in masked
    assert "db" in masked and "sweep" in masked  # the rest stays readable
    # Drivers quote the URL, or the password as they decoded it.
    cleaned = mask_text(f"connection to {url} failed: password {unquote(secret)!r} rejected", url)
    assert secret not in cleaned and unquote(secret) not in cleaned


def test_files_honour_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "private.txt", lambda p: Path(p).write_text("x"))
        out = tmp_path / "r.html"
        url = f"sqlite:///{tmp_path / 's.db'}"
        optuna.create_study(study_name="s", storage=url)
        write_report(["s"], storage_url=url, output=out, plotlyjs="cdn")
        _export(tmp_path / "exp", seed=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "exp").stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "exp").iterdir()} == {0o600}
    os.umask(0o022)
    try:
        write_atomic(tmp_path / "shared.txt", lambda p: Path(p).write_text("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.txt").stat().st_mode) == 0o644


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
def test_supervised_workers_never_carry_the_password_on_their_command_line(pg_fresh_url: str, tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    password = make_url(pg_fresh_url).password
    assert password, "the test cluster's URL must carry a password"
    write_tiny_spec(tmp_path, n_trials=2, epochs=3)
    create_study("tiny", storage_url=pg_fresh_url, studies_dir=tmp_path / "studies")
    env, hold = held_worker_env(tmp_path)
    proc = subprocess.Popen(
        [
            str(SWEEP),
            "worker",
            "tiny",
            "--device",
            "cpu",
            "--workers",
            "2",
            "--threads",
            "1",
            "--artifacts",
            str(tmp_path / "artifacts"),
        ],
        env={**os.environ, **env, "SWEEP_STORAGE": pg_fresh_url, "SWEEP_CACHE_DIR": str(tmp_path / "cache")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 240
        study = None
        while time.monotonic() < deadline:  # both children hold a trial: they surely parsed their options
            study = study or _maybe_study(pg_fresh_url)
            if study is not None and len(study.get_trials(states=(optuna.trial.TrialState.RUNNING,))) == 2:
                break
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
        else:
            pytest.fail("the two workers never both ran a trial")
        kids = _children(proc.pid)
        assert len(kids) == 2
        for pid in [proc.pid, *kids]:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
            assert password not in cmdline and "postgresql" not in cmdline, cmdline
    finally:
        hold.unlink(missing_ok=True)
        out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert password not in out


def _maybe_study(url: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name="tiny", storage=url)
    except KeyError:
        return None


# --------------------------------------------------------------------------- names, markup, images


@pytest.mark.parametrize("name", ["../x", "y" * 200, "a/b/../../c", ".."])
def test_report_names_from_study_names_stay_inside_the_reports_folder(tmp_path: Path, name: str) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name=name, storage=url)
    optuna.create_study(study_name=name + "2", storage=url)
    reports = (tmp_path / "reports").resolve()
    for names in ([name], [name, name + "2"]):
        path = write_report(names, storage_url=url, plotlyjs="cdn")
        assert path.resolve().parent == reports and path.is_file() and len(path.name) <= 120
    assert len({default_report_path([n], url) for n in (name, name + "2", "x")}) == 3


@pytest.mark.parametrize("value", ['"[/]"', '"[red]x"', '"[bold]"'])
def test_user_strings_are_never_parsed_as_markup(tmp_path: Path, value: str) -> None:
    write_tiny_spec(tmp_path)
    result = runner.invoke(
        app,
        [
            "create",
            str(tmp_path / "studies" / "tiny.toml"),
            "--set",
            f"data.name={value}",
            "--storage",
            f"sqlite:///{tmp_path / 's.db'}",
        ],
    )
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: data.name = '{value.strip(chr(34))}': must be one of")
    assert not (tmp_path / "s.db").exists()


def test_a_decompression_bomb_is_one_line_naming_the_file(
    tmp_path: Path, image: Path, exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the image (480 px) is over twice the limit
    with pytest.raises(DataError, match=rf"^data.root: cannot read image {image} \(Image size \(480 pixels\) "):
        decode_images([str(image)], 16)
    (result,) = predict_files(exported, [str(image)])
    assert isinstance(result, sweep.export.Unreadable) and "exceeds limit" in result.reason


@pytest.mark.slow
def test_decompression_bomb_in_a_worker_preflight_is_exit_2(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (folder / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / split / cls / f"{i}.png")
    Image.new("RGB", (64, 64)).save(folder / "train" / "a" / "bomb.png")
    write_tiny_spec(tmp_path, n_trials=1, epochs=1)
    url = f"sqlite:///{tmp_path / 's.db'}"
    code = (
        "import PIL.Image, sys; PIL.Image.MAX_IMAGE_PIXELS = 1000; from sweep.cli import app; "
        "sys.argv = ['sweep', *sys.argv[1:]]; app()"
    )
    create = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "create",
            str(tmp_path / "studies" / "tiny.toml"),
            "--storage",
            url,
            "--set",
            "data.name='imagefolder'",
            "--set",
            f"data.root='{folder}'",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SWEEP_CACHE_DIR": str(tmp_path / "c")},
    )
    done = (
        create
        if create.returncode != 0
        else subprocess.run(
            [sys.executable, "-c", code, "worker", "--storage", url, "--device", "cpu", "--threads", "1"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "SWEEP_CACHE_DIR": str(tmp_path / "c")},
        )
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "bomb.png" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "exceeds limit" in done.stderr


@pytest.fixture(autouse=True)
def _quiet_optuna() -> Iterator[None]:
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(level)
