"""Sampler, pruner and parameter suggestion, all derived from the study spec.

The arrow goes one way, spec → search: ``parse_spec`` asks :func:`check_search_args` whether the
sampler and pruner arguments fit the Optuna classes; this module needs the spec only as a type.
"""

from __future__ import annotations

import inspect
import warnings
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from sweep.errors import SpecError
from sweep.pruner import EvidencePruner
from sweep.tpe import IncrementalTPESampler

if TYPE_CHECKING:
    from optuna.pruners import BasePruner
    from optuna.samplers import BaseSampler

    from sweep.spec import StudySpec  # a type only: spec imports this module to check sampler arguments


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler without its ``study.stop()`` at the end of the grid.

    ``stop()`` only works inside ``study.optimize``; sweep's workers use ask/tell, and the study's
    ``n_trials`` budget (checked to fit the grid) is what ends a grid sweep.
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


class _WithInfeasibleFailures:
    """A read-only view of a study in which FAIL trials that violated a constraint are visible.

    TPE only learns from COMPLETE and PRUNED trials, and it sorts trials whose constraints are
    violated into its "bad" group. A trial that ran out of GPU memory must end FAIL (it has no
    accuracy), so without this view TPE would never learn to avoid that region of the space.
    """

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[Any]:
        if states is None or TrialState.COMPLETE not in states:
            return self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        # One read of every trial, split here: a second filtered read costs as much as the first.
        every = self._study._get_trials(deepcopy=deepcopy, states=None, use_cache=use_cache)
        trials = [t for t in every if t.state in states]
        fail = TrialState.FAIL
        extra = [t for t in every if t.state == fail and t.params and any(v > 0 for v in t.constraints.values())]
        return trials + extra if extra else trials


class FeasibilityAwareTPE(IncrementalTPESampler):
    """TPE that treats FAIL trials with a violated constraint (``oom``) as infeasible observations.

    Incremental (sweep.tpe): the same proposals as Optuna's TPE, without its per-trial Python work.
    """

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return super().infer_relative_search_space(_WithInfeasibleFailures(study), trial)  # type: ignore[arg-type]

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
        return super().sample_relative(_WithInfeasibleFailures(study), trial, search_space)  # type: ignore[arg-type]

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        view = _WithInfeasibleFailures(study)
        return super().sample_independent(view, trial, param_name, param_distribution)  # type: ignore[arg-type]


_SAMPLERS: dict[str, Any] = {
    "tpe": FeasibilityAwareTPE,
    "random": optuna.samplers.RandomSampler,
    "grid": _GridSampler,
    "qmc": optuna.samplers.QMCSampler,
}
_PRUNERS: dict[str, Any] = {
    "median": optuna.pruners.MedianPruner,
    "successive-halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "auto": EvidencePruner,
    "none": optuna.pruners.NopPruner,
}
# Arguments sweep itself fills in; the spec may not set them.
_RESERVED = {"seed", "search_space", "constraints_func"}


def grid_space(spec: StudySpec) -> dict[str, list[Any]]:
    """Every value of every searched param, as the grid sampler (and the replay bench) sees it."""
    space: dict[str, list[Any]] = {}
    for name, p in spec.params.items():
        if p.type == "categorical":
            space[name] = list(p.choices or ())
        else:
            assert p.low is not None and p.high is not None
            step = p.step if p.step is not None else 1  # spec validation: only int ranges may omit it
            values, v = [], p.low
            while v <= p.high + 1e-12:
                values.append(int(v) if p.type == "int" else round(float(v), 12))
                v += step
            space[name] = values
    return space


def _check_args(kind: str, type_: str, cls: Any, args: dict[str, Any]) -> None:
    """Every argument a parameter of ``cls``, of the type its annotation names."""
    parameters = {k: p for k, p in inspect.signature(cls).parameters.items() if k not in _RESERVED and k != "self"}
    for key, value in args.items():
        if key not in parameters:
            raise SpecError(
                f"{kind}.{key}",
                value,
                f"not an argument of the {type_} {kind}; allowed: {', '.join(sorted(parameters)) or 'none'}",
            )
        annotation = parameters[key].annotation
        wanted = _annotation_types(annotation)
        if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
            names = " or ".join(sorted({t.__name__ for t in wanted} - {"NoneType"}))
            raise SpecError(
                f"{kind}.{key}",
                value,
                f"the {type_} {kind} takes {names} here"
                if names
                else f"the {type_} {kind} takes {annotation} here, which a spec cannot hold; leave it out",
            )


# What a TOML value can be for each name an Optuna signature uses; any other name (Callable, a class)
# is an object a spec cannot hold. bool is an int to isinstance: _check_args tells them apart.
_TOML_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "str": (str,),
    "None": (type(None),),
}


