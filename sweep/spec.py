"""The study spec: one frozen, typed description of a sweep, validated at the boundary.

A spec comes from a TOML file (``studies/<name>.toml``, or a built-in one) plus ``--set key=value``
overrides. It is validated here, once, with messages that name the field, the bad value and what is
allowed. The
resolved spec (every default filled in) is stored inside the Optuna study, so every worker on every
machine reads the same thing from the database.

Every setting's type, bounds, default and reason live in one table, :data:`SETTINGS`; the training
code (``sweep.train``, ``sweep.data``, ``sweep.model``) checks its arguments with :func:`check` rather
than with rules of its own. Only the standard library is imported here, so the table is cheap to read
anywhere; ``parse_spec`` imports ``sweep.search`` (Optuna) when it runs, to check sampler and pruner
arguments against the real classes. Nothing here ever imports torch: ``sweep create`` starts fast.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sweep.errors import SpecError

DATASETS = ("cifar10", "imagefolder", "synthetic")
ARCHS = ("resnet18", "resnet34", "resnet50")
STEMS = ("imagenet", "cifar")
SAMPLERS = ("tpe", "random", "grid", "qmc")
PRUNERS = ("median", "successive-halving", "hyperband", "auto", "none")
PARAM_TYPES = ("float", "int", "categorical")
# "auto": bf16 autocast (+ channels_last) on CUDA, and on CPUs with native bf16 (AVX512-BF16, AMX)
# for the CIFAR stem, where it trains ~3x faster than fp32 at the same accuracy (BENCHMARKS.md);
# fp32 elsewhere (sweep.train.resolve_precision says why).
PRECISIONS = ("auto", "bf16", "fp32")
# "cosine" decays the lr over the whole horizon, so an early rung compares configs in the middle of
# their schedules (BENCHMARKS.md: Spearman 0.18 with the final ranking after epoch 1 of 8). "wsd"
# (warmup, stable, decay) holds the lr until the last `decay_fraction` of the steps; a rung value can
# then estimate what the config would score if stopped there (sweep.train: EMA, cooldown branch).
# "schedulefree": schedule-free AdamW (the optional `schedulefree` package), warm-up then a constant lr;
# its output is an average of the iterates, evaluated after every epoch (BatchNorm statistics recomputed).
SCHEDULES = ("cosine", "wsd", "schedulefree")
# What a trial reports to the pruner before its last epoch: the trained weights' own accuracy, that
# of their moving average, or that of the cooldown branch. The last epoch always reports the trunk.
RUNG_VALUES = ("trunk", "ema", "cooldown")
# Must equal len(sweep.model.UNITS) (stem, layer1..layer4); spec.py cannot import torch to ask.
MAX_FROZEN = 5


@dataclass(frozen=True)
class Setting:
    """One setting of a study: its type, the values it allows, its default, and why."""

    type: type  # bool, int, float or str
    default: Any
    why: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False  # low itself is not allowed
    open_high: bool = False  # high itself is not allowed
    choices: tuple[str, ...] | None = None
    searchable: bool = False  # a hyperparameter: fixed in [train] or searched in [params.<name>]
    empty: bool = False  # a str setting that may be "" (off)

    def check(self, value: Any, fld: str) -> Any:
        """``value`` if it is allowed, else a SpecError naming ``fld``."""
        if self.type is bool:
            return _bool(value, fld)
        if self.type is int:
            low, high = (None if b is None else int(b) for b in (self.low, self.high))
            return _int(value, fld, low=low, high=high)
        if self.type is float:
            return _float(value, fld, low=self.low, high=self.high, open_low=self.open_low, open_high=self.open_high)
        if self.empty and value == "":
            return value
        return _str(value, fld, self.choices)


# Every setting of a spec by its dotted key, with the reason for its bounds and default beside it: the
# one place a limit or a default lives. The dataclasses below, TrainConfig (sweep.train) and the
# argument checks of sweep.data and sweep.model read it.
SETTINGS: dict[str, Setting] = {
    "n_trials": Setting(int, 60, "the budget all workers share", low=1, high=10_000_000),
    "max_hours": Setting(
        float,
        None,
        "None: trials only; else also a budget of summed trial compute (all "
        "workers' epochs): no new trial once spent, running ones finish",
        low=0.0,
        open_low=True,
    ),
    "epochs": Setting(int, 12, "max epochs per trial, the pruner's max resource", low=1, high=100_000),
    "seed": Setting(int, 0, "a 32-bit seed, as NumPy's generators (Optuna's samplers) take it", low=0, high=2**32 - 1),
    "data.name": Setting(str, "cifar10", "the data sets sweep can read", choices=DATASETS),
    "data.root": Setting(str, "data", "resolved on each worker; cifar10 downloads there"),
    "data.val_fraction": Setting(
        float,
        0.1,
        "carved from the training set; above 0.9 too little is left to train on",
        low=0.0,
        high=0.9,
        open_low=True,
    ),
    "data.resolution": Setting(
        int, 32, "image size at cache time, CIFAR-10's own; 1024 px caps the cache", low=8, high=1024
    ),
    "data.subset": Setting(
        int,
        None,
        "None keeps every image; two is the least a training and a "
        "validation split can be carved from (load_data checks the split itself)",
        low=2,
    ),
    "model.arch": Setting(str, "resnet18", "the torchvision ResNets", choices=ARCHS),
    "model.weights": Setting(
        str,
        "imagenet",
        "sweep fine-tunes: pretrained weights unless a spec says 'none' (random init) or names a state dict",
    ),
    "train.lr": Setting(
        float,
        1e-4,
        "AdamW's peak rate; 1e-4 is the fine-tuning recipe lr-freeze starts from",
        low=0.0,
        high=10.0,
        open_low=True,
        searchable=True,
    ),
    "train.batch_size": Setting(int, 128, "the same recipe's batch", low=1, high=65536, searchable=True),
    "train.frozen_layers": Setting(
        int,
        0,
        "frozen units of the five (stem, layer1..4); 0 trains everything",
        low=0,
        high=MAX_FROZEN,
        searchable=True,
    ),
    "train.aug_strength": Setting(
        float,
        0.5,
        "0 = none, 0.5 = the classic 4 px crop + flip, 1 = plus jitter and cutout",
        low=0.0,
        high=1.0,
        searchable=True,
    ),
    "train.weight_decay": Setting(
        float, 0.05, "AdamW's decoupled decay (biases and norms get none)", low=0.0, high=10.0, searchable=True
    ),
    "train.label_smoothing": Setting(
        float,
        0.0,
        "1 would make every target uniform: nothing to learn",
        low=0.0,
        high=1.0,
        open_high=True,
        searchable=True,
    ),
    "train.stem": Setting(
        str, "imagenet", "torchvision's stem; 'cifar' keeps small images' resolution", choices=STEMS, searchable=True
    ),
    "train.resolution": Setting(
        int,
        32,
        "network input size; 8 px is the least five downsamplings leave a pixel of",
        low=8,
        high=1024,
        searchable=True,
    ),
    "train.eval_batch_size": Setting(int, 1024, "evaluation keeps no activations: large batches are cheap", low=1),
    "train.compile": Setting(bool, False, "torch.compile pays only on CUDA, after a slow warm-up"),
    "train.precision": Setting(str, "auto", "each trial records what it computed in", choices=PRECISIONS),
    "train.schedule": Setting(
        str,
        "cosine",
        "the usual fine-tune schedule, and what the cosine tables "
        "were built with; for pruning, wsd with rung_value = ema ranks configs "
        "early far better (lr-freeze's choice, BENCHMARKS.md)",
        choices=SCHEDULES,
    ),
    "train.decay_fraction": Setting(
        float,
        0.2,
        "wsd's final linear decay, as a fraction of all steps; 0.1-0.2 is the usual range",
        low=0.0,
        high=1.0,
        open_low=True,
    ),
    "train.cooldown_epochs": Setting(
        float,
        0.0,
        "wsd only: length of the cooldown branch trained and "
        "evaluated after each epoch but the last, charged to the trial's cost; "
        "0 = none, more than an epoch costs more than the epoch",
        low=0.0,
        high=1.0,
    ),
    "train.ema_halflife": Setting(
        float,
        0.0,
        "half-life in epochs of the weight average (BatchNorm "
        "statistics included) evaluated after each epoch; 0 = none",
        low=0.0,
        high=100.0,
    ),
    "train.rung_value": Setting(
        str,
        "trunk",
        "'ema' needs ema_halflife > 0, 'cooldown' needs schedule = wsd and cooldown_epochs > 0",
        choices=RUNG_VALUES,
    ),
    "train.checkpoint_every": Setting(
        int, 1, "epochs between checkpoints (0 = never); a retry resumes from the last", low=0
    ),
    # The final weights of the study's top-K completed trials (by validation accuracy) stay in the
    # artifact store for `sweep export`; 0 keeps none.
    "checkpoint.keep_best": Setting(
        int,
        3,
        "three leave a choice between near-equal models (e.g. the cheaper one) at ~45 MB each for a ResNet-18",
        low=0,
        high=1000,
    ),
    # Experiment trackers listening to each worker's trials (sweep.tracking); "" = off. Off by default:
    # the database already holds every result, a tracker is a copy for the tools a team already runs.
    "tracking.mlflow": Setting(
        str,
        "",
        "an MLflow tracking URI (http://host:5000, sqlite:///mlflow.db): one "
        "run per trial in an experiment named after the study; '' = off",
        empty=True,
    ),
    "tracking.tensorboard": Setting(
        str,
        "",
        "a log folder, resolved on each worker: one run folder per trial under <folder>/<study>/; '' = off",
        empty=True,
    ),
}

# The hyperparameters a trial understands, by bare name: `[train]` fixes them, `[params.<name>]` searches.
HPARAMS: dict[str, Setting] = {key.removeprefix("train."): s for key, s in SETTINGS.items() if s.searchable}
TRAIN_DEFAULTS: dict[str, Any] = {name: s.default for name, s in HPARAMS.items()}
SEARCHABLE = tuple(HPARAMS)


def check(key: str, value: Any, fld: str | None = None, *, error: type[Exception] | None = None) -> Any:
    """``value`` if SETTINGS[key] allows it, else a SpecError naming ``fld`` (default: the key).

    ``error``: raise this type instead, with the one-line ``field=value: allowed`` message: how the
    training and data code, called without a spec, report the same rule in their own exception type.
    """
    try:
        return SETTINGS[key].check(value, fld or key)
    except SpecError as e:
        if error is None:
            raise
        raise error(e.terse()) from None


def check_rung_value(
    rung_value: str,
    *,
    schedule: str,
    cooldown_epochs: float,
    ema_halflife: float,
    error: type[Exception] | None = None,
) -> str:
    """``rung_value`` if the run it names is measured under these settings (the cross-field rule of
    ``train.rung_value``), else a SpecError (or ``error``)."""
    missing = {
        "ema": "train.ema_halflife > 0" if ema_halflife <= 0 else None,
        "cooldown": "train.schedule = 'wsd' and train.cooldown_epochs > 0"
        if schedule != "wsd" or cooldown_epochs <= 0
        else None,
    }.get(rung_value)
    if missing is not None:
        exc = SpecError("train.rung_value", rung_value, f"needs {missing}")
        if error is None:
            raise exc
        raise error(exc.terse()) from None
    return rung_value


def default(key: str) -> Any:
    """The default of one spec setting (``SETTINGS[key].default``), for dataclass fields."""
    return SETTINGS[key].default


@dataclass(frozen=True)
class DataSpec:
    """Where the images come from and how the validation split is carved."""

    name: str = default("data.name")
    root: str = default("data.root")
    val_fraction: float = default("data.val_fraction")
    resolution: int = default("data.resolution")
    subset: int | None = default("data.subset")
    classes: tuple[str, ...] | None = None  # keep only these classes, labelled in this order


@dataclass(frozen=True)
class ModelSpec:
    """Which torchvision ResNet, and which initial weights."""

    arch: str = default("model.arch")
    weights: str = default("model.weights")


@dataclass(frozen=True)
class TrainSpec:
    """Fixed training settings, and the values of hyperparameters that are not searched."""

    lr: float = TRAIN_DEFAULTS["lr"]
    batch_size: int = TRAIN_DEFAULTS["batch_size"]
    frozen_layers: int = TRAIN_DEFAULTS["frozen_layers"]
    aug_strength: float = TRAIN_DEFAULTS["aug_strength"]
    weight_decay: float = TRAIN_DEFAULTS["weight_decay"]
    label_smoothing: float = TRAIN_DEFAULTS["label_smoothing"]
    stem: str = TRAIN_DEFAULTS["stem"]
    resolution: int = TRAIN_DEFAULTS["resolution"]
    eval_batch_size: int = default("train.eval_batch_size")
    compile: bool = default("train.compile")
    precision: str = default("train.precision")  # each trial records what it used (user attr "precision")
    schedule: str = default("train.schedule")
    decay_fraction: float = default("train.decay_fraction")
    cooldown_epochs: float = default("train.cooldown_epochs")
    ema_halflife: float = default("train.ema_halflife")
    rung_value: str = default("train.rung_value")
    checkpoint_every: int = default("train.checkpoint_every")


@dataclass(frozen=True)
class CheckpointSpec:
    """Which trained models outlive their trial."""

    keep_best: int = default("checkpoint.keep_best")  # SETTINGS says why three


@dataclass(frozen=True)
class TrackingSpec:
    """Experiment trackers every worker logs its trials to (sweep.tracking); empty strings are off."""

    mlflow: str = default("tracking.mlflow")
    tensorboard: str = default("tracking.tensorboard")

    @property
    def enabled(self) -> bool:
        return bool(self.mlflow or self.tensorboard)


@dataclass(frozen=True)
class SamplerSpec:
    """Optuna sampler type plus keyword arguments passed to it."""

    type: str = "tpe"
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PrunerSpec:
    """Optuna pruner type plus keyword arguments passed to it."""

    type: str = "hyperband"
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParamSpec:
    """One searched hyperparameter: a float/int range or a list of choices."""

    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class StudySpec:
    """The whole, resolved study: what every worker reads from the database."""

    name: str
    n_trials: int = default("n_trials")
    max_hours: float | None = default("max_hours")
    epochs: int = default("epochs")
    seed: int = default("seed")
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    params: Mapping[str, ParamSpec] = field(default_factory=dict)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain JSON-able data (what is stored in the study)."""
        out = dataclasses.asdict(self)
        if out["max_hours"] is None:  # unset: absent, so specs stored before the key keep their fingerprint
            del out["max_hours"]
        if not self.tracking.enabled:  # off: absent, for the same reason
            del out["tracking"]
        out["sampler"] = {"type": self.sampler.type, **dict(self.sampler.args)}
        out["pruner"] = {"type": self.pruner.type, **dict(self.pruner.args)}
        params: dict[str, Any] = {}
        for name, p in self.params.items():
            d: dict[str, Any] = {"type": p.type}
            if p.type == "categorical":
                d["choices"] = list(p.choices or ())
            else:
                d.update(low=p.low, high=p.high, log=p.log)
                if p.step is not None:
                    d["step"] = p.step
            params[name] = d
        out["params"] = params
        return json.loads(json.dumps(out))

    def fingerprint(self) -> str:
        """A short hash of the resolved spec: equal specs have equal fingerprints."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def fixed_params(self) -> dict[str, Any]:
        """Hyperparameters not searched, with the values every trial uses."""
        return {k: getattr(self.train, k) for k in SEARCHABLE if k not in self.params}


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class SpecFile:
    """A spec SPEC can name: its name, its file and where it comes from."""

    name: str
    path: Path
    source: str  # "local" (./studies/ or a path) or "built-in" (shipped with sweep)
    about: str = ""  # the file's first comment line

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "path": str(self.path), "source": self.source, "about": self.about}


def builtin_specs_dir() -> Path:
    """The specs shipped with sweep (package data; in a checkout, links to the top-level studies/)."""
    return Path(__file__).resolve().parent / "studies"


def spec_files(studies_dir: str | Path = "studies") -> list[SpecFile]:
    """Every spec a name can pick, sorted by name: ./studies/ first, then built-in ones it does not shadow."""
    found: dict[str, SpecFile] = {}
    for folder, source in ((Path(studies_dir), "local"), (builtin_specs_dir(), "built-in")):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            if path.stem not in found:
                found[path.stem] = SpecFile(path.stem, path, source, _first_comment(path))
    return [found[k] for k in sorted(found)]


def _first_comment(path: Path) -> str:
    """The first sentence of the file's leading comment block."""
    try:
        lines = path.read_text(encoding="utf-8").lstrip().splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    block = []
    for line in lines:
        if not line.startswith("#") or not line.lstrip("#").strip():
            break
        block.append(line.lstrip("#").strip())
    return re.split(r"(?<=[.?!])\s", " ".join(block), maxsplit=1)[0]


