"""What a study looks like: ``sweep status`` and ``sweep list`` (``StudyStatus``), ``sweep report`` (HTML)."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from sweep import control, record
from sweep.control import SweepState
from sweep.kept import KeptModel, kept_models
from sweep.service.common import open_read_only, quiet_optuna, resolve_study_name
from sweep.storage import mask_url, open_storage, sqlite_path, study_names

if TYPE_CHECKING:
    from sweep.report import CostSummary  # a type only: the report is imported when a status is computed

# A file name stays well under every filesystem's 255 bytes, whatever the study names.
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_STEM = 96


def report_file_stem(names: Sequence[str]) -> str:
    """A file name for a report of ``names`` ("a+b"): no separators, no ``..``, capped in length.

    Study names come from whoever created the study (Optuna accepts any string): ``../x`` or a
    name of 200 characters must still give one file inside the reports folder. A name that had to
    change gets a short hash of the original, so two different studies never share a report file.
    """
    stem = "+".join(_safe(n, _MAX_STEM) for n in names)
    return stem if len(stem) <= _MAX_STEM else _safe(stem, _MAX_STEM, force_hash=True)


def _safe(name: str, limit: int, *, force_hash: bool = False) -> str:
    safe = _NAME_CHARS.sub("_", name).lstrip(".") or "study"
    if safe == name and len(safe) <= limit and not force_hash:
        return safe
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:10]
    return f"{safe[: limit - 11]}-{digest}"


def default_report_path(names: Sequence[str], storage_url: str) -> Path:
    """storage/reports/<study>.html beside the SQLite file (or under ./storage for PostgreSQL)."""
    path = sqlite_path(storage_url)
    home = path.parent if path is not None else Path("storage")
    return home / "reports" / f"{report_file_stem(names)}.html"


def write_report(
    names: Sequence[str],
    *,
    storage_url: str,
    output: str | Path | None = None,
    plotlyjs: str = "inline",
    refresh_s: int | None = None,
) -> Path:
    """Write one self-contained HTML report for one or more studies; return its path.

    ``refresh_s`` makes the page reload itself (``sweep report --watch``).
    """
    from sweep import report

    storage = open_read_only(storage_url)
    try:
        if not names:
            names = [resolve_study_name(storage, None, storage_url)]
        names = [resolve_study_name(storage, n, storage_url) for n in names]
        studies = [optuna.load_study(study_name=n, storage=storage) for n in names]
        out = Path(output) if output else default_report_path(names, storage_url)
        return report.write_report(
            studies, out, storage_label=mask_url(storage_url), plotlyjs=plotlyjs, refresh_s=refresh_s
        )
    finally:
        if hasattr(storage, "close"):  # --watch opens a storage per refresh: no connection left behind
            storage.close()


@dataclass(frozen=True)
class RunningTrial:
    """A trial being trained now, as ``sweep status`` lists it."""

    number: int
    host: str
    device: str
    epoch: int  # epochs done so far
    last_acc: float | None  # the last epoch's validation accuracy
    started: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "host": self.host,
            "device": self.device,
            "epoch": self.epoch,
            "last_acc": self.last_acc,
        }


@dataclass(frozen=True)
class StudyStatus:
    """A study at a glance, for ``sweep status`` and ``sweep list``."""

    name: str
    n_trials: int
    states: dict[str, int]
    best_value: float | None
    best_params: dict[str, Any]
    best_number: int | None
    running: tuple[RunningTrial, ...]
    state: SweepState = SweepState.RUNNING
    kept: tuple[KeptModel, ...] = ()  # trials whose final model is kept (best first)
    cost: CostSummary | None = None  # accuracy against compute
    compute_hours: float = 0.0  # summed seconds of every epoch trained, in hours (control.compute_seconds)
    max_hours: float | None = None  # the spec's budget of compute, if any


def study_status(storage: optuna.storages.BaseStorage, name: str) -> StudyStatus:
    """Trials by state, best trial and running trials of one study."""
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(complete, key=lambda t: t.value) if complete else None
    from sweep.report import cost_summary_of

    attrs = study.user_attrs
    spec = record.spec(attrs)
    try:
        budget = control.budget(attrs, int(spec.get("n_trials", 0)))
    except (TypeError, ValueError):
        budget = 0
    running = tuple(
        RunningTrial(
            number=t.number,
            host=record.host(t) or "?",
            device=record.device(t) or "?",
            epoch=record.epochs_run(t) or 0,
            last_acc=t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None,
            started=t.datetime_start,
        )
        for t in trials
        if t.state == TrialState.RUNNING
    )
    running_ids = [t._trial_id for t in trials if t.state == TrialState.RUNNING]
    return StudyStatus(
        name=name,
        n_trials=budget,
        states=dict(states),
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else {},
        best_number=best.number if best else None,
        running=running,
        state=control.state_of(
            attrs, budget, trials, live_running(storage, study._study_id, running_ids), _max_hours(spec)
        ),
        kept=kept_models(attrs),
        compute_hours=control.compute_seconds(trials) / 3600,
        max_hours=_max_hours(spec),
        cost=cost_summary_of(name, trials, spec),
    )


def _max_hours(spec: dict[str, Any]) -> float | None:
    value = spec.get("max_hours")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def live_running(storage: Any, study_id: int, running_ids: Sequence[int]) -> int | None:
    """How many running trials still beat: RUNNING ones minus those past the grace period (the trials
    of dead workers, until a worker's stale check fails them). None when the storage keeps no heartbeats."""
    if not running_ids:
        return 0
    backend = getattr(storage, "_backend", storage)
    stale = getattr(backend, "_get_stale_trial_ids", None)  # Optuna's heartbeat API (BaseHeartbeat)
    if stale is None or not getattr(backend, "get_heartbeat_interval", lambda: None)():
        return None
    return len(set(running_ids) - set(stale(study_id)))


def _open_with_heartbeats(storage_url: str) -> Any:
    """A read-only storage that knows the heartbeat settings, to tell live running trials from dead ones."""
    quiet_optuna()
    return open_storage(storage_url, create=False, heartbeat=True)


def list_statuses(storage_url: str) -> list[StudyStatus]:
    """Status of every study in the storage."""
    storage = _open_with_heartbeats(storage_url)
    return [study_status(storage, n) for n in sorted(study_names(storage))]


def status_of(storage_url: str, name: str | None) -> StudyStatus:
    """Status of one study (or the only one)."""
    storage = _open_with_heartbeats(storage_url)
    return study_status(storage, resolve_study_name(storage, name, storage_url))
