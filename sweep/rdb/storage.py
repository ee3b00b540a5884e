"""``SweepRDBStorage``: Optuna's RDBStorage whose per-trial calls are Core statements (see sweep.rdb).

What it overrides, in SQL; the connections each call runs on are sweep.rdb.connections', the trials
served from memory sweep.rdb.mirror's:

- every write is one statement (or a short transaction of two or three), built once and executed with
  bound parameters, guarded in SQL by the trial still being unfinished (``INSERT ... SELECT ...
  WHERE state IN (RUNNING, WAITING)`` with an upsert); only when that touches no row is the trial
  read, to raise what Optuna raises;
- trial reads (``_get_trials``, which Optuna's own cache layer calls) are Core selects that build
  ``FrozenTrial`` objects directly (on SQLite in a deferred read transaction: readers never take the
  write lock), with no child queries for the trials the mirror holds as stored.

Everything not on the per-trial path (studies, templates from retries, stale-trial detection) is
Optuna's own code; its read-only calls begin without SQLite's write lock. Database errors are Optuna's
``StorageInternalError``. Built on Optuna's internals that sweep.compat checks: on an Optuna without
them, ``UNSUPPORTED`` says why in one line and sweep.storage opens Optuna's own RDBStorage instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import sqlite3
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna import distributions
from optuna.trial import FrozenTrial, TrialState

from sweep.compat import rdb_unsupported
from sweep.outage import Patience, transient
from sweep.rdb.connections import Connections, lock_free, patient
from sweep.rdb.mirror import TrialMirror, copy_trial

_T = TypeVar("_T")
# Indexes sweep adds to Optuna's schema (storage/README.md): what the budget gate reads under its lock
# (the WAITING and RUNNING trials, the next trial number, the retries) is then found by index instead
# of by a scan of every trial of the study, whose cost grows with the study (BENCHMARKS.md, "Study size").
INDEXES = (
    ("ix_sweep_trials_study_state", "trials", ("study_id", "state")),
    ("ix_sweep_trials_study_number", "trials", ("study_id", "number")),
    ("ix_sweep_trial_system_attributes_key", "trial_system_attributes", ("key",)),
)
_log = logging.getLogger("sweep.storage")
# Bound ids per IN list: under SQLite's variable limit (32,766 since 3.32, 999 before) and PostgreSQL's
# 65,535 parameters per statement, with room for the other parameters of the query.
_IN_CHUNK = 30_000 if sqlite3.sqlite_version_info >= (3, 32) else 900

# None when the lean storage can run; else why not, in one line (sweep.storage falls back on it).
# sweep.compat checks the Optuna internals this module overrides or reads (RDBStorage's private
# methods, the columns of its tables), so that a different Optuna is refused in one line instead of
# failing in the middle of a sweep.
UNSUPPORTED = rdb_unsupported()
if UNSUPPORTED is None:
    from optuna.storages._rdb import models
    from optuna.storages._rdb import storage as _rdb_storage

    _trials = models.TrialModel.__table__
    _studies = models.StudyModel.__table__
    _study_user = models.StudyUserAttributeModel.__table__
    _params = models.TrialParamModel.__table__
    _values = models.TrialValueModel.__table__
    _inter = models.TrialIntermediateValueModel.__table__
    _user = models.TrialUserAttributeModel.__table__
    _system = models.TrialSystemAttributeModel.__table__
    _beats = models.TrialHeartbeatModel.__table__


def _unfinished() -> Any:
    # Two equalities, not IN (...): an IN list is an "expanding" parameter, re-rendered on every call.
    return sqlalchemy.or_(_trials.c.state == TrialState.RUNNING, _trials.c.state == TrialState.WAITING)


@functools.lru_cache(maxsize=1024)
def _distribution(text: str) -> distributions.BaseDistribution:
    # A study has a handful of distinct distribution JSONs; parsing each once matters at 5,000 trials.
    return distributions.json_to_distribution(text)


def _utc_now() -> dt.datetime:
    """Now as Optuna's RDB schema stores it: naive UTC."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _local(utc: dt.datetime | None) -> dt.datetime | None:
    """A stored naive-UTC datetime as Optuna hands it out: naive local time."""
    if utc is None:
        return None
    return utc.replace(tzinfo=dt.UTC).astimezone().replace(tzinfo=None)


