"""sweep.rdb: the lean RDB storage writes and reads exactly what Optuna's own RDBStorage does.

Every test runs on SQLite and on PostgreSQL. The reference is a stock ``optuna.storages.RDBStorage``
opened on the same database, so both the rows written and the trials read back are compared.
"""

from __future__ import annotations

import math
import multiprocessing
import threading
import time
from typing import Any

import optuna
import pytest
import sqlalchemy
from helpers import poll_until
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from sweep.rdb import SweepRDBStorage
from sweep.storage import open_storage, validate_url

CTX = multiprocessing.get_context("fork")


def _stock(url: str) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(validate_url(url))


def _seeded() -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=1)


def _script(study: optuna.Study) -> None:
    """A bit of everything a worker and Optuna do to trials, including the unusual values."""
    study.enqueue_trial({"lr": 0.01, "batch_size": 64}, user_attrs={"origin": "enqueued"})
    for i in range(4):
        trial = study.ask()  # the first pops the enqueued WAITING trial
        trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        trial.suggest_categorical("batch_size", [32, 64, 128])
        trial.suggest_int("frozen_layers", 0, 5)
        trial.suggest_float("lr", 1e-5, 1e-1, log=True)  # asked twice: same value, one row
        trial.report(0.5, 1)
        trial.report(float("nan") if i == 1 else 0.6, 2)
        trial.report(float("inf") if i == 2 else 0.8, 3)
        trial.set_user_attr("checkpoint", {"epoch": 3, "path": f"t{i}.pt"})
        trial.set_user_attr("checkpoint", {"epoch": 3, "path": f"t{i}-final.pt"})
        study._storage.set_trial_system_attr(trial._trial_id, "host", "node-1")
        state = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE][i]
        value = [0.8, None, None, float("inf")][i]
        study.tell(trial, value, state=state)
    running = study.ask()
    running.suggest_float("lr", 1e-5, 1e-1, log=True)
    running.report(0.1, 1)


def _comparable(trial: FrozenTrial) -> dict[str, Any]:
    out = {
        "number": trial.number,
        "state": trial.state,
        "values": trial.values,
        "params": trial.params,
        "distributions": trial.distributions,
        "user_attrs": trial.user_attrs,
        "system_attrs": trial.system_attrs,
        # NaN != NaN: compare its text
        "intermediate": {k: repr(v) for k, v in trial.intermediate_values.items()},
        "has_start": trial.datetime_start is not None,
        "has_complete": trial.datetime_complete is not None,
    }
    return out


def test_open_storage_is_the_lean_storage(storage_url: str) -> None:
    assert isinstance(open_storage(storage_url), SweepRDBStorage)


def test_same_trials_as_stock_optuna(storage_url: str) -> None:
    ours = optuna.create_study(
        storage=open_storage(storage_url), study_name="ours", direction="maximize", sampler=_seeded()
    )
    theirs = optuna.create_study(
        storage=_stock(storage_url), study_name="theirs", direction="maximize", sampler=_seeded()
    )
    _script(ours)
    _script(theirs)
    stock_reader = _stock(storage_url)
    sweep_reader = open_storage(storage_url)
    ours_id = ours._study_id
    theirs_id = theirs._study_id
    expected = [_comparable(t) for t in stock_reader.get_all_trials(theirs_id)]
    assert len(expected) == 5
    assert expected[0]["user_attrs"]["origin"] == "enqueued" and expected[0]["params"]["lr"] == 0.01
    # What our storage wrote, read by stock Optuna, and what our reader makes of either study.
    assert [_comparable(t) for t in stock_reader.get_all_trials(ours_id)] == expected
    assert [_comparable(t) for t in sweep_reader.get_all_trials(ours_id)] == expected
    assert [_comparable(t) for t in sweep_reader.get_all_trials(theirs_id)] == expected
    # Filters: states, and the incremental read Optuna's cache layer does.
    assert [t.number for t in sweep_reader.get_all_trials(ours_id, states=(TrialState.COMPLETE,))] == [0, 3]
    all_ids = [t._trial_id for t in stock_reader.get_all_trials(ours_id)]
    got = sweep_reader._get_trials(ours_id, None, {all_ids[1]}, all_ids[2])
    assert [t._trial_id for t in got] == [all_ids[1], all_ids[3], all_ids[4]]
    # One trial, from the database and from the in-process mirror of a running trial.
    for tid in all_ids:
        assert _comparable(sweep_reader.get_trial(tid)) == _comparable(stock_reader.get_trial(tid))
    # The owner reads its own trials (the running one too) from its mirror: the same trials, and
    # one select of the trials' rows instead of six.
    owner = ours._storage._backend
    statements: list[str] = []
    engine = owner.autocommit_engine
    sqlalchemy.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    assert [_comparable(t) for t in owner.get_all_trials(ours_id)] == expected
    assert [s for s in statements if s != "BEGIN"] == statements[-1:] and "FROM trials" in statements[-1]
    running = ours._storage.get_trial(all_ids[-1])
    assert _comparable(running) == _comparable(stock_reader.get_trial(all_ids[-1]))
    assert running.datetime_start == stock_reader.get_trial(all_ids[-1]).datetime_start
    assert math.isinf(sweep_reader.get_trial(all_ids[3]).value)


