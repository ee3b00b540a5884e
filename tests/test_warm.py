"""Prior evidence: `sweep enqueue` (configs a user believes in) and `sweep create --warm-start OLD`."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from helpers import LOCAL_URL, local_study, write_tiny_spec
from optuna.trial import TrialState
from typer.testing import CliRunner

from sweep import record, report
from sweep.cli import app
from sweep.service import run_worker

pytestmark = pytest.mark.usefixtures("torch_one_thread")
runner = CliRunner()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWEEP_CACHE_DIR", str(tmp_path / "cache"))
    write_tiny_spec(tmp_path, n_trials=3, epochs=1)
    return tmp_path


def _invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_an_enqueued_config_runs_first_and_counts_against_the_budget(project: Path) -> None:
    _invoke("create", "tiny")
    out = _invoke("enqueue", "tiny", "--param", "lr=3e-3", "--param", "frozen_layers=2")
    assert out.strip() == "study tiny: queued lr=0.003, frozen_layers=2 (1 queued, budget 3 trials)"
    run_worker("tiny", storage_url=LOCAL_URL, device="cpu")
    trials = local_study().trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3  # the budget stays exact
    first = trials[0]
    assert first.params["lr"] == 3e-3 and first.params["frozen_layers"] == 2
    assert first.user_attrs[record.ENQUEUED.name] is True and "batch_size" in first.params  # the rest was sampled
    assert not any(record.ENQUEUED.name in t.user_attrs for t in trials[1:])
    result = runner.invoke(app, ["enqueue", "tiny", "--param", "lr=3e-3"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: study 'tiny': its budget of 3 trials is spent (3 finished, running or queued); "
        "raise it first: sweep extend tiny --n-trials 4"
    )


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("momentum=0.9", "--param momentum = 0.9: not searched by this study; searched: lr, batch_size"),
        ("lr=0.5", "--param lr = 0.5: must be in [0.001, 0.01] (log scale)"),
        ("frozen_layers=1.5", "--param frozen_layers = 1.5: "),
        ("frozen_layers=9", "--param frozen_layers = 9: must be an integer in [0, 5]"),
        ("batch_size=48", "--param batch_size = 48: must be one of 32, 64"),
        ("lr", "--param = 'lr': expected NAME=VALUE, e.g. --param lr=3e-4"),
    ],
)
def test_bad_params_are_one_line_and_queue_nothing(project: Path, param: str, message: str) -> None:
    _invoke("create", "tiny")
    result = runner.invoke(app, ["enqueue", "tiny", "--param", param])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {message}"), line
    assert local_study().trials == []


def test_a_warm_start_copies_finished_trials_inside_the_new_space(project: Path) -> None:
    _invoke("create", "tiny")
    run_worker("tiny", storage_url=LOCAL_URL, device="cpu")
    old = {t.number: t for t in local_study().trials}
    # A narrower lr range: old trials outside it are left out.
    cut = sorted(t.params["lr"] for t in old.values())[1]
    out = _invoke(
        "create",
        "tiny",
        "--name",
        "new",
        "--warm-start",
        "tiny",
        "--set",
        f"params.lr.low={cut}",
        "--set",
        "sampler.type='tpe'",
        "--set",
        "sampler.n_startup_trials=2",
    )
    assert "2 finished trials of tiny copied in as a warm start" in out
    copies = local_study("new").trials
    assert len(copies) == 2 and all(t.state == TrialState.COMPLETE for t in copies)
    for t in copies:
        source = old[int(t.user_attrs[record.WARM_START_FROM.name].split("#")[1])]
        assert t.user_attrs[record.WARM_START_FROM.name].startswith("tiny#")
        assert t.params == source.params and t.value == source.value
        assert t.intermediate_values == source.intermediate_values
    assert local_study("new").user_attrs["n_trials"] == 5  # 3 trials of its own still to run
    run_worker("new", storage_url=LOCAL_URL, device="cpu")
    trials = local_study("new").trials
    assert len(trials) == 5 and sum(record.WARM_START_FROM.name not in t.user_attrs for t in trials) == 3
    rows = report.gather([local_study("new")]).studies[0].trials
    assert sorted(r.warm_from for r in rows if r.warm_from) == sorted(record.warm_start_from(t) for t in copies)
    assert "warm start: copy of tiny#" in report.render_html(report.gather([local_study("new")]))


def test_a_bad_warm_start_writes_nothing(project: Path) -> None:
    result = runner.invoke(app, ["create", "tiny", "--warm-start", "nope"])
    assert result.exit_code == 2 and "study 'nope' not found" in result.output, result.output
    assert optuna.get_all_study_names(LOCAL_URL) == []
    _invoke("create", "tiny")
    result = runner.invoke(app, ["create", "tiny", "--warm-start", "tiny"])
    assert result.exit_code == 2 and "cannot warm-start from itself" in result.output
    result = runner.invoke(app, ["create", "tiny", "--name", "tiny2", "--warm-start", "tiny"])
    assert result.exit_code == 0 and "0 finished trials of tiny copied" in result.output
