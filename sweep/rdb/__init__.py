"""Optuna's RDB storage with a lean hot path: same schema, same semantics, a fraction of the SQL work.

Stock ``RDBStorage`` runs every call through an ORM session: a trial's ask + 4 suggests + 10 reports +
tell is ~21 transactions and ~73 statements, each with object loading and flushing (40-90 ms of client
CPU per trial on a small machine). ``SweepRDBStorage`` keeps Optuna's tables (so Optuna, the dashboard
and ``optuna.load_study`` read the same database) and overrides only the calls a worker makes per
trial. Three concerns, as Optuna keeps its cache layer and its sessions apart from its SQL:

- storage.py: ``SweepRDBStorage``, the SQL: one guarded Core statement per write, Core selects that
  build ``FrozenTrial`` objects for reads;
- connections.py: which connection each call runs on, in what transaction. On SQLite writes take the
  write lock at BEGIN and reads never do; on PostgreSQL reads and one-statement writes run in
  autocommit on the process's one held connection, only state changes wait for the WAL flush
  (``storage/README.md``: what a database crash can lose), a lock's transaction pins every call of
  its thread, and instead of a pre-ping per call a call on a dead connection is retried once;
- mirror.py: the trials this process created or took, in memory, write-through: ``get_trial`` on a
  running one needs no query, nor does re-reading it once finished.

Built on Optuna's internals that sweep.compat checks: on an Optuna without them, ``UNSUPPORTED`` says
why in one line and sweep.storage opens Optuna's own RDBStorage instead.
"""

from sweep.rdb.storage import INDEXES, UNSUPPORTED, SweepRDBStorage

__all__ = ["INDEXES", "UNSUPPORTED", "SweepRDBStorage"]
