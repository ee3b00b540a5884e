"""The use cases behind the CLI: create a study, run a worker, write a report, describe studies.

Nothing here prints: results come back as plain data and progress goes through callbacks, so the
CLI, the tests and a notebook can all drive the same code. Errors a user can fix are raised as
``ServiceError`` (or SpecError / StorageError) with one line that says what to do.

One module per job: :mod:`~sweep.service.common` holds what every use case shares (``ServiceError``,
finding a study, its spec, its data and a device); :mod:`~sweep.service.create`
makes a study; :mod:`~sweep.service.plan` turns ``sweep worker``'s options into processes,
:mod:`~sweep.service.gate` is the budget gate (``BudgetGate``) and :mod:`~sweep.service.worker` the
worker's loop and trial runner; :mod:`~sweep.service.status` describes studies (status, list,
report); :mod:`~sweep.service.lifecycle` pauses, resumes, stops, extends and deletes them;
:mod:`~sweep.service.warm` queues configs and warm-starts a study from another;
:mod:`~sweep.service.results` exports, predicts with and reruns trained models;
:mod:`~sweep.service.dashboard` serves optuna-dashboard on the storage; and
:mod:`~sweep.service.clean` clears the artifact folder of files no trial refers to. The public names are
re-exported here; import from ``sweep.service``. None of it imports torch at module level.
"""

from sweep.service.clean import CleanResult, clean_artifacts
from sweep.service.common import (
    ServiceError,
    load_spec_data,
    load_spec_of,
    open_read_only,
    quiet_optuna,
    resolve_device,
    resolve_study_name,
)
from sweep.service.create import CreateResult, create_study
from sweep.service.dashboard import Dashboard, start_dashboard
from sweep.service.gate import BudgetGate, Decision
from sweep.service.lifecycle import (
    ControlResult,
    DeleteResult,
    delete_study,
    extend_study,
    pause_study,
    resume_study,
    stop_study,
)
from sweep.service.plan import WorkerPlan, plan_workers
from sweep.service.results import ExportResult, RerunResult, export_trial, predict, rerun_trial
from sweep.service.status import (
    StudyStatus,
    default_report_path,
    list_statuses,
    status_of,
    study_status,
    write_report,
)
from sweep.service.warm import EnqueueResult, enqueue_trial
from sweep.service.worker import BREAKER_TRIPS, EXIT_DISK_FULL, TrialRunner, WorkerEvents, WorkerSummary, run_worker

__all__ = [
    "BREAKER_TRIPS",
    "EXIT_DISK_FULL",
    "BudgetGate",
    "CleanResult",
    "ControlResult",
    "CreateResult",
    "Dashboard",
    "DeleteResult",
    "Decision",
    "EnqueueResult",
    "ExportResult",
    "RerunResult",
    "ServiceError",
    "StudyStatus",
    "TrialRunner",
    "WorkerEvents",
    "WorkerPlan",
    "WorkerSummary",
    "clean_artifacts",
    "create_study",
    "default_report_path",
    "delete_study",
    "enqueue_trial",
    "export_trial",
    "extend_study",
    "list_statuses",
    "load_spec_data",
    "load_spec_of",
    "open_read_only",
    "pause_study",
    "plan_workers",
    "predict",
    "quiet_optuna",
    "rerun_trial",
    "start_dashboard",
    "resolve_device",
    "resolve_study_name",
    "resume_study",
    "run_worker",
    "status_of",
    "stop_study",
    "study_status",
    "write_report",
]