def test_errors_are_optunas(storage_url: str) -> None:
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name="errors")
    trial = study.ask()
    trial.suggest_int("k", 0, 5)
    tid = trial._trial_id
    with pytest.raises(ValueError, match="different distribution"):  # a parameter's distribution cannot change
        storage.set_trial_param(tid, "k", 0.5, FloatDistribution(0, 1))
    study.tell(trial, 1.0)
    for write in (
        lambda: storage.set_trial_intermediate_value(tid, 1, 0.5),
        lambda: storage.set_trial_user_attr(tid, "a", 1),
        lambda: storage.set_trial_system_attr(tid, "a", 1),
        lambda: storage.set_trial_param(tid, "lr", 0.1, FloatDistribution(0, 1)),
        lambda: storage.set_trial_state_values(tid, TrialState.FAIL),
    ):
        with pytest.raises(UpdateFinishedTrialError):
            write()
    assert storage.get_trial(tid).state == TrialState.COMPLETE
    assert storage.get_trial(tid).intermediate_values == {}  # nothing half-written
    missing = tid + 1000
    for call in (
        lambda: storage.get_trial(missing),
        lambda: storage.set_trial_intermediate_value(missing, 1, 0.5),
        lambda: storage.set_trial_user_attr(missing, "a", 1),
        lambda: storage.set_trial_state_values(missing, TrialState.COMPLETE, [1.0]),
        lambda: storage.get_all_trials(study._study_id + 1000),
        lambda: storage.create_new_trial(study._study_id + 1000),
    ):
        with pytest.raises(KeyError):
            call()


def test_a_trial_failed_elsewhere_is_not_written(storage_url: str) -> None:
    """A peer that fails our running trial (stale heartbeat) wins: our next write is refused."""
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name="stolen")
    trial = study.ask()
    trial.report(0.5, 1)
    _stock(storage_url).set_trial_state_values(trial._trial_id, TrialState.FAIL)
    # Our mirror still says RUNNING: a read shows the peer's FAIL all the same.
    (read,) = storage.get_all_trials(study._study_id)
    assert read.state == TrialState.FAIL and read.intermediate_values == {1: 0.5}
    with pytest.raises(UpdateFinishedTrialError):
        trial.report(0.6, 2)
    with pytest.raises(UpdateFinishedTrialError):
        storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.6])
    fresh = _stock(storage_url).get_trial(trial._trial_id)
    assert fresh.state == TrialState.FAIL and fresh.values is None and fresh.intermediate_values == {1: 0.5}
    assert storage.get_trial(trial._trial_id).state == TrialState.FAIL  # the mirror let it go


@pytest.mark.pgbouncer
def test_waiting_trial_is_popped_once(storage_url: str) -> None:
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name="pop")
    study.enqueue_trial({"x": 1})
    waiting = storage.get_all_trials(study._study_id, states=(TrialState.WAITING,))[0]
    assert storage.set_trial_state_values(waiting._trial_id, TrialState.RUNNING) is True
    assert open_storage(storage_url).set_trial_state_values(waiting._trial_id, TrialState.RUNNING) is False
    assert storage.get_trial(waiting._trial_id).state == TrialState.RUNNING


def _create_trials(url: str, n: int) -> None:
    storage = open_storage(url)
    study_id = storage.get_study_id_from_name("race")
    for _ in range(n):
        tid = storage.create_new_trial(study_id)
        storage.set_trial_param(tid, "x", 1.0, IntDistribution(0, 5))
        storage.set_trial_param(tid, "c", 0, CategoricalDistribution(["a", "b"]))
        storage.set_trial_state_values(tid, TrialState.COMPLETE, [1.0])


