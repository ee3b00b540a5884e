"""A pruner whose rungs are placed by the study's own learning curves (``pruner.type = "auto"``).

Stock pruners fix their rungs in advance (Hyperband's ``min_resource``, the median pruner's warm-up).
On a fine-tune the right place depends on the schedule, the data and the space: with cosine, epoch 1
ranks the fine-tune table's configs like their final values with Spearman 0.18; with wsd and an EMA
of the weights, 0.80 (BENCHMARKS.md). So this pruner lets its first ``min_complete`` trials run to the
end, measures on their curves the first epoch whose values rank the finished trials like their final
values (Spearman >= ``min_spearman``), and puts its rungs there and at that epoch times
``reduction_factor``, its square, ... (ASHA's geometric ladder). The estimate is redone every time a
trial finishes. At a rung a trial is stopped only when it is below the best ``1/reduction_factor`` of
the trials that reached that rung by more than ``margin_se`` standard errors of an accuracy measured
on the trial's validation images (user attr ``val_images``): a difference inside the validation
set's noise never prunes. Until ``min_complete`` trials have finished nothing is pruned, unless
``first_rung`` gives a prior: rungs at it and its ladder until the evidence takes over (for rung
values known to rank early, such as wsd's EMA; the start-up trials are otherwise a fixed cost).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep import record

# Without val_images (a trial not run by sweep's objective) the noise is that of 1,000 images at 85 %.
_DEFAULT_VAL_IMAGES = 1000


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):  # ties share their mean rank
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson on ranks, ties averaged); NaN when a side is constant."""
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else float("nan")


@dataclass(frozen=True)
class Evidence:
    """What the finished trials say: each epoch's Spearman with the final values, and the rungs."""

    complete: int  # finished trials it was measured on
    spearman: tuple[float, ...]  # epochs 1..max_resource-1
    rungs: tuple[int, ...]  # empty: no epoch ranks well enough yet, nothing is pruned


def place_rungs(
    curves: Sequence[tuple[Sequence[float], float]],
    max_resource: int,
    *,
    min_spearman: float,
    reduction_factor: int,
) -> Evidence:
    """Rungs from finished curves: ``(values at epochs 1.., final value)`` per trial."""
    rhos: list[float] = []
    for epoch in range(1, max_resource):
        pairs = [(c[epoch - 1], final) for c, final in curves if len(c) >= epoch]
        rho = spearman([p[0] for p in pairs], [p[1] for p in pairs]) if len(pairs) >= 3 else float("nan")
        rhos.append(round(rho, 4))
    first = next((e for e, rho in enumerate(rhos, start=1) if rho >= min_spearman), None)
    return Evidence(len(curves), tuple(rhos), ladder(first, max_resource, reduction_factor))


def ladder(first: int | None, max_resource: int, reduction_factor: int) -> tuple[int, ...]:
    """Rungs at ``first``, ``first * reduction_factor``, its square, ... below ``max_resource``."""
    rungs: list[int] = []
    while first is not None and first < max_resource:
        rungs.append(first)
        first *= reduction_factor
    return tuple(rungs)


class EvidencePruner(optuna.pruners.BasePruner):
    """Rungs where the study's finished curves rank like their ends; prunes only beyond the noise.

    ``max_resource`` is the study's epochs (sweep's build_pruner fills it in). Reads intermediate
    values as reported: with ``train.rung_value = "ema"`` these are the anytime estimates.
    """

    def __init__(
        self,
        min_complete: int = 8,
        min_spearman: float = 0.7,
        reduction_factor: int = 2,
        margin_se: float = 1.0,
        max_resource: int = 12,
        first_rung: int | None = None,
    ) -> None:
        if min_complete < 3:
            raise ValueError(f"min_complete must be >= 3 (a rank correlation needs trials), got {min_complete}")
        if not 0.0 < min_spearman <= 1.0:
            raise ValueError(f"min_spearman must be in (0, 1], got {min_spearman}")
        if reduction_factor < 2:
            raise ValueError(f"reduction_factor must be >= 2, got {reduction_factor}")
        if margin_se < 0:
            raise ValueError(f"margin_se must be >= 0, got {margin_se}")
        if max_resource < 2:
            raise ValueError(f"max_resource must be >= 2, got {max_resource}")
        if first_rung is not None and (
            not isinstance(first_rung, int) or isinstance(first_rung, bool) or not 1 <= first_rung < max_resource
        ):
            raise ValueError(
                f"first_rung must be an epoch from 1 to max_resource - 1 ({max_resource - 1}), got {first_rung!r}"
            )
        self.min_complete = min_complete
        self.min_spearman = min_spearman
        self.reduction_factor = reduction_factor
        self.margin_se = margin_se
        self.max_resource = max_resource
        self.first_rung = first_rung
        self._evidence: Evidence | None = None
        self._evidence_of: tuple[str, int] | None = None  # (study name, finished trials) it was measured on

    def evidence(self, study: optuna.Study) -> Evidence:
        """The rungs as the study's finished trials place them now (measured once per finished trial)."""
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        key = (study.study_name, len(complete))
        if self._evidence is None or self._evidence_of != key:
            if len(complete) < self.min_complete:
                self._evidence = Evidence(
                    len(complete), (), ladder(self.first_rung, self.max_resource, self.reduction_factor)
                )
            else:
                curves = [(_curve(t), float(t.value)) for t in complete if t.value is not None]
                self._evidence = place_rungs(
                    curves, self.max_resource, min_spearman=self.min_spearman, reduction_factor=self.reduction_factor
                )
            self._evidence_of = key
        return self._evidence

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step >= self.max_resource or step not in self.evidence(study).rungs:
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        reached = [
            t.intermediate_values[step]
            for t in study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            )
            if step in t.intermediate_values and not math.isnan(t.intermediate_values[step])
        ]
        keep = max(1, math.ceil(len(reached) / self.reduction_factor))
        if len(reached) <= keep:
            return False
        bar = sorted(reached, reverse=True)[keep - 1]
        return value < bar - self.margin_se * _standard_error(bar, _val_images(trial))


def _curve(trial: FrozenTrial) -> list[float]:
    values = trial.intermediate_values
    return [values[e] for e in sorted(values)]


def _val_images(trial: FrozenTrial) -> int:
    n = record.val_images(trial)
    return n if n is not None and n > 0 else _DEFAULT_VAL_IMAGES


def _standard_error(accuracy: float, images: int) -> float:
    p = min(max(accuracy, 0.0), 1.0)
    return math.sqrt(p * (1 - p) / images)