class SweepRDBStorage(optuna.storages.RDBStorage):
    """``RDBStorage`` whose per-trial calls are single Core statements (see the module docstring)."""

    def __init__(
        self,
        url: str,
        engine_kwargs: dict[str, Any] | None = None,
        skip_compatibility_check: bool = False,
        **kwargs: Any,
    ) -> None:
        # The schema check runs after _init_process_state, with the version manager that holds one
        # connection at a time (_LockFreeVersionManager).
        super().__init__(url, engine_kwargs, True, **kwargs)
        self.skip_compatibility_check = skip_compatibility_check
        self._init_process_state()
        if not skip_compatibility_check:
            self._version_manager.check_table_schema_compatibility()
        self._ensure_indexes()

    def _ensure_indexes(self) -> None:
        """Create sweep's indexes (``INDEXES``) where missing: looked up first, so a worker start on a
        database that has them takes no table lock. Without them (a role that may not create indexes)
        everything works, the budget gate only slower on big studies: said once, on one line."""
        try:
            with self.engine.connect().execution_options(sweep_read_only=True) as conn:
                inspector = sqlalchemy.inspect(conn)
                have = {i["name"] for table in {t for _, t, _ in INDEXES} for i in inspector.get_indexes(table)}
            for name, table, columns in INDEXES:
                if name in have:
                    continue
                # IF NOT EXISTS: workers starting together race to create it; one wins, one waits.
                with contextlib.suppress(sqlalchemy.exc.IntegrityError), self.engine.begin() as conn:
                    conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({', '.join(columns)})")
        except sqlalchemy.exc.SQLAlchemyError as exc:
            _log.warning(
                "sweep: could not add sweep's indexes (%s); the budget gate reads whole studies",
                str(getattr(exc, "orig", exc)).strip().splitlines()[0],
            )

    def _init_process_state(self) -> None:
        # Built after Optuna's schema set-up in __init__, which runs its own transactions: from here on
        # SQLite write transactions take the write lock at BEGIN (sweep.rdb.connections).
        self._connections = Connections(self.engine)
        self.autocommit_engine = self._connections.autocommit_engine
        # Optuna's schema-version checks, which also run outside the storage's own methods (Optuna's
        # tests hold a session open around one), read without the write lock. On Optuna's own
        # scoped_session: the manager's sessions are never pinned.
        manager = getattr(self, "_version_manager", None)
        if manager is not None and type(manager) is _rdb_storage._VersionManager:
            self._version_manager = _LockFreeVersionManager(self.url, self.engine, self.scoped_session)
        self.scoped_session = self._connections.sessions(self.scoped_session)
        self._mirror = TrialMirror()
        self._statements: dict[tuple[Any, ...], Any] = {}
        self._unsure: set[int] = set()  # trials whose end was written when the connection died

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        # All of this process's: rebuilt by __setstate__ (patience too: its lines go to this
        # process's display).
        for name in ("_connections", "autocommit_engine", "_mirror", "_statements", "_unsure"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._init_process_state()

    # ------------------------------------------------------------------ connections (sweep.rdb.connections)

    @property
    def patience(self) -> Patience | None:
        """Set by sweep.storage.open_storage: storage calls then wait out an unreachable database."""
        return self._connections.patience

    @patience.setter
    def patience(self, patience: Patience | None) -> None:
        self._connections.patience = patience

    def pool_connection(self) -> contextlib.AbstractContextManager[Any]:
        """A connection from the pool for a transaction (PostgreSQL: this process's held connection,
        given back first, so no second one is opened while it sits idle)."""
        return self._connections.pool_connection()

    @contextlib.contextmanager
    def read_only(self) -> Iterator[Any]:
        """A connection for reads outside the storage's own methods (sweep.storage.read_connection)."""
        with self._connections.connection("read") as (conn, _):
            yield conn

    def pinned(self, conn: Any) -> contextlib.AbstractContextManager[None]:
        """Run every call of this thread (sweep.rdb's and Optuna's ORM sessions) on ``conn``, a connection
        inside a transaction (the budget lock's, sweep.storage), until the block ends.

        A transaction-scoped lock then costs no second connection, and it survives PgBouncer's
        transaction pooling, where a session-level lock could be released on another server connection.
        """
        return self._connections.pinned(conn)

    def close(self) -> None:
        """Give every database connection back: for a process that opens storages repeatedly
        (``sweep report --watch``); a worker keeps its storage for its lifetime."""
        self._connections.close()

    def _run(self, kind: str, op: Callable[[Any], _T]) -> _T:
        """Run ``op(connection)`` as one unit of work of ``kind`` (``Connections.connection``), retried
        once on a fresh connection if the first turns out dead (``Connections.run``)."""
        return self._connections.run(kind, op)

    # ------------------------------------------------------------------ helpers

    def _insert(self, table: sqlalchemy.Table) -> Any:
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    def _raise_if_not_updatable(self, conn: Any, trial_id: int) -> None:
        """Raise what Optuna raises for a write to ``trial_id`` that its guard refused."""
        row = conn.execute(
            sqlalchemy.select(_trials.c.study_id, _trials.c.number, _trials.c.state, _trials.c.datetime_start).where(
                _trials.c.trial_id == trial_id
            )
        ).first()
        known = self._mirror.get(trial_id)
        replaced = (
            known is not None
            and row is not None
            and (row.study_id, row.number, row.datetime_start)
            != (
                known.study_id,
                known.number,
                known.start,
            )
        )
        if row is None or replaced:
            # Our trial is gone (its study deleted); its id may already be another study's trial.
            self._mirror.forget(trial_id)
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        if row.state.is_finished():
            self._mirror.forget(trial_id)
        self.check_trial_is_updatable(trial_id, row.state)

    def _upsert_statement(
        self, table: sqlalchemy.Table, keys: tuple[str, ...], columns: tuple[str, ...], update: bool, mine: bool
    ) -> Any:
        """``INSERT INTO table SELECT :values WHERE the trial is unfinished ON CONFLICT ...``, built once.

        Built once per shape and executed with bound parameters, so SQLAlchemy compiles it once too
        (constructing the statement per call cost more than running it). ``mine``: the trial is
        mirrored, and the guard also matches its start time, so that a write never lands in another
        study's trial that reuses the id of ours after a deletion.
        """
        cache_key = (table.name, keys, columns, update, mine)
        stmt = self._statements.get(cache_key)
        if stmt is None:
            trial_id = sqlalchemy.bindparam("trial_id", type_=_trials.c.trial_id.type)
            guard = [_trials.c.trial_id == trial_id, _unfinished()]
            if mine:
                guard.append(
                    _trials.c.datetime_start == sqlalchemy.bindparam("_start", type_=_trials.c.datetime_start.type)
                )
            source = sqlalchemy.select(
                trial_id, *(sqlalchemy.bindparam(c, type_=table.c[c].type) for c in columns)
            ).where(*guard)
            stmt = self._insert(table).from_select(["trial_id", *columns], source)
            if update:
                stmt = stmt.on_conflict_do_update(
                    index_elements=[table.c[k] for k in keys],
                    set_={c: stmt.excluded[c] for c in columns if c not in keys},
                )
            else:  # Optuna ignores a duplicate (another thread wrote the same key first)
                stmt = stmt.on_conflict_do_nothing(index_elements=[table.c[k] for k in keys])
            # RETURNING, not rowcount: psycopg reports -1 for INSERT ... SELECT ... ON CONFLICT.
            stmt = stmt.returning(table.c.trial_id)
            self._statements[cache_key] = stmt
        return stmt

    def _guarded_upsert(
        self,
        conn: Any,
        table: sqlalchemy.Table,
        keys: tuple[str, ...],
        values: dict[str, Any],
        trial_id: int,
        *,
        update: bool = True,
    ) -> None:
        """Insert (or update on conflict) a child row of an unfinished trial, in one statement."""
        start = self._mirror.start(trial_id)
        stmt = self._upsert_statement(table, keys, tuple(values), update, start is not None)
        params = (
            {"trial_id": trial_id, **values} if start is None else {"trial_id": trial_id, "_start": start, **values}
        )
        if conn.execute(stmt, params).first() is None:
            self._raise_if_not_updatable(conn, trial_id)

    def delete_study(self, study_id: int) -> None:
        super().delete_study(study_id)
        self._mirror.forget_study(study_id)  # its trials are gone, and SQLite will hand their ids out again

    # ------------------------------------------------------------------ trials: create, params

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        if template_trial is not None:  # retries and enqueued trials: Optuna's own path
            return super()._create_new_trial(study_id, template_trial)
        now = _utc_now()

        def create(conn: Any) -> tuple[int, int]:
            # The row lock (PostgreSQL) or the write lock (SQLite, BEGIN IMMEDIATE) makes number unique.
            lock = sqlalchemy.select(_studies.c.study_id).where(_studies.c.study_id == study_id)
            if self.engine.dialect.name == "postgresql":
                lock = lock.with_for_update()
            if conn.execute(lock).scalar() is None:
                raise KeyError(f"No study with study_id {study_id} exists.")
            # number = trials already in the study (numbers are dense: every creator holds the study
            # row), read off the (study_id, number) index and inserted in one statement.
            count = (
                sqlalchemy.select(sqlalchemy.func.coalesce(sqlalchemy.func.max(_trials.c.number) + 1, 0)).where(
                    _trials.c.study_id == study_id
                )
            ).scalar_subquery()
            insert = sqlalchemy.insert(_trials).from_select(
                ["number", "study_id", "state", "datetime_start"],
                sqlalchemy.select(
                    count,
                    sqlalchemy.literal(study_id, _trials.c.study_id.type),
                    sqlalchemy.literal(TrialState.RUNNING, _trials.c.state.type),
                    sqlalchemy.literal(now, _trials.c.datetime_start.type),
                ),
            )
            trial_id, number = conn.execute(insert.returning(_trials.c.trial_id, _trials.c.number)).one()
            self._first_beat(conn, trial_id)
            return number, trial_id

        number, trial_id = self._run("txn", create)
        trial = FrozenTrial(
            number=number,
            state=TrialState.RUNNING,
            value=None,
            values=None,
            datetime_start=_local(now),
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={},
            intermediate_values={},
            trial_id=trial_id,
        )
        self._mirror.remember(study_id, now, copy_trial(trial))
        return trial

    # A trial is created (or a WAITING one taken) with its first heartbeat, in one transaction: killed
    # in between, it would be RUNNING without a heartbeat row, which Optuna's stale check never finds.
    BEATS_WHEN_TAKEN = True

    def _first_beat(self, conn: Any, trial_id: int) -> None:
        if self.heartbeat_interval is None:
            return
        stmt = self._statements.get(("first beat",))
        if stmt is None:
            stmt = self._insert(_beats).values(
                trial_id=sqlalchemy.bindparam("trial_id", type_=_beats.c.trial_id.type), heartbeat=sqlalchemy.func.now()
            )
            stmt = self._statements[("first beat",)] = stmt.on_conflict_do_update(
                index_elements=[_beats.c.trial_id], set_={"heartbeat": sqlalchemy.func.now()}
            )
        conn.execute(stmt, {"trial_id": trial_id})

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # Optuna's, plus the RUNNING trials without a heartbeat row started longer than the grace period
        # ago (Optuna skips those: made by a process killed before its first beat, they would stay
        # RUNNING for ever and the study would wait for them). One select instead of loading every
        # running trial with its heartbeat through the ORM.
        assert self.heartbeat_interval is not None
        grace = dt.timedelta(seconds=self.grace_period or 2 * self.heartbeat_interval)

        def read(conn: Any) -> list[int]:
            # Heartbeats are the database's clock (func.now()), start times the workers' (naive UTC).
            now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
            beat_before = now.replace(tzinfo=None) - grace
            start_before = _utc_now() - grace
            stale = (
                sqlalchemy.select(_trials.c.trial_id)
                .select_from(_trials.outerjoin(_beats, _beats.c.trial_id == _trials.c.trial_id))
                .where(
                    _trials.c.study_id == study_id,
                    _trials.c.state == TrialState.RUNNING,
                    sqlalchemy.or_(
                        _beats.c.heartbeat < beat_before,
                        sqlalchemy.and_(_beats.c.trial_id.is_(None), _trials.c.datetime_start < start_before),
                    ),
                )
                .order_by(_trials.c.trial_id)
            )
            return list(conn.execute(stale).scalars())

        return self._run("read", read)

    def _set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: distributions.BaseDistribution,
        previous_distribution: distributions.BaseDistribution | None,
    ) -> None:
        values = {
            "param_name": param_name,
            "param_value": param_value_internal,
            "distribution_json": distributions.distribution_to_json(distribution),
        }

        def write(conn: Any) -> None:
            previous = previous_distribution
            if previous is None:  # Optuna's cache layer passes it after the first time
                stored = conn.execute(
                    sqlalchemy.select(_params.c.distribution_json)
                    .join(_trials, _trials.c.trial_id == _params.c.trial_id)
                    .where(
                        _params.c.param_name == param_name,
                        _trials.c.study_id
                        == sqlalchemy.select(_trials.c.study_id)
                        .where(_trials.c.trial_id == trial_id)
                        .scalar_subquery(),
                    )
                    .limit(1)
                ).scalar()
                if stored is not None:
                    previous = _distribution(stored)
            if previous is not None:
                try:
                    distributions.check_distribution_compatibility(previous, distribution)
                except ValueError:
                    # Optuna checks the trial first: a finished (or missing) trial is that error.
                    self._raise_if_not_updatable(conn, trial_id)
                    raise
            self._guarded_upsert(conn, _params, ("trial_id", "param_name"), values, trial_id, update=False)

        self._run("write" if previous_distribution is not None else "txn", write)

        def update(trial: FrozenTrial) -> None:
            if param_name not in trial.params:
                trial.params[param_name] = distribution.to_external_repr(param_value_internal)
                trial.distributions[param_name] = distribution

        self._mirror.update(trial_id, update)

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: distributions.BaseDistribution,
    ) -> None:
        self._set_trial_param(trial_id, param_name, param_value_internal, distribution, None)

    # ------------------------------------------------------------------ trials: reports, attributes

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(intermediate_value)
        values = {"step": step, "intermediate_value": stored, "intermediate_value_type": kind}
        self._run("write", lambda conn: self._guarded_upsert(conn, _inter, ("trial_id", "step"), values, trial_id))
        self._mirror.update(trial_id, lambda t: t.intermediate_values.__setitem__(step, intermediate_value))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        row = {"key": key, "value_json": json.dumps(value)}
        self._run("write", lambda conn: self._guarded_upsert(conn, _user, ("trial_id", "key"), row, trial_id))
        self._mirror.update(trial_id, lambda t: t.user_attrs.__setitem__(key, json.loads(json.dumps(value))))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        row = {"key": key, "value_json": json.dumps(value)}
        self._run("write", lambda conn: self._guarded_upsert(conn, _system, ("trial_id", "key"), row, trial_id))
        self._mirror.update(trial_id, lambda t: t.system_attrs.__setitem__(key, json.loads(json.dumps(value))))

    # ------------------------------------------------------------------ trials: state

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        if not (state.is_finished() or state == TrialState.RUNNING):
            self._mirror.forget(trial_id)
            return super().set_trial_state_values(trial_id, state, values)
        now = _utc_now()
        won: list[int] = []

        def write(conn: Any) -> bool:
            won.clear()  # a retried transaction starts over
            if state == TrialState.RUNNING:  # popping a WAITING trial: exactly one worker may win it
                update = (
                    sqlalchemy.update(_trials)
                    .where(_trials.c.trial_id == trial_id, _trials.c.state == TrialState.WAITING)
                    .values(state=state, datetime_start=now)
                )
            else:
                guard = [_trials.c.trial_id == trial_id, _unfinished()]
                if (start := self._mirror.start(trial_id)) is not None:
                    guard.append(_trials.c.datetime_start == start)  # ours, not a reused id (mirror.Mirrored)
                update = sqlalchemy.update(_trials).where(*guard).values(state=state, datetime_complete=now)
            popped = conn.execute(update.returning(_trials.c.study_id)).first()
            if popped is None:
                if trial_id in self._unsure and state in (TrialState.COMPLETE, TrialState.PRUNED):
                    done = sqlalchemy.select(_trials.c.state).where(_trials.c.trial_id == trial_id)
                    if conn.execute(done).scalar() == state:
                        return True  # ours: only the owner ends a trial so, and that answer was lost
                self._raise_if_not_updatable(conn, trial_id)
                return False  # RUNNING asked of a trial that is not WAITING (another worker took it)
            won.append(popped.study_id)
            if state == TrialState.RUNNING:
                self._first_beat(conn, trial_id)
            for objective, value in enumerate(values or ()):
                stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                stmt = self._insert(_values).values(
                    trial_id=trial_id, objective=objective, value=stored, value_type=kind
                )
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[_values.c.trial_id, _values.c.objective],
                        set_={"value": stmt.excluded.value, "value_type": stmt.excluded.value_type},
                    )
                )
            return True

        try:
            if not self._run("durable", write):
                return False
        except sqlalchemy.exc.IntegrityError:
            return False
        except optuna.exceptions.StorageInternalError as exc:
            if transient(exc):
                # The connection died, maybe after the commit: a retry (Patience) that finds the trial
                # already in this state finds this call's own commit, not a peer's.
                self._unsure.add(trial_id)
            raise
        self._unsure.discard(trial_id)
        if state == TrialState.RUNNING:  # a popped WAITING trial is now this process's: mirror it
            for trial in self._run("read", lambda conn: self._read_trials(conn, _trials.c.trial_id == trial_id)):
                if trial.state == TrialState.RUNNING:
                    self._mirror.remember(won[0], now, trial)
            return True

        def finish(trial: FrozenTrial) -> None:
            trial.state = state
            if values is not None:
                trial.values = list(values)
            trial.datetime_complete = _local(now)

        self._mirror.update(trial_id, finish)
        return True

    # ------------------------------------------------------------------ reads

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        # Read by every budget decision, under the study's budget lock (pause, budget): one select
        # instead of an ORM session, which costs several times more there (a savepoint of the lock's
        # transaction, sweep.storage).
        def read(conn: Any) -> dict[str, Any]:
            rows = conn.execute(
                sqlalchemy.select(_study_user.c.key, _study_user.c.value_json).where(_study_user.c.study_id == study_id)
            ).all()
            if (
                not rows
                and conn.execute(sqlalchemy.select(_studies.c.study_id).where(_studies.c.study_id == study_id)).first()
                is None
            ):
                raise KeyError(f"No study with study_id {study_id} exists.")
            return {key: json.loads(text) for key, text in rows}

        return self._run("read", read)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        # This process's running trial, from memory: only its owner writes it (a peer's FAIL shows at
        # the owner's next write or heartbeat, which then drop it from the mirror). Any other trial
        # is read, a mirrored finished one with one select (_read_trials: still the same row?).
        running = self._mirror.running(trial_id)
        if running is not None:
            return running
        found = self._run("read", lambda conn: self._read_trials(conn, _trials.c.trial_id == trial_id))
        if not found:
            raise KeyError(f"No trial with trial_id {trial_id} exists.")
        return found[0]

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
        *,
        deepcopy: bool = False,
    ) -> list[FrozenTrial]:
        # deepcopy: whether trials served from the mirror get their own attribute values. Optuna's
        # cache layer calls this without it: it keeps what it is given (never mutating it) and copies
        # on its own for a deepcopy=True read; the uncached get_all_trials passes its deepcopy.
        # Same contract as Optuna's: trials with id > trial_id_greater_than, plus the included ids
        # (the caller's unfinished trials) that are not above it.
        included = sorted(i for i in included_trial_ids if i <= trial_id_greater_than)
        where = [_trials.c.study_id == study_id]
        if states is not None:
            assert isinstance(states, Iterable)
            where.append(_trials.c.state.in_(list(states)))
        # One select, or (more included ids than one IN list may bind) one per chunk of ids: the
        # chunks are disjoint, so their trials are only merged back into id order.
        selections = [sqlalchemy.and_(*where)]
        if trial_id_greater_than > -1:
            newer = _trials.c.trial_id > trial_id_greater_than
            if len(included) <= _IN_CHUNK:
                selections = [
                    sqlalchemy.and_(
                        *where, sqlalchemy.or_(newer, _trials.c.trial_id.in_(included)) if included else newer
                    )
                ]
            else:
                selections = [sqlalchemy.and_(*where, newer)] + [
                    sqlalchemy.and_(*where, _trials.c.trial_id.in_(included[i : i + _IN_CHUNK]))
                    for i in range(0, len(included), _IN_CHUNK)
                ]

        def read(conn: Any) -> list[FrozenTrial]:
            trials = [t for selection in selections for t in self._read_trials(conn, selection, deep=deepcopy)]
            if len(selections) > 1:
                trials.sort(key=lambda t: t._trial_id)
            # Optuna raises for an unknown study; only an empty answer needs the extra query to tell.
            if not trials and conn.execute(select_study, {"study_id": study_id}).first() is None:
                raise KeyError(f"No study with study_id {study_id} exists.")
            return trials

        select_study = sqlalchemy.select(_studies.c.study_id).where(
            _studies.c.study_id == sqlalchemy.bindparam("study_id")
        )
        return self._run("read", read)

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(study_id, states, set(), -1, deepcopy=deepcopy)

    def _read_trials(self, conn: Any, where: Any, *, deep: bool = True) -> list[FrozenTrial]:
        """Every trial matching ``where`` with its params, values, reports and attributes (1 + 5 selects)."""
        rows = conn.execute(
            sqlalchemy.select(
                _trials.c.trial_id,
                _trials.c.study_id,
                _trials.c.number,
                _trials.c.state,
                _trials.c.datetime_start,
                _trials.c.datetime_complete,
            )
            .where(where)
            .order_by(_trials.c.trial_id)
        ).all()
        if not rows:
            return []
        # Trials this process runs or ran come from the mirror, without child queries (exact_copies).
        # In a worker's incremental reads these are usually the only trials: its current and previous one.
        served = self._mirror.exact_copies(rows, deep)
        trials: dict[int, FrozenTrial] = {}
        built: dict[int, FrozenTrial] = {}
        for r in rows:
            known = served.get(r.trial_id)
            if known is not None:
                trials[r.trial_id] = known
            else:
                trials[r.trial_id] = built[r.trial_id] = FrozenTrial(
                    number=r.number,
                    state=r.state,
                    value=None,
                    values=None,
                    datetime_start=_local(r.datetime_start),
                    datetime_complete=_local(r.datetime_complete),
                    params={},
                    distributions={},
                    user_attrs={},
                    system_attrs={},
                    intermediate_values={},
                    trial_id=r.trial_id,
                )
        if built:
            self._read_children(conn, where, built, every=len(built) == len(rows))
        return list(trials.values())

    def _read_children(self, conn: Any, where: Any, built: dict[int, FrozenTrial], *, every: bool) -> None:
        """Fill ``built`` (trial id → trial) with its params, values, reports and attributes: 5 selects."""
        if len(built) == 1:  # the common single-trial read
            match: Any = lambda table: table.c.trial_id == next(iter(built))  # noqa: E731
        elif every or len(built) > _IN_CHUNK:
            # Every trial of ``where`` (or more than one IN list may bind: the children of every trial
            # of ``where`` are read, and those of trials not in ``built`` skipped): a subquery.
            ids = sqlalchemy.select(_trials.c.trial_id).where(where).scalar_subquery()
            match = lambda table: table.c.trial_id.in_(ids)  # noqa: E731
        else:
            match = lambda table: table.c.trial_id.in_(list(built))  # noqa: E731

        def children(table: sqlalchemy.Table, *cols: Any, order: Any = None) -> Any:
            stmt = sqlalchemy.select(table.c.trial_id, *cols).where(match(table))
            return conn.execute(stmt.order_by(order) if order is not None else stmt)

        # On PostgreSQL (read committed) a child row of a trial created after the first select can
        # show up: rows of trials not in ``built`` are skipped.
        for tid, name, value, text in children(
            _params, _params.c.param_name, _params.c.param_value, _params.c.distribution_json, order=_params.c.param_id
        ):
            if (trial := built.get(tid)) is not None:
                dist = _distribution(text)
                trial.params[name] = dist.to_external_repr(value)
                trial.distributions[name] = dist
        objectives: dict[int, dict[int, float]] = {}
        for tid, objective, value, kind in children(
            _values, _values.c.objective, _values.c.value, _values.c.value_type
        ):
            objectives.setdefault(tid, {})[objective] = models.TrialValueModel.stored_repr_to_value(value, kind)
        for tid, by_objective in objectives.items():
            if (trial := built.get(tid)) is not None:
                trial.values = [by_objective[i] for i in sorted(by_objective)]
        for tid, step, value, kind in children(
            _inter, _inter.c.step, _inter.c.intermediate_value, _inter.c.intermediate_value_type
        ):
            if (trial := built.get(tid)) is not None:
                trial.intermediate_values[step] = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                    value, kind
                )
        for table, attr in ((_user, "user_attrs"), (_system, "system_attrs")):
            for tid, key, text in children(table, table.c.key, table.c.value_json):
                if (trial := built.get(tid)) is not None:
                    getattr(trial, attr)[key] = json.loads(text)

    # ------------------------------------------------------------------ heartbeat

    def record_heartbeat(self, trial_id: int) -> None:
        # The database's clock, as Optuna's stale check compares against it. Only an unfinished trial
        # beats: a beat that finds the trial finished (a peer failed it as stale) or gone drops it
        # from the mirror, so the owner's next read shows the peer's FAIL (Optuna's own storage would
        # have let this beat through, and its reads were never served from memory).
        stmt = self._statements.get(("heartbeat",))
        if stmt is None:
            trial = sqlalchemy.bindparam("trial_id", type_=_trials.c.trial_id.type)
            source = sqlalchemy.select(trial, sqlalchemy.func.now()).where(_trials.c.trial_id == trial, _unfinished())
            stmt = self._insert(_beats).from_select(["trial_id", "heartbeat"], source)
            stmt = stmt.on_conflict_do_update(
                index_elements=[_beats.c.trial_id], set_={"heartbeat": sqlalchemy.func.now()}
            ).returning(_beats.c.trial_id)
            self._statements[("heartbeat",)] = stmt
        if self._run("beat", lambda conn: conn.execute(stmt, {"trial_id": trial_id}).first()) is None:
            self._mirror.forget(trial_id)


