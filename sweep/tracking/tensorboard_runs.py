"""One TensorBoard run folder per trial: ``<folder>/<study>/trial-NNNN`` (``[tracking] tensorboard = DIR``).

Scalars ``val_accuracy`` and ``epoch_seconds`` per epoch (step = epoch), ``test_accuracy`` at the end;
the HParams plugin's session (every hyperparameter, the two accuracies as metrics, and the ending:
success for a completed or pruned trial, failure); the text ``outcome``: its state and why it was pruned
or failed. ``tensorboard --logdir <folder>`` shows them.
Imported only by a worker whose study names a folder (``pip install 'sweep[tensorboard]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from sweep.tracking import EpochDone, TrackerDown, TrialFinished, TrialStarted

try:
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams
except ImportError:
    raise TrackerDown("TensorBoard is not installed here: pip install 'sweep[tensorboard]'") from None

METRICS = ("val_accuracy", "test_accuracy")
# The plugin knows success, failure, running and unknown: a pruned trial ended as the pruner meant it to.
_STATUS = {TrialState.COMPLETE: api_pb2.STATUS_SUCCESS, TrialState.PRUNED: api_pb2.STATUS_SUCCESS}


def _session_end(state: TrialState) -> Summary:
    """The HParams plugin's end of a session, with the trial's ending (torch's helper knows only success)."""
    info = plugin_data_pb2.SessionEndInfo(status=_STATUS.get(state, api_pb2.STATUS_FAILURE))
    content = plugin_data_pb2.HParamsPluginData(session_end_info=info, version=metadata.PLUGIN_DATA_VERSION)
    meta = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString())
    )
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=meta)])


def _hparam(value: Any) -> Any:
    """A value the HParams plugin takes (number, string, bool); anything else as its text."""
    return value if isinstance(value, int | float | str | bool) else str(value)


class TensorBoardTracker:
    """Writes a worker's trials as TensorBoard runs under ``folder/study``."""

    def __init__(self, folder: str, study: str) -> None:
        self.root = Path(folder) / study  # study names have no separators (sweep.spec checks)
        self.root.mkdir(parents=True, exist_ok=True)  # an unwritable folder fails here, once
        self.writers: dict[int, SummaryWriter] = {}

    def _writer(self, number: int) -> SummaryWriter:
        return SummaryWriter(log_dir=str(self.root / f"trial-{number:04d}"))

    def started(self, event: TrialStarted) -> None:
        writer = self.writers[event.number] = self._writer(event.number)
        experiment, session_start, _ = hparams(
            {k: _hparam(v) for k, v in event.params.items()}, dict.fromkeys(METRICS, 0.0)
        )
        writer.file_writer.add_summary(experiment, walltime=event.time)
        writer.file_writer.add_summary(session_start, walltime=event.time)
        writer.flush()

    def epoch(self, event: EpochDone) -> None:
        writer = self.writers.get(event.number)
        if writer is None:
            return
        writer.add_scalar("val_accuracy", event.val_accuracy, event.epoch, walltime=event.time)
        writer.add_scalar("epoch_seconds", event.seconds, event.epoch, walltime=event.time)
        writer.flush()  # a live `tensorboard --logdir` sees each epoch as it ends

    def finished(self, event: TrialFinished) -> None:
        if event.number not in self.writers:
            self.started(TrialStarted(event.study, event.number, event.params, event.time))
        writer = self.writers.pop(event.number)
        if event.test_accuracy is not None:
            writer.add_scalar("test_accuracy", event.test_accuracy, event.epochs_run, walltime=event.time)
        outcome = event.state.name + (f": {event.reason}" if event.reason else "")
        writer.add_text("outcome", outcome, event.epochs_run, walltime=event.time)
        writer.file_writer.add_summary(_session_end(event.state), walltime=event.time)
        writer.close()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
