"""Every check of the Optuna internals sweep relies on, for sweep.rdb and sweep.tpe alike.

sweep.rdb (the lean storage) and sweep.tpe (the incremental TPE) read and override private parts of
Optuna that a new minor release may change without any API saying so. Both ask here, the same way,
once at import: ``rdb_unsupported()`` and ``tpe_unsupported()`` say in one line why this Optuna cannot
run them (None: it can). A release outside ``TESTED_OPTUNA``, or one lacking a private name either
uses, makes it step aside (Optuna's own RDBStorage, Optuna's own TPE), slower but correct, and say so
once, instead of failing in the middle of a sweep. pyproject.toml admits any Optuna below 6 for that
reason; the build machine's constraints.txt pins the tested one.
"""

from __future__ import annotations

import optuna

# [low, high): the minor releases the overrides were checked against (Optuna's storage suite and
# tests/test_tpe.py's trial-by-trial comparison).
TESTED_OPTUNA = ((5, 0), (5, 1))

# sweep.rdb: RDBStorage's private methods it overrides or calls, and the columns of Optuna's tables it
# reads and writes directly.
_RDB_STORAGE_NEEDS = ("_get_trials", "_create_new_trial", "_set_trial_param", "check_trial_is_updatable")
_MODEL_NEEDS = {
    "TrialModel": ("trial_id", "number", "study_id", "state", "datetime_start", "datetime_complete"),
    "StudyModel": ("study_id",),
    "StudyUserAttributeModel": ("study_id", "key", "value_json"),
    "TrialParamModel": ("trial_id", "param_id", "param_name", "param_value", "distribution_json"),
    "TrialValueModel": ("trial_id", "objective", "value", "value_type"),
    "TrialIntermediateValueModel": ("trial_id", "step", "intermediate_value", "intermediate_value_type"),
    "TrialUserAttributeModel": ("trial_id", "key", "value_json"),
    "TrialSystemAttributeModel": ("trial_id", "key", "value_json"),
    "TrialHeartbeatModel": ("trial_id", "heartbeat"),
}
# sweep.tpe: what it reads of Optuna's TPE module and of a TPESampler (attributes its __init__ sets,
# and methods).
_TPE_MODULE_NEEDS = ("default_gamma", "_get_infeasible_trial_score", "_get_pruned_trial_score")
_TPE_SAMPLER_NEEDS = (
    "_constant_liar",
    "_gamma",
    "_get_params",
    "_parzen_estimator_cls",
    "_parzen_estimator_parameters",
    "_n_ei_candidates",
    "_rng",
    "_compare",
    "_compute_acquisition_func",
)


def untested_optuna(version: str | None = None) -> str | None:
    """Why this Optuna is outside the tested releases, in one line (None: it is one of them)."""
    version = optuna.__version__ if version is None else version
    try:
        release = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        return f"cannot read Optuna's version {version!r}"
    if not TESTED_OPTUNA[0] <= release < TESTED_OPTUNA[1]:
        low, high = (".".join(map(str, v)) for v in TESTED_OPTUNA)
        return f"it was tested with Optuna >={low},<{high}, not {version}"
    return None


def _lacking(name: str, owner: object, needs: tuple[str, ...]) -> str | None:
    """``owner``'s missing names among ``needs``, as one line (None: it has them all)."""
    missing = [n for n in needs if not hasattr(owner, n)]
    return f"Optuna {optuna.__version__}'s {name} lacks {', '.join(missing)}" if missing else None


def rdb_unsupported() -> str | None:
    """Why this Optuna cannot run under sweep.rdb's SweepRDBStorage, in one line (None: it can)."""
    untested = untested_optuna()
    if untested is not None:
        return untested
    try:
        from optuna.storages._rdb import models as rdb_models
    except ImportError as exc:
        return f"Optuna {optuna.__version__} has no optuna.storages._rdb.models ({exc})"
    for model, columns in _MODEL_NEEDS.items():
        table = getattr(getattr(rdb_models, model, None), "__table__", None)
        missing = [c for c in columns if table is None or c not in table.c]
        if missing:
            return f"Optuna {optuna.__version__}'s {model} lacks {', '.join(missing)}"
    from optuna.storages._rdb import storage as rdb_storage

    manager = getattr(rdb_storage, "_VersionManager", None)
    if manager is None:
        return f"Optuna {optuna.__version__} has no _VersionManager"
    for owner, names in (
        (optuna.storages.RDBStorage, _RDB_STORAGE_NEEDS),
        (manager, ("check_table_schema_compatibility", "get_current_version")),
        (rdb_models.TrialValueModel, ("value_to_stored_repr", "stored_repr_to_value")),
        (
            rdb_models.TrialIntermediateValueModel,
            ("intermediate_value_to_stored_repr", "stored_repr_to_intermediate_value"),
        ),
    ):
        lacking = _lacking(owner.__name__, owner, names)
        if lacking is not None:
            return lacking
    return None


def tpe_unsupported() -> str | None:
    """Why this Optuna cannot run sweep.tpe's incremental path, in one line (None: it can)."""
    untested = untested_optuna()
    if untested is not None:
        return untested
    from optuna.samplers import TPESampler
    from optuna.samplers._tpe import sampler as tpe_module

    # The sampler's private attributes are set by its __init__: a default instance has them all.
    return _lacking("optuna.samplers._tpe.sampler", tpe_module, _TPE_MODULE_NEEDS) or _lacking(
        "TPESampler", TPESampler(), _TPE_SAMPLER_NEEDS
    )
