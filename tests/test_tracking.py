"""Trackers (``[tracking]``): a real tiny sweep logged to MLflow and TensorBoard, read back with their own
readers (MlflowClient, TensorBoard's EventAccumulator); a tracker that is down costs one line, no trial."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from helpers import write_tiny_spec
from optuna.trial import FrozenTrial, TrialState

from sweep.kept import kept_models
from sweep.service import WorkerEvents, create_study, enqueue_trial, run_worker
from sweep.spec import SpecError, load_spec
from sweep.tracking import EpochDone, TrialStarted, _Channel, tracked

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("torch_one_thread")
MEDIAN = "n_startup_trials = 0\nn_warmup_steps = 0"


@dataclass
class Swept:
    """A finished tiny sweep with both trackers on, and what its worker said."""

    root: Path
    trials: list[FrozenTrial]
    kept: dict[int, str]
    messages: list[str]

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"


def _sweep(root: Path, tracking: list[str], *, epochs: int, configs: list[list[str]]) -> Swept:
    """2 trials of ``epochs`` epochs, run in order from ``configs`` (queued), with ``tracking`` overrides."""
    write_tiny_spec(root, n_trials=len(configs), epochs=epochs, pruner="median", pruner_args=MEDIAN)
    url = f"sqlite:///{root / 'sweep.db'}"
    create_study(
        "tiny",
        storage_url=url,
        studies_dir=root / "studies",
        overrides=["checkpoint.keep_best=1", "train.precision=fp32", *tracking],
    )
    for config in configs:
        enqueue_trial(url, "tiny", config)
    messages: list[str] = []
    run_worker(
        "tiny",
        storage_url=url,
        device="cpu",
        artifacts=str(root / "artifacts"),
        events=WorkerEvents(message=messages.append),
    )
    study = optuna.load_study(study_name="tiny", storage=url)
    kept = {k.trial: k.path or k.artifact_id for k in kept_models(study.user_attrs)}
    return Swept(root, study.get_trials(), kept, messages)


# The second config's first epoch ends below the first trial's, so the median pruner stops it (CPU
# training is seeded: the same curves every run).
CONFIGS = [
    ["lr=1e-3", "frozen_layers=5", "batch_size=64", "aug_strength=1.0"],
    ["lr=1e-2", "frozen_layers=0", "batch_size=32", "aug_strength=0.0"],
]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Swept:
    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SWEEP_CACHE_DIR", str(root / "cache"))
        tracking = [f'tracking.mlflow="sqlite:///{root / "mlflow.db"}"', f'tracking.tensorboard="{root / "tb"}"']
        return _sweep(root, tracking, epochs=2, configs=CONFIGS)


def test_the_sweep_ran_one_complete_and_one_pruned_trial(swept: Swept) -> None:
    assert [t.state for t in swept.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert not [m for m in swept.messages if "tracking" in m]  # both trackers worked: nothing said


def test_one_mlflow_run_per_trial_read_back_with_mlflows_client(swept: Swept) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=swept.mlflow_uri)
    experiment = client.get_experiment_by_name("tiny")  # the study is the experiment
    assert experiment is not None
    runs = {int(r.data.tags["trial"]): r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == [t.number for t in swept.trials]
    for trial in swept.trials:
        run = runs[trial.number]
        assert run.info.run_name == f"trial-{trial.number}" and run.data.tags["study"] == "tiny"
        assert run.data.tags["state"] == trial.state.name
        # Every hyperparameter it trained with: the searched ones and the study's fixed ones.
        assert run.data.params["lr"] == str(trial.params["lr"])
        assert run.data.params["frozen_layers"] == str(trial.params["frozen_layers"])
        assert run.data.params["weight_decay"] == "0.05" and run.data.params["stem"] == "imagenet"
        assert run.data.tags["device"] == "cpu" and run.data.tags["precision"] == "fp32"
        curve = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [(m.step, m.value) for m in curve] == sorted(trial.intermediate_values.items())
        seconds = client.get_metric_history(run.info.run_id, "epoch_seconds")
        assert [m.value for m in seconds] == pytest.approx(trial.user_attrs["epoch_seconds"])
        assert [m.step for m in seconds] == list(range(1, len(seconds) + 1))
    done, pruned = runs[0], runs[1]
    assert done.info.status == "FINISHED" and pruned.info.status == "KILLED"
    assert done.data.metrics["test_accuracy"] == pytest.approx(swept.trials[0].user_attrs["test_accuracy"])
    assert done.data.tags["kept_model"] == swept.kept[0] and Path(swept.kept[0]).is_file()
    assert "reason" not in done.data.tags and "test_accuracy" not in pruned.data.metrics
    assert pruned.data.tags["reason"] == "pruner at epoch 1" and "kept_model" not in pruned.data.tags


def _events(run: Path) -> object:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run))
    accumulator.Reload()
    return accumulator


def test_one_tensorboard_run_per_trial_read_back_with_tensorboards_reader(swept: Swept) -> None:
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    folder = swept.root / "tb" / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == ["trial-0000", "trial-0001"]
    for trial in swept.trials:
        events = _events(folder / f"trial-{trial.number:04d}")
        curve = [(s.step, s.value) for s in events.Scalars("val_accuracy")]
        expected = sorted(trial.intermediate_values.items())
        assert [step for step, _ in curve] == [step for step, _ in expected]
        assert [v for _, v in curve] == pytest.approx([v for _, v in expected], abs=1e-6)  # stored as float32
        assert [s.value for s in events.Scalars("epoch_seconds")] == pytest.approx(
            trial.user_attrs["epoch_seconds"], rel=1e-6
        )
        plugin = {
            tag: plugin_data_pb2.HParamsPluginData.FromString(content)
            for tag, content in events.PluginTagToContent("hparams").items()
        }
        start = plugin["_hparams_/session_start_info"].session_start_info
        assert start.hparams["lr"].number_value == pytest.approx(trial.params["lr"])
        assert start.hparams["stem"].string_value == "imagenet"
        metrics = [m.name.tag for m in plugin["_hparams_/experiment"].experiment.metric_infos]
        assert metrics == ["val_accuracy", "test_accuracy"]
        assert plugin["_hparams_/session_end_info"].session_end_info.status == api_pb2.STATUS_SUCCESS
    done = _events(folder / "trial-0000")
    (test,) = done.Scalars("test_accuracy")
    assert test.step == 2 and test.value == pytest.approx(swept.trials[0].user_attrs["test_accuracy"], abs=1e-6)
    assert "test_accuracy" not in _events(folder / "trial-0001").Tags()["scalars"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_trackers_that_are_down_cost_one_line_each_and_no_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEP_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "a-file").write_text("not a folder")
    uri = f"http://127.0.0.1:{_closed_port()}"  # nothing listens there
    tracking = [f'tracking.mlflow="{uri}"', f'tracking.tensorboard="{tmp_path / "a-file" / "tb"}"']
    swept = _sweep(tmp_path, tracking, epochs=1, configs=CONFIGS)
    assert [t.state for t in swept.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    said = [m for m in swept.messages if "track" in m.lower()]
    assert len(said) == 2, swept.messages
    mlflow_line, tensorboard_line = sorted(said)
    assert mlflow_line.startswith(f"MLflow ({uri}) tracking off for this worker (MlflowException: "), mlflow_line
    assert tensorboard_line.startswith(f"TensorBoard ({tmp_path / 'a-file' / 'tb'}) tracking off for this worker (")
    assert all(line.endswith("); the trials go on untracked") for line in said)


def test_a_missing_package_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("mlflow", "tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)  # imported, they fail as if not installed
    for name in ("sweep.tracking.mlflow_runs", "sweep.tracking.tensorboard_runs"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # imported again: no earlier copy
    spec = load_spec("demo", overrides=["tracking.mlflow=http://127.0.0.1:5000", "tracking.tensorboard=tb"])
    said: list[str] = []
    with tracked(spec, optuna.create_study(study_name="demo"), WorkerEvents(message=said.append)):
        pass
    assert sorted(said) == [
        "MLflow (http://127.0.0.1:5000) tracking off for this worker (MLflow is not installed here: "
        "pip install 'sweep[mlflow]'); the trials go on untracked",
        "TensorBoard (tb) tracking off for this worker (TensorBoard is not installed here: "
        "pip install 'sweep[tensorboard]'); the trials go on untracked",
    ]


def test_tracking_settings_live_in_the_spec() -> None:
    default = load_spec("demo")
    assert default.tracking.mlflow == "" and default.tracking.tensorboard == "" and not default.tracking.enabled
    assert "tracking" not in default.to_dict()  # off: absent, so specs stored before the key compare equal
    on = load_spec("demo", overrides=["tracking.mlflow=http://mlflow:5000", "tracking.tensorboard=runs/tb"])
    assert (on.tracking.mlflow, on.tracking.tensorboard) == ("http://mlflow:5000", "runs/tb")
    assert on.to_dict()["tracking"] == {"mlflow": "http://mlflow:5000", "tensorboard": "runs/tb"}
    with pytest.raises(SpecError, match="tracking.wandb = 1: unknown key; allowed: mlflow, tensorboard"):
        load_spec("demo", overrides=["tracking.wandb=1"])
    with pytest.raises(SpecError, match="tracking.mlflow = 5000: must be a non-empty string"):
        load_spec("demo", overrides=["tracking.mlflow=5000"])
    # The spec is stored in the database and shown in reports: credentials stay in the workers' environment.
    with pytest.raises(SpecError, match=r"tracking.mlflow = 'https://me:\*\*\*@mlflow:5000': no password") as err:
        load_spec("demo", overrides=["tracking.mlflow=https://me:s3cret@mlflow:5000"])
    assert "s3cret" not in str(err.value) and "MLFLOW_TRACKING_PASSWORD" in str(err.value)
    assert load_spec("demo", overrides=["tracking.mlflow=https://me@mlflow:5000"]).tracking.mlflow


def test_untracked_commands_never_import_the_trackers(tmp_path: Path) -> None:
    """create, status and the worker module pay nothing for trackers, even for a tracked study."""
    write_tiny_spec(tmp_path)
    code = (
        "import sys\n"
        "from sweep.service import create_study, status_of\n"
        "import sweep.service.worker\n"
        f"url = 'sqlite:///{tmp_path / 'sweep.db'}'\n"
        f"create_study('tiny', storage_url=url, studies_dir='{tmp_path / 'studies'}',\n"
        "             overrides=['tracking.mlflow=http://127.0.0.1:5000', 'tracking.tensorboard=tb'])\n"
        "status_of(url, 'tiny')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


class _FailsFromTheSecondEpoch:
    """A tracker whose server goes away mid-trial."""

    def __init__(self) -> None:
        self.logged: list[object] = []

    def started(self, event: TrialStarted) -> None:
        self.logged.append(event)

    def epoch(self, event: EpochDone) -> None:
        if event.epoch >= 2:
            raise ConnectionError(f"gone at epoch {event.epoch}\nsecond line")
        self.logged.append(event)

    def finished(self, event: object) -> None:
        self.logged.append(event)

    def close(self) -> None:
        self.logged.append("closed")


def test_a_tracker_that_fails_later_is_said_once_and_then_left_alone() -> None:
    tracker, said = _FailsFromTheSecondEpoch(), []
    channel = _Channel("Fake (x)", lambda: tracker, said.append, "")
    channel.send(lambda t: t.started(TrialStarted("s", 0, {}, 0.0)))
    for epoch in (1, 2, 3):
        channel.send(lambda t, e=epoch: t.epoch(EpochDone(0, e, 0.5, 1.0, 0.0)))
    channel.close(time.monotonic() + 30)
    assert said == [
        "Fake (x) tracking off for this worker (ConnectionError: gone at epoch 2); the trials go on untracked"
    ]
    assert [type(x).__name__ if x != "closed" else x for x in tracker.logged] == ["TrialStarted", "EpochDone", "closed"]