@pytest.mark.pgbouncer
def test_trial_numbers_stay_unique_across_processes(storage_url: str) -> None:
    optuna.create_study(storage=open_storage(storage_url), study_name="race")
    procs = [CTX.Process(target=_create_trials, args=(storage_url, 15)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    trials = _stock(storage_url).get_all_trials(_stock(storage_url).get_study_id_from_name("race"))
    assert sorted(t.number for t in trials) == list(range(60))
    assert all(t.state == TrialState.COMPLETE and t.params == {"x": 1, "c": "a"} for t in trials)


@pytest.mark.pgbouncer
def test_heartbeat_is_the_database_clock(storage_url: str) -> None:
    storage = open_storage(storage_url, heartbeat=True, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="beat")
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    storage.record_heartbeat(trial._trial_id)  # the second updates the same row
    assert storage._get_stale_trial_ids(study._study_id) == []
    # Stale once the database's clock passes the grace period (SQLite's is whole seconds): poll, not sleep.
    started = time.monotonic()
    stale = poll_until(
        lambda: storage._get_stale_trial_ids(study._study_id), timeout=10, what="the silent trial went stale"
    )
    assert stale == [trial._trial_id]
    assert time.monotonic() - started < 1 + 2.5  # the grace period, a whole second of clock, and slack


def test_pickles(storage_url: str) -> None:
    import pickle

    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name="pickled")
    study.ask().report(0.5, 1)
    clone = pickle.loads(pickle.dumps(storage))
    assert isinstance(clone, SweepRDBStorage)
    assert [t.intermediate_values for t in clone.get_all_trials(study._study_id)] == [{1: 0.5}]


def test_sqlite_writes_take_the_write_lock_at_begin_on_the_storages_engine_only(tmp_path: Any) -> None:
    """Writes BEGIN IMMEDIATE (writers queue on the busy timeout instead of failing on a lock upgrade),
    reads plain BEGIN; so does an unpickled copy's new engine, and no other engine on the file."""
    import pickle

    url = f"sqlite:///{tmp_path / 'begin.db'}"
    storage = open_storage(url)
    assert isinstance(storage, SweepRDBStorage)
    clone = pickle.loads(pickle.dumps(storage))
    other = sqlalchemy.create_engine(validate_url(url))
    for engine in (storage.engine, clone.engine, other):
        seen: list[str] = []
        sqlalchemy.event.listen(engine, "before_cursor_execute", lambda *a, seen=seen: seen.append(a[2]))
        if engine is other:
            with engine.begin() as conn:
                conn.exec_driver_sql("SELECT 1")
            assert not [s for s in seen if s.startswith("BEGIN")]
            continue
        owner = storage if engine is storage.engine else clone
        study_id = owner.create_new_study([optuna.study.StudyDirection.MINIMIZE], f"s{id(engine)}")
        seen.clear()
        trial_id = owner.create_new_trial(study_id)
        assert seen[0] == "BEGIN IMMEDIATE"
        seen.clear()
        owner.get_all_trials(study_id)
        assert seen[0] == "BEGIN"
        assert owner.get_trial(trial_id).state == TrialState.RUNNING
    clone.close()
    storage.close()
    other.dispose()


def _cut_connections(url: str) -> int:
    """Terminate every other connection to the database, as a restart or a proxy timeout would."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(validate_url(url))
    with engine.connect() as conn:
        killed = conn.execute(
            sqlalchemy.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    engine.dispose()
    return int(killed)


@pytest.mark.postgres
def test_a_cut_connection_is_retried_not_fatal(pg_fresh_url: str) -> None:
    """No pre-ping: the first call on a dead pooled connection is retried once on a fresh one."""
    storage = open_storage(pg_fresh_url, heartbeat=True)
    study = optuna.create_study(storage=storage, study_name="cut", direction="maximize")
    trial = study.ask()
    trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    trial.report(0.5, 1)
    assert _cut_connections(pg_fresh_url) >= 1
    trial.report(0.6, 2)  # a write on a dead connection
    storage.record_heartbeat(trial._trial_id)
    assert _cut_connections(pg_fresh_url) >= 1
    study.tell(trial, 0.6)  # a transaction on a dead connection
    assert _cut_connections(pg_fresh_url) >= 1
    assert [t.intermediate_values for t in storage.get_all_trials(study._study_id)] == [{1: 0.5, 2: 0.6}]
    # The same cut breaks the next call of a stock storage without pre-ping: the test can fail.
    stock = _stock(pg_fresh_url)
    stock.get_all_trials(study._study_id)
    assert _cut_connections(pg_fresh_url) >= 1
    with pytest.raises(optuna.exceptions.StorageInternalError):
        stock.get_all_trials(study._study_id)


def test_a_worker_process_holds_one_connection_at_rest_two_at_most(pg_fresh_url: str) -> None:
    """The connection budget of storage/README.md, seen by the server: a worker's trial writes, its
    heartbeat thread and its budget lock share one connection at rest and never use more than two;
    close() gives every connection back (a storage opened per `report --watch` refresh leaves none)."""
    import psycopg
    from sqlalchemy.engine import make_url

    from sweep.heartbeat import beating
    from sweep.storage import budget_counts, budget_lock

    database = make_url(pg_fresh_url).database
    admin_url = make_url(pg_fresh_url).set(drivername="postgresql", database="postgres")
    seen: list[int] = []
    done = threading.Event()
    with psycopg.connect(admin_url.render_as_string(hide_password=False), autocommit=True) as admin:

        def count() -> int:
            row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)).fetchone()
            return int(row[0]) if row else 0

        def watch() -> None:
            while not done.is_set():
                seen.append(count())

        storage = open_storage(pg_fresh_url, heartbeat=True, heartbeat_interval=1)
        study = optuna.create_study(storage=storage, study_name="budget")
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            for _ in range(3):
                with budget_lock(storage, "budget"):
                    budget_counts(study._storage, study._study_id, "retry")
                    storage.get_study_user_attrs(study._study_id)
                    trial = study.ask()
                with beating(storage, trial._trial_id):
                    x = trial.suggest_float("x", 0, 1)
                    for step in range(40):  # reports while the heartbeat beats
                        trial.report(x * step, step)
                        storage.record_heartbeat(trial._trial_id)
                study.tell(trial, x)
                study.set_user_attr("told", trial.number)  # Optuna's ORM session: the same connection
                optuna.storages.fail_stale_trials(study)
        finally:
            done.set()
            watcher.join()
        at_rest = count()
        storage.close()
        deadline = time.monotonic() + 10  # a closed connection's server process exits a moment later
        while (closed := count()) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert at_rest == 1 and max(seen) <= 2, (at_rest, max(seen))
    assert closed == 0
    assert len(storage.get_all_trials(study._study_id)) == 3  # still usable: connects again


def _forked_child(storage: Any, study_id: int, out: Any) -> None:
    try:
        study = optuna.load_study(storage=storage, study_name="forked")
        trial = study.ask()
        trial.report(0.25, 1)
        study.tell(trial, 0.25)
        out.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        out.put(repr(exc))


@pytest.mark.postgres
def test_a_forked_child_never_uses_the_parents_held_connection(pg_fresh_url: str) -> None:
    """The worker's held connection is a socket: a child forked with the storage (multiprocessing's
    fork) opens its own instead of talking on the parent's, and the parent's stays usable."""
    storage = open_storage(pg_fresh_url)
    study = optuna.create_study(storage=storage, study_name="forked")
    trial = study.ask()
    trial.report(0.5, 1)  # the parent now holds its connection
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_forked_child, args=(storage, study._study_id, out))
    child.start()
    child.join(60)
    assert out.get(timeout=5) == "ok" and child.exitcode == 0
    trial.report(0.6, 2)  # the parent's connection was not disturbed
    study.tell(trial, 0.6)
    assert sorted(t.value for t in storage.get_all_trials(study._study_id)) == [0.25, 0.6]


# ---------------------------------------------------------------- the contract where it differs from Optuna's
# (storage/README.md, "The storage contract"; every other behaviour is pinned by tests/optuna_conformance)


@pytest.mark.pgbouncer
def test_a_peer_fail_shows_at_the_owners_next_heartbeat(storage_url: str) -> None:
    """The owner serves its running trial from memory; a peer's FAIL (stale-heartbeat check) shows at
    the owner's next heartbeat (or write: test_a_trial_failed_elsewhere_is_not_written)."""
    storage = open_storage(storage_url, heartbeat=True)
    study = optuna.create_study(storage=storage, study_name="beaten")
    trial = study.ask()
    _stock(storage_url).set_trial_state_values(trial._trial_id, TrialState.FAIL)
    assert storage.get_trial(trial._trial_id).state == TrialState.RUNNING  # memory: not yet
    storage.record_heartbeat(trial._trial_id)
    assert storage.get_trial(trial._trial_id).state == TrialState.FAIL


