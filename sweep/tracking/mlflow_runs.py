"""One MLflow run per trial, in an experiment named after the study (``[tracking] mlflow = URI``).

Params: every hyperparameter the trial trained with. Metrics: ``val_accuracy`` and ``epoch_seconds``
per epoch (step = epoch), ``test_accuracy`` at the end. Tags: ``state`` (COMPLETE, PRUNED, FAIL),
``reason`` (why it was pruned or failed), ``kept_model`` (its final model's file while the study keeps
it), ``study``, ``trial`` and where it ran. The run ends FINISHED, KILLED (pruned) or FAILED.
Imported only by a worker whose study names an MLflow URI (``pip install 'sweep[mlflow]'``).
"""

from __future__ import annotations

import logging
import os

from optuna.trial import TrialState

from sweep.tracking import EpochDone, TrackerDown, TrialFinished, TrialStarted

try:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunStatus, RunTag
    from mlflow.exceptions import MlflowException
except ImportError:
    raise TrackerDown("MLflow is not installed here: pip install 'sweep[mlflow]'") from None

_STATUS = {
    TrialState.COMPLETE: RunStatus.to_string(RunStatus.FINISHED),
    TrialState.PRUNED: RunStatus.to_string(RunStatus.KILLED),
    TrialState.FAIL: RunStatus.to_string(RunStatus.FAILED),
}
# MLflow's client retries a request 7 times with exponential backoff (minutes in all). A tracker is a
# copy of what the database holds and logs beside training: a server that is down after a few seconds'
# retries costs one warning line instead. The user's own MLFLOW_HTTP_REQUEST_* settings win.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class MlflowTracker:
    """Logs a worker's trials to the MLflow tracking server (or database) at ``uri``."""

    def __init__(self, uri: str, study: str) -> None:
        for key, value in _HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        # Its INFO lines (database migrations on first use) would interleave with the worker's output.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self._experiment(study)
        self.runs: dict[int, str] = {}  # trial number → its open run

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # another worker of the study created it a moment ago
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def started(self, event: TrialStarted) -> None:
        run = self.client.create_run(
            self.experiment_id,
            start_time=_ms(event.time),
            run_name=f"trial-{event.number}",
            tags={"study": event.study, "trial": str(event.number)},
        )
        self.runs[event.number] = run.info.run_id
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in sorted(event.params.items())])

    def epoch(self, event: EpochDone) -> None:
        run_id = self.runs.get(event.number)
        if run_id is None:
            return
        at = _ms(event.time)
        self.client.log_batch(
            run_id,
            metrics=[
                Metric("val_accuracy", event.val_accuracy, at, event.epoch),
                Metric("epoch_seconds", event.seconds, at, event.epoch),
            ],
        )

    def finished(self, event: TrialFinished) -> None:
        run_id = self.runs.pop(event.number, None)
        if run_id is None:  # it ended before it trained (e.g. sampling failed): a run all the same
            self.started(TrialStarted(event.study, event.number, event.params, event.time))
            run_id = self.runs.pop(event.number)
        tags = {"state": event.state.name, **event.tags}
        if event.reason:
            tags["reason"] = event.reason
        if event.kept_model:
            tags["kept_model"] = event.kept_model
        metrics = []
        if event.test_accuracy is not None:
            metrics.append(Metric("test_accuracy", event.test_accuracy, _ms(event.time), event.epochs_run))
        self.client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(run_id, status=_STATUS.get(event.state, "FAILED"), end_time=_ms(event.time))

    def close(self) -> None:
        """Runs still open belong to trials this worker left unfinished (an error outside training): KILLED."""
        for run_id in self.runs.values():
            self.client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.KILLED))
        self.runs.clear()