# Optuna's read-only ORM methods, inherited as they are, but run lock_free: on SQLite their
# sessions begin DEFERRED (no write lock). Every other inherited method writes, or may, and begins
# IMMEDIATE.
_ORM_READS = (
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "get_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_best_trial",
    "_get_best_trial_id",
    "_get_stale_trial_ids",
)


if UNSUPPORTED is None:

    class _LockFreeVersionManager(_rdb_storage._VersionManager):
        """Optuna's schema-version manager whose read-only checks begin DEFERRED on SQLite, and whose
        compatibility check holds one connection at a time."""

        def _check_one_at_a_time(self) -> None:
            # Optuna's check holds its session (a connection in a transaction) while get_current_version
            # opens a second one. Behind PgBouncer, as many workers starting at once as its pool has
            # server connections can each hold one and wait for a second: none gets it (query_wait_timeout
            # after 120 s; seen with 256 workers on a pool of 20). The same checks, one after the other.
            with _rdb_storage._create_scoped_session(self.scoped_session) as session:
                version_info = models.VersionInfoModel.find(session)
            if version_info is None:  # written with the schema: a database someone emptied by hand
                raise RuntimeError("the database has Optuna's tables but no version_info row")
            if self.get_current_version() != self.get_head_version():
                super().check_table_schema_compatibility()  # the mismatch, in Optuna's own words

    _LockFreeVersionManager.check_table_schema_compatibility = lock_free(  # type: ignore[method-assign]
        "_check_one_at_a_time", _LockFreeVersionManager
    )
    _LockFreeVersionManager.get_current_version = lock_free(  # type: ignore[method-assign]
        "get_current_version", _rdb_storage._VersionManager
    )

for _name in _ORM_READS:
    if _name not in vars(SweepRDBStorage) and hasattr(optuna.storages.RDBStorage, _name):  # never wrap ours
        setattr(SweepRDBStorage, _name, lock_free(_name))


# The storage's calls, each waited out as a whole while the database is away (Patience): a read or a
# guarded write is idempotent, and a transaction is retried only when it failed before its commit
# (_run). record_heartbeat is one: a beat that waits does not add a line, and the outage is timed once.
_PATIENT = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "get_all_trials",
    "_get_trials",
    "get_best_trial",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "record_heartbeat",
    "_get_stale_trial_ids",
)


for _name in _PATIENT:
    setattr(SweepRDBStorage, _name, patient(getattr(SweepRDBStorage, _name)))