def test_a_peers_attribute_on_our_running_trial_is_not_seen_by_us(storage_url: str) -> None:
    """Deviation: a peer may write a trial another process runs (Optuna allows it, sweep never does);
    everyone but the owner sees it at once, the owner not through its mirrored copy."""
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name="peer-attr")
    trial = study.ask()
    _stock(storage_url).set_trial_user_attr(trial._trial_id, "peer", 1)
    assert _stock(storage_url).get_trial(trial._trial_id).user_attrs == {"peer": 1}
    assert open_storage(storage_url).get_trial(trial._trial_id).user_attrs == {"peer": 1}
    assert storage.get_trial(trial._trial_id).user_attrs == {}


def test_a_deleted_study_leaves_no_trial_behind(storage_url: str) -> None:
    """Trials of a deleted study are never answered from memory, nor is a trial that reuses their id
    (SQLite hands out deleted ids again) answered with the deleted one's data, nor written by its owner."""
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name="gone")
    done = study.ask()
    done.suggest_int("k", 0, 5)
    study.tell(done, 1.0)
    running = study.ask()
    running.report(0.5, 1)
    storage.delete_study(study._study_id)
    for tid in (done._trial_id, running._trial_id):
        with pytest.raises(KeyError):
            storage.get_trial(tid)
    # Another process deletes a study whose trials we ran and creates trials that may reuse their ids.
    ours = open_storage(storage_url)
    study = optuna.create_study(storage=ours, study_name="ours")
    finished = study.ask()
    finished.suggest_int("k", 0, 5)
    study.tell(finished, 1.0)
    mine = study.ask()
    peer = _stock(storage_url)
    peer.delete_study(study._study_id)
    other = peer.create_new_study([optuna.study.StudyDirection.MINIMIZE], "other")
    reused = [peer.create_new_trial(other) for _ in range(2)]
    for tid in (finished._trial_id, mine._trial_id):
        if tid in reused:  # the row is another study's trial: read as it is
            assert ours.get_trial(tid).params == {} and ours.get_trial(tid).state == TrialState.RUNNING
    with pytest.raises(KeyError):  # our trial is gone: a write to it never lands in the other study's
        ours.set_trial_intermediate_value(mine._trial_id, 1, 0.5)
    assert all(peer.get_trial(t).intermediate_values == {} for t in reused)


