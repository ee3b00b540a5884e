"""A kept model as files that need only torch, and classifying images with them.

``export_model`` writes three files into a folder:

* ``model.pt2``: a ``torch.export`` program (``torch.export.load(path).module()``) taking a float
  batch ``[N, 3, R, R]`` (any N), normalized as ``model.json`` says, at the trained resolution R;
* ``state_dict.pt``: the weights under torchvision's names (a ``cifar`` stem is recorded in
  ``model.json``: conv1 is 3x3 stride 1 and there is no max-pool);
* ``model.json``: what the model is and how to feed it.

``predict_files`` applies the preprocessing ``model.json`` states (the same decode and normalization
the sweep trained and validated with) and returns the top classes per image.

Reading an export never unpickles: export folders are passed around ("the best model of my sweep"),
and a ``.pt2`` archive may mark any weight ``use_pickle``, which ``torch.export.load`` then unpickles,
running whatever its author put there. ``predict`` rebuilds the network from ``model.json`` (arch, stem,
classes) and loads ``state_dict.pt`` with ``weights_only=True``, after checking its SHA-256 against the
one ``model.json`` records. ``model.pt2`` stays the deployment artefact, for whoever trusts its author.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sweep.atomic import current_umask, torch_save_atomic, write_atomic
from sweep.errors import UserError
from sweep.model import build_model
from sweep.show import first_line

EXPORT_FORMAT = 1
PROGRAM, STATE_DICT, CARD = "model.pt2", "state_dict.pt", "model.json"
STEM_NOTES = {
    "imagenet": "torchvision's stem: conv1 7x7 stride 2 padding 3, then max-pool 3x3 stride 2",
    "cifar": "conv1 is 3x3 stride 1 padding 1 and maxpool is nn.Identity() (no downsampling in the stem); "
    "build torchvision.models.<arch>(num_classes=N), replace those two modules, then load state_dict.pt",
}


class ExportError(UserError):
    """An export folder or an input that cannot be used; one line for the user."""


@dataclass(frozen=True)
class Prediction:
    """The top classes of one image, most probable first."""

    path: str
    top: tuple[tuple[str, float], ...]  # (class name, probability)


@dataclass(frozen=True)
class Unreadable:
    """An input that could not be classified, and why."""

    path: str
    reason: str


def model_card(payload: dict[str, Any]) -> dict[str, Any]:
    """The parts of model.json that come from a kept model file (the service adds the trial's record)."""
    config = payload["config"]
    return {
        "format": EXPORT_FORMAT,
        "arch": config["arch"],
        "stem": config["stem"],
        "stem_note": STEM_NOTES[config["stem"]],
        "num_classes": int(config["num_classes"]),
        "classes": list(payload["classes"]),
        "input_resolution": int(config["resolution"]),
        "data_resolution": int(payload["data_resolution"]),
        "mean": list(payload["mean"]),
        "std": list(payload["std"]),
        "input": "float32 [N, 3, input_resolution, input_resolution], RGB, (pixel / 255 - mean) / std",
        "preprocessing": (
            "RGB; resize the shorter side to data_resolution (bicubic) and centre-crop a square; "
            "x = (pixel / 255 - mean) / std; if input_resolution differs, resize x (bilinear, antialias)"
        ),
        "data_fingerprint": payload.get("data_fingerprint"),
    }


def build_trained(payload: dict[str, Any]) -> torch.nn.Module:
    """The trained network of a kept model file, in eval mode on the CPU."""
    config = payload["config"]
    model = build_model(config["arch"], weights="none", num_classes=int(config["num_classes"]), stem=config["stem"])
    model.load_state_dict(payload["model"])
    return model.eval()


EXPORT_FILES = (PROGRAM, STATE_DICT, CARD)


def export_model(payload: dict[str, Any], card: dict[str, Any], folder: Path, *, force: bool = False) -> list[Path]:
    """Write model.pt2, state_dict.pt and model.json into ``folder``; return their paths.

    An existing folder is refused unless ``force``, and even then when it holds anything but an
    export's files (``--force`` never deletes a user's other files). The new export is written whole
    into a folder beside ``folder`` and swapped in by renames: an interrupted export leaves the old
    folder or the new one, each file of one trial, never a mix.
    """
    _check_target(folder, force=force)
    model = build_trained(payload)
    res = int(card["input_resolution"])
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(model, (torch.zeros(2, 3, res, res),), dynamic_shapes=({0: batch},))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.new-"))
    try:
        # Not fsynced: an export is re-run rather than recovered after a power loss.
        write_atomic(staging / PROGRAM, lambda p: torch.export.save(program, p), durable=False)
        torch_save_atomic(state, staging / STATE_DICT, durable=False)
        card = {**card, "state_dict_sha256": file_sha256(staging / STATE_DICT)}
        write_atomic(
            staging / CARD,
            lambda p: Path(p).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8"),
            durable=False,
        )
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it 0700; a plain mkdir honours the umask
        _swap_in(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [folder / name for name in EXPORT_FILES]


def _check_target(folder: Path, *, force: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"--output {folder}: is a file; give a folder")
    if not folder.exists():
        return
    if not force:
        raise ExportError(f"--output {folder}: already exists; choose a new folder or pass --force")
    others = sorted(p.name for p in folder.iterdir() if p.name not in EXPORT_FILES)
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise ExportError(
            f"--output {folder}: holds files that are not an export's ({shown}); "
            "--force replaces a whole export folder only: choose a new folder"
        )


def _swap_in(staging: Path, folder: Path) -> None:
    """Rename ``staging`` to ``folder``; an old ``folder`` is moved aside first and removed after.

    Between the two renames ``folder`` is briefly absent; a failure there puts the old one back.
    """
    if not folder.exists():
        os.rename(staging, folder)
        return
    old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
    os.rename(folder, old / "x")  # into a fresh empty folder: no name can be taken meanwhile
    try:
        os.rename(staging, folder)
    except BaseException:
        os.rename(old / "x", folder)
        os.rmdir(old)
        raise
    shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (``model.json`` records the one of ``state_dict.pt``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_export(payload: dict[str, Any], record: dict[str, Any], folder: Path, *, force: bool = False) -> list[Path]:
    """``export_model`` with the card made of the payload's facts and ``record`` (study, trial, ...)."""
    import torchvision

    import sweep

    card = {**model_card(payload), **record}
    card["data_fingerprint"] = payload.get("data_fingerprint")
    card["exported_with"] = {
        "sweep": sweep.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    return export_model(payload, card, folder, force=force)


def read_payload(path: str | Path) -> dict[str, Any]:
    """A kept model file (``sweep.objective.final_model_payload``), on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- predict


def read_card(folder: Path) -> dict[str, Any]:
    """model.json of an export folder."""
    path = folder / CARD
    if not folder.is_dir():
        raise ExportError(f"DIR {folder}: not a folder; give the --output folder of `sweep export`")
    if not path.is_file() or not (folder / STATE_DICT).is_file():
        raise ExportError(f"DIR {folder}: no {CARD} and {STATE_DICT} in it; give the --output folder of `sweep export`")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
        for key in ("arch", "stem", "num_classes", "classes", "data_resolution", "input_resolution", "mean", "std"):
            card[key]  # noqa: B018 - presence check
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"DIR {folder}: {CARD} is not a sweep model card ({type(exc).__name__}: {exc})") from None
    return card


def load_exported(folder: Path, card: dict[str, Any]) -> torch.nn.Module:
    """The network of an export, rebuilt from ``model.json`` and ``state_dict.pt``; nothing unpickled.

    ``model.pt2`` is never read here: loading it runs whatever pickled objects its author put in it.
    """
    from sweep.spec import ARCHS, STEMS

    path = folder / STATE_DICT
    if card["arch"] not in ARCHS or card["stem"] not in STEMS:
        raise ExportError(
            f"DIR {folder}: {CARD} names arch {card['arch']!r} / stem {card['stem']!r}; "
            f"allowed: {', '.join(ARCHS)} / {', '.join(STEMS)}"
        )
    expected = card.get("state_dict_sha256")
    if expected is not None and file_sha256(path) != expected:
        raise ExportError(
            f"DIR {folder}: {STATE_DICT} is not the file {CARD} was written with (its SHA-256 differs); export again"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the weights-only unpickler refuses in several ways
        raise ExportError(
            f"DIR {folder}: {STATE_DICT} is not a plain tensor file; refusing to load it "
            f"({type(exc).__name__}: {first_line(exc)})"
        ) from None
    model = build_model(card["arch"], weights="none", num_classes=int(card["num_classes"]), stem=card["stem"])
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ExportError(
            f"DIR {folder}: {STATE_DICT} does not fit {card['arch']} ({card['stem']} stem, "
            f"{card['num_classes']} classes): {first_line(exc)}"
        ) from None
    return model.eval()


def expand_inputs(inputs: Sequence[str]) -> Iterator[str | Unreadable]:
    """Files as given, folders as every file below them (sorted, hidden ones skipped)."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield os.path.join(root, name)
        elif path.is_file():
            yield item
        else:
            yield Unreadable(item, "no such file or folder")


def preprocess(images: torch.Tensor, card: dict[str, Any]) -> torch.Tensor:
    """uint8 ``[N, 3, R, R]`` decoded at data_resolution → the program's float input.

    The same operations, in the same order, as training's validation transform, so an export
    classifies the validation images exactly as the trial was scored.
    """
    scale = torch.tensor([1 / (255 * s) for s in card["std"]], dtype=torch.float32)[None, :, None, None]
    bias = torch.tensor([-m / s for m, s in zip(card["mean"], card["std"], strict=True)], dtype=torch.float32)[
        None, :, None, None
    ]
    x = images.to(torch.float32, copy=True).mul_(scale).add_(bias)
    res = int(card["input_resolution"])
    if x.shape[-1] != res or x.shape[-2] != res:
        x = torch.nn.functional.interpolate(x, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
    return x


def top_k(logits: torch.Tensor, classes: Sequence[str], k: int) -> list[tuple[tuple[str, float], ...]]:
    """Per row: the ``k`` most probable classes with their softmax probabilities."""
    probs = torch.softmax(logits.float(), dim=1)
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    return [
        tuple((classes[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist(), strict=True))
        for vs, ix in zip(values, indices, strict=True)
    ]


def predict_files(
    folder: Path, inputs: Sequence[str], *, k: int = 5, batch_size: int = 256
) -> list[Prediction | Unreadable]:
    """Classify every image in ``inputs`` (files or folders) with the export in ``folder``, in input order."""
    from sweep.data import decode_image

    card = read_card(folder)
    program = load_exported(folder, card)
    data_res = int(card["data_resolution"])
    results: list[Prediction | Unreadable] = []
    pending: list[tuple[int, str, Any]] = []

    def flush() -> None:
        if not pending:
            return
        x = torch.from_numpy(np.stack([a for _, _, a in pending])).permute(0, 3, 1, 2).contiguous()
        with torch.inference_mode():
            logits = program(preprocess(x, card))
        for (slot, path, _), top in zip(pending, top_k(logits, card["classes"], k), strict=True):
            results[slot] = Prediction(path, top)
        pending.clear()

    for item in expand_inputs(inputs):
        if isinstance(item, Unreadable):
            results.append(item)
            continue
        try:
            array = decode_image(item, data_res)
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a file that is no image
            results.append(Unreadable(item, _reason(exc)))
            continue
        results.append(Unreadable(item, "pending"))  # replaced by its prediction in flush()
        pending.append((len(results) - 1, item, array))
        if len(pending) >= batch_size:
            flush()
    flush()
    return results


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    name = type(exc).__name__
    if name == "UnidentifiedImageError":
        return "not an image PIL can read"
    return f"{name}: {text}"[:200]
