"""The evidence pruner (pruner.type = "auto"): rungs placed by the study's own finished curves."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from sweep.errors import SpecError
from sweep.pruner import EvidencePruner, place_rungs, spearman
from sweep.search import build_pruner
from sweep.spec import parse_spec

EPOCHS = 8


def _study(pruner: EvidencePruner) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", pruner=pruner)


def _finish(study: optuna.Study, curve: list[float], val_images: int = 1500) -> None:
    trial = study.ask()
    trial.set_user_attr("val_images", val_images)
    for epoch, value in enumerate(curve, start=1):
        trial.report(value, epoch)
    study.tell(trial, curve[-1])


def _ranked(final: float, early_noise: float = 0.0) -> list[float]:
    """A curve whose every epoch ranks like its end (plus a fixed offset ``early_noise`` before it)."""
    return [final - 0.2 + 0.02 * e + early_noise for e in range(1, EPOCHS)] + [final]


def test_rungs_start_where_early_values_rank_like_the_end() -> None:
    # Epoch 1 ranks the trials backwards, epoch 2 on as they end: the first rung is epoch 2.
    finals = [0.70, 0.75, 0.80, 0.85, 0.90]
    curves = [([1 - f] + [f - 0.1] * (EPOCHS - 2), f) for f in finals]
    evidence = place_rungs(curves, EPOCHS, min_spearman=0.7, reduction_factor=2)
    assert evidence.spearman[0] == -1.0 and evidence.spearman[1] == 1.0
    assert evidence.rungs == (2, 4)  # 2, 2x2; 8 is the end, never a rung


def test_no_rung_when_no_epoch_ranks_well_enough() -> None:
    finals = [0.70, 0.75, 0.80, 0.85, 0.90]
    curves = [([1 - f] * (EPOCHS - 1), f) for f in finals]
    assert place_rungs(curves, EPOCHS, min_spearman=0.7, reduction_factor=2).rungs == ()


def test_nothing_is_pruned_before_min_complete_trials_finish() -> None:
    pruner = EvidencePruner(min_complete=4, max_resource=EPOCHS)
    study = _study(pruner)
    for final in (0.80, 0.85, 0.90):
        _finish(study, _ranked(final))
    hopeless = study.ask()
    hopeless.report(0.10, 1)
    assert not hopeless.should_prune()  # three finished: no evidence yet
    study.tell(hopeless, state=TrialState.FAIL)
    _finish(study, _ranked(0.88))
    assert pruner.evidence(study).rungs == (1, 2, 4)
    again = study.ask()
    again.report(0.10, 1)
    assert again.should_prune()


def test_a_first_rung_prunes_from_the_start_until_the_evidence_takes_over() -> None:
    # first_rung: rungs from a prior (1, 2, 4) while fewer than min_complete trials have finished;
    # then the finished curves place them (here they rank backwards at epoch 1: the first rung moves).
    pruner = EvidencePruner(min_complete=4, max_resource=EPOCHS, first_rung=1)
    study = _study(pruner)
    for final in (0.80, 0.85):
        _finish(study, _ranked(final))
    assert pruner.evidence(study).rungs == (1, 2, 4)
    hopeless = study.ask()
    hopeless.report(0.10, 1)
    assert hopeless.should_prune()  # two finished: the prior's rung, far below the better half
    study.tell(hopeless, state=TrialState.PRUNED)
    for final in (0.70, 0.75, 0.90):  # epoch 1 ranks these backwards, epoch 2 on as they end
        trial = study.ask()
        trial.set_user_attr("val_images", 1500)
        for epoch, value in enumerate([1 - final] + [final - 0.1] * (EPOCHS - 2) + [final], start=1):
            trial.report(value, epoch)
        study.tell(trial, final)
    assert pruner.evidence(study).rungs == (2, 4)
    for bad in (0, EPOCHS, 1.5, True):  # an epoch before the end, as an int
        with pytest.raises(ValueError, match="first_rung"):
            EvidencePruner(first_rung=bad, max_resource=EPOCHS)  # type: ignore[arg-type]


def test_a_difference_inside_the_validation_noise_never_prunes() -> None:
    pruner = EvidencePruner(min_complete=4, max_resource=EPOCHS, margin_se=1.0)
    study = _study(pruner)
    for final in (0.80, 0.85, 0.88, 0.90):
        _finish(study, _ranked(final))
    # The bar at epoch 1 is the better half's lowest value: 0.85 - 0.18 = 0.67. One standard error of
    # 67 % on 1,500 images is 1.2 points; on 100 images 4.7 points.
    bar = 0.67
    close = study.ask()
    close.set_user_attr("val_images", 1500)
    close.report(bar - 0.008, 1)
    assert not close.should_prune()
    study.tell(close, state=TrialState.FAIL)
    below = study.ask()
    below.set_user_attr("val_images", 1500)
    below.report(bar - 0.02, 1)
    assert below.should_prune()
    study.tell(below, state=TrialState.PRUNED)
    small = study.ask()  # the same gap measured on 100 images is noise
    small.set_user_attr("val_images", 100)
    small.report(bar - 0.02, 1)
    assert not small.should_prune()


def test_rungs_are_re_estimated_as_trials_finish() -> None:
    pruner = EvidencePruner(min_complete=4, max_resource=EPOCHS)
    study = _study(pruner)
    for final in (0.80, 0.85, 0.88, 0.90):
        _finish(study, _ranked(final))
    assert pruner.evidence(study).rungs == (1, 2, 4)
    # Four more whose early values rank backwards: epoch 1 no longer ranks like the end.
    for final in (0.70, 0.72, 0.74, 0.76):
        _finish(study, [1.5 - final] * 3 + [final] * (EPOCHS - 3))
    evidence = pruner.evidence(study)
    assert evidence.complete == 8 and evidence.spearman[0] < 0.7
    assert evidence.rungs[0] > 1


def test_spec_builds_it_with_the_epochs_as_max_resource() -> None:
    spec = parse_spec({"name": "s", "epochs": 9, "pruner": {"type": "auto", "min_complete": 5}})
    pruner = build_pruner(spec)
    assert isinstance(pruner, EvidencePruner)
    assert pruner.max_resource == 9 and pruner.min_complete == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"min_complete": 2}, "min_complete must be >= 3"),
        ({"min_spearman": 1.5}, "min_spearman must be in"),
        ({"reduction_factor": 1}, "reduction_factor must be >= 2"),
        ({"margin_se": "x"}, "pruner.margin_se"),
        ({"patience": 3}, "not an argument of the auto pruner"),
    ],
)
def test_bad_arguments_are_spec_errors(args: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec({"name": "s", "pruner": {"type": "auto", **args}})


def test_spearman_with_ties_and_constants() -> None:
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 1, 2], [3, 3, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