def _annotation_types(annotation: Any) -> tuple[type, ...]:
    """The value types an annotation (``int``, ``"str | int"``, ``"float | None"``) allows from a spec;
    an unannotated parameter allows any."""
    if annotation is inspect.Parameter.empty:
        return (object,)
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    allowed: tuple[type, ...] = ()
    for part in text.split("|"):
        allowed += _TOML_TYPES.get(part.strip(), ())
    return allowed or (type(None),)  # nothing a spec can give: only leaving it out passes


def _try_out(spec: StudySpec) -> None:
    """Ask, report to and tell a few trials of a throwaway in-memory study with the spec's sampler and
    pruner: Optuna checks most arguments only when it uses them (TPE compares ``n_startup_trials`` with
    a trial count at its first sample), and a worker must not find that out by failing every trial."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(direction="maximize", sampler=build_sampler(spec), pruner=build_pruner(spec))
            for number in range(3):
                trial = study.ask()
                suggest_params(trial, spec)
                for step in range(1, min(spec.epochs, 3) + 1):
                    trial.report(0.1 * (number + 1), step)
                    trial.should_prune()
                study.tell(trial, 0.1 * (number + 1))
    finally:
        optuna.logging.set_verbosity(verbosity)


def build_sampler(spec: StudySpec) -> BaseSampler:
    """The spec's sampler, seeded from the spec (each worker adds its own offset via ``seed``)."""
    cls = _SAMPLERS[spec.sampler.type]
    args = dict(spec.sampler.args)
    if spec.sampler.type == "grid":
        return cls(grid_space(spec), seed=spec.seed, **args)
    if spec.sampler.type == "tpe":
        # Small budgets: the default 10 random start-up trials would be the whole sweep.
        args.setdefault("n_startup_trials", max(2, min(10, spec.n_trials // 4)))
    return cls(seed=spec.seed, **args)


def build_pruner(spec: StudySpec) -> BasePruner:
    """The spec's pruner; resource-based pruners get the epoch budget as their max resource."""
    cls = _PRUNERS[spec.pruner.type]
    args = dict(spec.pruner.args)
    if spec.pruner.type == "hyperband":
        args.setdefault("min_resource", 1)
        args.setdefault("max_resource", spec.epochs)
    elif spec.pruner.type == "auto":
        args.setdefault("max_resource", spec.epochs)
    elif spec.pruner.type == "median":
        args.setdefault("n_startup_trials", 2)
        args.setdefault("n_warmup_steps", 1)
    return cls(**args)


def check_search_args(spec: StudySpec) -> None:
    """Raise SpecError when sampler/pruner arguments do not fit the Optuna classes."""
    if spec.sampler.type == "grid":
        size = 1
        for values in grid_space(spec).values():
            size *= len(values)
        if spec.n_trials > size:
            raise SpecError("n_trials", spec.n_trials, f"the grid has {size} points; use n_trials <= {size}")
    _check_args("sampler", spec.sampler.type, _SAMPLERS[spec.sampler.type], dict(spec.sampler.args))
    _check_args("pruner", spec.pruner.type, _PRUNERS[spec.pruner.type], dict(spec.pruner.args))
    for kind, build in (("sampler", build_sampler), ("pruner", build_pruner)):
        try:
            build(spec)
        except (TypeError, ValueError) as exc:
            args = dict(getattr(spec, kind).args)
            raise SpecError(kind, args, f"rejected by Optuna: {str(exc).splitlines()[0]}") from None
    try:
        _try_out(spec)
    except Exception as exc:  # noqa: BLE001 - whatever Optuna raises, the spec is what to fix
        args = {"sampler": dict(spec.sampler.args), "pruner": dict(spec.pruner.args)}
        raise SpecError("sampler/pruner", args, f"Optuna fails using them: {str(exc).splitlines()[0]}") from None


def distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    """The Optuna distribution of every searched param: what :func:`suggest_params` asks for."""
    out: dict[str, BaseDistribution] = {}
    for name, p in spec.params.items():
        if p.type == "categorical":
            out[name] = CategoricalDistribution(list(p.choices or ()))
        elif p.type == "int":
            out[name] = IntDistribution(int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            out[name] = FloatDistribution(float(p.low), float(p.high), step=p.step, log=p.log)
    return out


def suggest_params(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """Suggest every searched hyperparameter; fixed ones come from ``[train]``."""
    params = spec.fixed_params()
    for name, p in spec.params.items():
        if p.type == "categorical":
            params[name] = trial.suggest_categorical(name, list(p.choices or ()))
        elif p.type == "int":
            params[name] = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            params[name] = trial.suggest_float(name, float(p.low), float(p.high), step=p.step, log=p.log)
    return params