def test_database_errors_are_storage_internal_errors(storage_url: str) -> None:
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name="faults")
    trial = study.ask()
    # Optuna's schema limits keys to 2048 characters: PostgreSQL refuses a longer one, SQLite stores it.
    if storage.engine.dialect.name == "postgresql":
        with pytest.raises(optuna.exceptions.StorageInternalError):
            storage.set_trial_user_attr(trial._trial_id, "k" * 3000, 1)
    broken = open_storage(storage_url)
    broken._run("write", lambda conn: conn.exec_driver_sql("DROP TABLE trial_user_attributes"))
    with pytest.raises(optuna.exceptions.StorageInternalError):  # a fault, not a raw SQLAlchemy error
        storage.set_trial_user_attr(trial._trial_id, "a", 1)


def test_deepcopy_false_shares_attribute_values(storage_url: str) -> None:
    storage = open_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name="shallow")
    trial = study.ask()
    trial.set_user_attr("nested", {"a": [1]})
    deep = storage.get_all_trials(study._study_id)[0].user_attrs["nested"]
    shallow = storage.get_all_trials(study._study_id, deepcopy=False)[0].user_attrs["nested"]
    assert shallow is storage.get_all_trials(study._study_id, deepcopy=False)[0].user_attrs["nested"]
    assert deep is not shallow and deep == shallow


def test_an_untested_optuna_falls_back_to_optunas_storage(
    storage_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """sweep.rdb overrides Optuna internals: on an Optuna outside the tested range (or lacking them) sweep
    says so on one line and runs Optuna's own RDBStorage, never a traceback in the middle of a sweep."""
    from sweep import compat, rdb, storage

    monkeypatch.setattr(optuna, "__version__", "5.1.0")
    reason = compat.rdb_unsupported()
    assert reason is not None and "5.1.0" in reason and "\n" not in reason
    monkeypatch.setattr(rdb, "UNSUPPORTED", reason)
    monkeypatch.setattr(storage, "_fallback_said", False)
    with caplog.at_level("WARNING", logger="sweep.storage"):
        first, second = open_storage(storage_url), open_storage(storage_url)
    assert type(first) is optuna.storages.RDBStorage and type(second) is optuna.storages.RDBStorage
    assert [r.getMessage() for r in caplog.records] == [
        f"sweep: using Optuna's own RDBStorage (slower): sweep.rdb cannot run: {reason}"
    ]
    study = optuna.create_study(storage=first, study_name="stock")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(second.get_all_trials(study._study_id)) == 2