def find_spec_file(spec: str, studies_dir: str | Path = "studies") -> Path:
    """Resolve SPEC: a path to a .toml file, a name under ./studies/ (``lr-freeze``), or a built-in spec.

    A local file wins over the built-in spec of the same name, so a team can keep its own lr-freeze.
    """
    as_path = Path(spec)
    if as_path.suffix == ".toml" or "/" in spec or as_path.is_file():
        if as_path.is_file():
            return as_path
        raise SpecError("SPEC", spec, "file not found; give a spec name (sweep specs) or a path to a .toml file")
    known = {f.name: f for f in spec_files(studies_dir)}
    if spec in known:
        return known[spec].path
    allowed = f"one of {', '.join(known)}" if known else f"no specs found in {studies_dir}/ or built in"
    raise SpecError("SPEC", spec, f"no such study spec; expected {allowed}, or a path to a .toml file")


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; syntax errors become a SpecError naming the file and line."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(str(path), "<file>", f"invalid TOML: {exc}") from None


_BARE_WORD = re.compile(r"^[^\s\"'\[\]{}=,]+$")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``key.path=value``; the value is a TOML value, a bare word is a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    raw = raw.strip()
    path = key.split(".")
    if not sep or not key or any(not part or not re.fullmatch(r"[A-Za-z0-9_\-]+", part) for part in path):
        raise SpecError("--set", text, "expected KEY=VALUE with a dotted key, e.g. --set params.lr.high=0.01")
    if raw == "":
        raise SpecError(f"--set {key}", raw, "a value is required after '='")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if not _BARE_WORD.match(raw):
            raise SpecError(
                f"--set {key}", raw, 'not a TOML value (number, boolean, "string", [array]) or a bare word'
            ) from None
        value = raw
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the raw spec with every ``--set`` applied in order."""
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise SpecError(f"--set {'.'.join(path)}", value, f"{where} is a value, not a table")
            node = child
        node[path[-1]] = value
    return out


def load_spec(
    spec: str, *, overrides: list[str] | None = None, name: str | None = None, studies_dir: str | Path = "studies"
) -> StudySpec:
    """SPEC (name or path) + overrides + optional new name → a validated StudySpec."""
    path = find_spec_file(spec, studies_dir)
    raw = read_toml(path)
    raw = apply_overrides(raw, overrides or [])
    if name is not None:
        raw["name"] = name
    raw.setdefault("name", path.stem)
    return parse_spec(raw)


# --------------------------------------------------------------------------- validation


def _check_keys(table: Mapping[str, Any], prefix: str, allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            raise SpecError(f"{prefix}{key}", table[key], f"unknown key; allowed: {', '.join(allowed)}")


def _table(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise SpecError(key, value, "must be a table ([" + key + "])")
    return value


def _int(value: Any, fld: str, *, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(fld, value, "must be an integer")
    if (low is not None and value < low) or (high is not None and value > high):
        raise SpecError(fld, value, f"must be an integer in [{low}, {high if high is not None else '∞'}]")
    return value


def _float(
    value: Any,
    fld: str,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(fld, value, "must be a finite number")
    value = float(value)
    bad_low = low is not None and (value <= low if open_low else value < low)
    bad_high = high is not None and (value >= high if open_high else value > high)
    if bad_low or bad_high:
        lo, hi = "(" if open_low else "[", ")" if open_high else "]"
        raise SpecError(fld, value, f"must be a number in {lo}{low}, {high if high is not None else '∞'}{hi}")
    return value


def _str(value: Any, fld: str, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(fld, value, "must be a non-empty string")
    if choices is not None and value not in choices:
        raise SpecError(fld, value, f"must be one of {', '.join(choices)}")
    return value


def _bool(value: Any, fld: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(fld, value, "must be true or false")
    return value


def _classes(value: Any) -> tuple[str, ...]:
    ok = isinstance(value, list) and all(isinstance(c, str) and c for c in value)
    if not ok or len(value) < 2 or len(set(value)) != len(value):
        raise SpecError("data.classes", value, "must be an array of two or more distinct class names")
    return tuple(value)


def _check_hparam(name: str, value: Any, fld: str) -> Any:
    """Validate one value of a trainable hyperparameter (fixed, a bound or a categorical choice)."""
    return HPARAMS[name].check(value, fld)


def check_param_value(spec: StudySpec, name: str, value: Any, fld: str) -> Any:
    """A value given for one of ``spec``'s searched params (``sweep enqueue --param``), checked against
    the search space: a SpecError naming ``fld`` unless the study could have sampled it."""
    if name not in spec.params:
        raise SpecError(fld, value, f"not searched by this study; searched: {', '.join(spec.params) or 'nothing'}")
    p = spec.params[name]
    checked = _check_hparam(name, value, fld)
    if p.type == "categorical":
        if checked not in (p.choices or ()):
            raise SpecError(fld, value, f"must be one of {', '.join(map(str, p.choices or ()))}")
        return checked
    assert p.low is not None and p.high is not None
    if not p.low <= checked <= p.high:
        raise SpecError(fld, value, f"must be in [{p.low}, {p.high}]" + (" (log scale)" if p.log else ""))
    if p.step is not None:
        steps = (checked - p.low) / p.step
        if abs(steps - round(steps)) > 1e-9:
            raise SpecError(fld, value, f"must be {p.low} plus a multiple of step {p.step}")
    return checked


def _parse_param(name: str, raw: Any) -> ParamSpec:
    fld = f"params.{name}"
    if name not in SEARCHABLE:
        raise SpecError(fld, raw, f"unknown hyperparameter; searchable: {', '.join(SEARCHABLE)}")
    if not isinstance(raw, dict):
        raise SpecError(fld, raw, "must be a table with type = float | int | categorical")
    ptype = _str(raw.get("type"), f"{fld}.type", PARAM_TYPES)
    if ptype == "categorical":
        _check_keys(raw, f"{fld}.", ("type", "choices"))
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpecError(f"{fld}.choices", choices, "must be a non-empty array")
        checked = tuple(_check_hparam(name, c, f"{fld}.choices") for c in choices)
        if len(set(checked)) != len(checked):
            raise SpecError(f"{fld}.choices", choices, "must not repeat a value")
        return ParamSpec(type="categorical", choices=checked)
    _check_keys(raw, f"{fld}.", ("type", "low", "high", "log", "step"))
    for key in ("low", "high"):
        if key not in raw:
            raise SpecError(f"{fld}.{key}", None, f"is required for type = {ptype!r}")
    if ptype == "int":
        if HPARAMS[name].type is not int:
            raise SpecError(f"{fld}.type", ptype, "this hyperparameter is a float; use float or categorical")
        low, high = (_check_hparam(name, raw[k], f"{fld}.{k}") for k in ("low", "high"))
        step = _int(raw["step"], f"{fld}.step", low=1) if "step" in raw else None
    else:
        if HPARAMS[name].type is not float:
            raise SpecError(f"{fld}.type", ptype, "this hyperparameter is discrete; use int or categorical")
        low, high = (_check_hparam(name, raw[k], f"{fld}.{k}") for k in ("low", "high"))
        step = _float(raw["step"], f"{fld}.step", low=0.0, open_low=True) if "step" in raw else None
    if low > high:
        raise SpecError(f"{fld}.low", low, f"must be <= {fld}.high ({high})")
    log = _bool(raw.get("log", False), f"{fld}.log")
    if log and low <= 0:
        raise SpecError(f"{fld}.low", low, "must be > 0 when log = true")
    if log and step is not None:
        raise SpecError(f"{fld}.step", step, "cannot be combined with log = true")
    return ParamSpec(type=ptype, low=low, high=high, log=log, step=step)


_TOP_KEYS = (
    "name",
    "n_trials",
    "max_hours",
    "epochs",
    "seed",
    "data",
    "model",
    "train",
    "sampler",
    "pruner",
    "params",
    "checkpoint",
    "tracking",
)


def parse_spec(raw: Mapping[str, Any]) -> StudySpec:
    """Validate a raw (TOML-shaped) mapping into a StudySpec; raise SpecError on the first problem."""
    _check_keys(raw, "", _TOP_KEYS)
    name = _parse_name(raw.get("name"))
    data = _parse_data(_table(raw, "data"))
    model = _parse_model(_table(raw, "model"))
    train = _parse_settings(raw, "train", TrainSpec)
    checkpoint = _parse_settings(raw, "checkpoint", CheckpointSpec)
    tracking = _parse_tracking(raw)
    s = dict(_table(raw, "sampler"))
    sampler = SamplerSpec(type=_str(s.pop("type", SamplerSpec.type), "sampler.type", SAMPLERS), args=s)
    p = dict(_table(raw, "pruner"))
    pruner = PrunerSpec(type=_str(p.pop("type", PrunerSpec.type), "pruner.type", PRUNERS), args=p)
    params = _parse_params(raw.get("params", {}), sampler.type)
    spec = StudySpec(
        name=name,
        **{k: check(k, raw[k]) for k in ("n_trials", "max_hours", "epochs", "seed") if k in raw},
        data=data,
        model=model,
        train=train,
        sampler=sampler,
        pruner=pruner,
        params=params,
        checkpoint=checkpoint,
        tracking=tracking,
    )
    # Sampler/pruner arguments are checked against the real Optuna classes. Imported here, not at the
    # top: the table above must stay readable without Optuna (sweep.search needs only sweep.errors).
    from sweep.search import check_search_args

    check_search_args(spec)
    return spec


def _parse_name(name: Any) -> str:
    name = _str(name, "name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}", name):
        raise SpecError("name", name, "use letters, digits, '-', '_' and '.', at most 128 characters")
    return name


def _parse_data(d: dict[str, Any]) -> DataSpec:
    _check_keys(d, "data.", tuple(f.name for f in dataclasses.fields(DataSpec)))
    subset = d.get("subset")
    return DataSpec(
        **{
            k: check(f"data.{k}", d.get(k, default(f"data.{k}")))
            for k in ("name", "root", "val_fraction", "resolution")
        },
        subset=None if subset is None else check("data.subset", subset),
        classes=_classes(d["classes"]) if "classes" in d else None,
    )


def _parse_model(m: dict[str, Any]) -> ModelSpec:
    _check_keys(m, "model.", tuple(f.name for f in dataclasses.fields(ModelSpec)))
    return ModelSpec(**{k: check(f"model.{k}", m.get(k, default(f"model.{k}"))) for k in ("arch", "weights")})


_S = TypeVar("_S", TrainSpec, CheckpointSpec, TrackingSpec)


def _parse_settings(raw: Mapping[str, Any], key: str, cls: type[_S]) -> _S:
    """A section of plain settings: the keys given are checked, the dataclass fills in the rest."""
    t = _table(raw, key)
    _check_keys(t, f"{key}.", tuple(f.name for f in dataclasses.fields(cls)))
    out = cls(**{k: check(f"{key}.{k}", t[k]) for k in t})
    if isinstance(out, TrainSpec):
        check_rung_value(
            out.rung_value, schedule=out.schedule, cooldown_epochs=out.cooldown_epochs, ema_halflife=out.ema_halflife
        )
    return out


# scheme://user:PASSWORD@host: the password is group 2.
_URI_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^/@:]*:)([^/@]*)@")


def _parse_tracking(raw: Mapping[str, Any]) -> TrackingSpec:
    """``[tracking]``, with no password in the MLflow URI: the spec is stored in the database and shown in
    the report and by optuna-dashboard. MLflow reads credentials from the workers' environment instead."""
    tracking = _parse_settings(raw, "tracking", TrackingSpec)
    if _URI_PASSWORD.match(tracking.mlflow):
        raise SpecError(
            "tracking.mlflow",
            _URI_PASSWORD.sub(r"\1***@", tracking.mlflow),
            "no password in the URI (the spec is stored in the database and shown in reports); set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) on "
            "the workers",
        )
    return tracking


def _parse_params(params_raw: Any, sampler: str) -> dict[str, ParamSpec]:
    if not isinstance(params_raw, dict):
        raise SpecError("params", params_raw, "must be a table of [params.<name>] tables")
    params = {k: _parse_param(k, v) for k, v in params_raw.items()}
    if sampler == "grid":
        for k, ps in params.items():
            if ps.type == "float" and ps.step is None:
                raise SpecError(
                    f"params.{k}.type",
                    ps.type,
                    "the grid sampler needs categorical params or int/float ranges with a step",
                )
    return params


def spec_from_dict(stored: Mapping[str, Any]) -> StudySpec:
    """Rebuild the StudySpec a study stores (its ``to_dict()``), validating it again."""
    raw = copy.deepcopy(dict(stored))
    for key in ("subset", "classes"):  # to_dict() writes None; TOML has no null
        if key in raw.get("data", {}) and raw["data"][key] is None:
            del raw["data"][key]
    return parse_spec(raw)
