"""Every statement the queue runs, in one place.

Statements are built once with bound parameters (never SQL ``now()``: time
comes from the injected clock) so SQLAlchemy compiles each one a single time
per dialect.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from chimeway.db import insert, sql_in
from chimeway.models import ACTIVE_JOB_STATES, UNIQUE_WHERE, Job, WorkerRow

__all__ = [
    "CLAIM",
    "CLAIM_PG",
    "COUNTS",
    "DUE_STATES",
    "NOTIFY_CHANNEL",
    "claim_columns",
    "insert_jobs",
    "notify",
]

jobs = cast(sa.Table, Job.__table__)
workers = cast(sa.Table, WorkerRow.__table__)
c = jobs.c

NOTIFY_CHANNEL = "chimeway_jobs"
DUE_STATES = ("available", "scheduled", "retryable")
FINAL_STATES = ("completed", "cancelled", "discarded")
_UNIQUE_WHERE = sa.text(UNIQUE_WHERE)
assert tuple(ACTIVE_JOB_STATES) == ("available", "scheduled", "executing", "retryable")

# What a worker needs to run a job. ``meta`` and ``errors`` stay behind: a
# failed or snoozed run extends them in the statement that records it.
claim_columns = (
    c.id, c.worker, c.queue, c.args, c.attempt, c.max_attempts, c.priority, c.inserted_at,
    c.scheduled_at,
)


def insert_jobs(conn: Connection) -> Any:
    """INSERT ... ON CONFLICT (unique_key) DO NOTHING RETURNING id, for ``conn``'s dialect.

    The conflict target spells the partial unique index's predicate so both
    PostgreSQL and SQLite pick ``uq_chimeway_jobs_unique_key``; a duplicate
    unique job is skipped silently, even when two transactions race.
    """
    return (
        insert(conn, jobs)
        .on_conflict_do_nothing(index_elements=["unique_key"], index_where=_UNIQUE_WHERE)
        .returning(c.id)
    )


JobValues = tuple[str, str, str, dict[str, Any], int, int, str | None, datetime | None]
"""A new job as insert_many checked it: (state, queue, worker, args, max_attempts,
priority, unique_key, scheduled_at), ``scheduled_at`` ``None`` when due on insertion."""


def as_row(values: JobValues, now: datetime) -> dict[str, Any]:
    """A new job's full row (every column an INSERT writes), inserted at ``now``."""
    state, queue, worker, args, max_attempts, priority, key, due = values
    return {
        "state": state, "queue": queue, "worker": worker, "args": args, "meta": {}, "errors": [],
        "attempt": 0, "max_attempts": max_attempts, "priority": priority, "unique_key": key,
        "inserted_at": now, "scheduled_at": now if due is None else due,
    }


# The rows travel as ONE JSON parameter, an array of JobValues: the driver
# sends one string that Python's C encoder wrote, and neither side parses a
# statement that grows with the batch. The server parses it once, as jsonb
# (``->`` on plain json would parse each element again for every field).
# The ids come back as one array, in insertion order (one statement's ids
# increase with its rows).
def _bulk_pg(on_conflict: str) -> str:
    return (
        "WITH inserted AS ("
        " INSERT INTO {chimeway_jobs} (state, queue, worker, args, meta, errors, attempt, max_attempts,"
        " priority, unique_key, inserted_at, scheduled_at)"
        " SELECT r->>0, r->>1, r->>2, r->3, CAST('{}' AS jsonb), CAST('[]' AS jsonb), 0,"
        " CAST(r->>4 AS integer), CAST(r->>5 AS integer), r->>6, :now,"
        " COALESCE(CAST(r->>7 AS timestamptz), :now)"
        f" FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS r{on_conflict} RETURNING id)"
        " SELECT array_agg(id ORDER BY id) FROM inserted"
    )


_BULK_PG = _bulk_pg(f" ON CONFLICT (unique_key) WHERE {UNIQUE_WHERE} DO NOTHING")
# A batch without unique keys cannot conflict (the unique index holds only
# keyed jobs): a plain INSERT spares every row the speculative insertion
# ON CONFLICT makes (one WAL record a row, about a tenth of the statement).
_BULK_PG_PLAIN = _bulk_pg("")

_encode = json.JSONEncoder(separators=(",", ":"), default=datetime.isoformat).encode


def bulk_insert(conn: Connection, batch: list[JobValues], now: datetime) -> list[int]:
    """Insert new jobs with one statement, all inserted at ``now``; returns the new ids.

    On PostgreSQL the whole batch is one JSON parameter (see ``_BULK_PG``).
    """
    if conn.dialect.name != "postgresql":
        rows = [as_row(values, now) for values in batch]
        return [int(i) for i in conn.execute(insert_jobs(conn), rows).scalars()]
    statement = _BULK_PG if any(values[6] is not None for values in batch) else _BULK_PG_PLAIN
    ids = conn.execute(sql_in(conn, statement), {"rows": _encode(batch), "now": now}).scalar()
    return list(ids or ())


def notify(conn: Connection, queues: set[str]) -> None:
    """Announce new jobs; PostgreSQL delivers the NOTIFY only if the transaction commits."""
    for queue in sorted(queues):
        conn.execute(_NOTIFY, {"channel": NOTIFY_CHANNEL, "payload": queue})


_NOTIFY = sa.text("SELECT pg_notify(:channel, :payload)")

_picked = (
    sa.select(c.id)
    .where(
        c.queue == sa.bindparam("claim_queue"),
        c.state.in_(DUE_STATES),
        c.scheduled_at <= sa.bindparam("now", type_=c.scheduled_at.type),
    )
    .order_by(c.priority, c.scheduled_at, c.id)
    .limit(sa.bindparam("limit", type_=sa.Integer))
    .with_for_update(skip_locked=True)
    .cte("picked")
)

# One statement claims a whole batch: rows locked by another worker's claim
# are skipped rather than waited for, so workers never serialize on the head
# of the queue. SQLite ignores FOR UPDATE; its writer transaction is the lock.
CLAIM = (
    sa.update(jobs)
    .where(c.id.in_(sa.select(_picked.c.id)))
    .values(
        state="executing",
        attempt=c.attempt + 1,
        attempted_at=sa.bindparam("now", type_=c.attempted_at.type),
        attempted_by=sa.bindparam("by"),
    )
    .returning(*claim_columns)
)

# PostgreSQL runs acknowledgement and claim as ONE autocommit statement: the
# data-modifying CTE always runs to completion, so a worker's loop costs one
# round trip and one commit per cycle. Run it as ``sql_in(conn, CLAIM_PG)``
# (it names the jobs table in Chimeway's schema). The args come back as
# JSON text: ``json.loads`` of a str costs less than the driver's jsonb loader.
CLAIM_PG = (
    "WITH acked AS ("
    " UPDATE {chimeway_jobs} SET state = 'completed', completed_at = :now"
    " WHERE id = ANY(CAST(:acks AS bigint[])) AND state = 'executing' AND attempted_by = :by"
    " RETURNING id),"
    " picked AS ("
    " SELECT id FROM {chimeway_jobs}"
    " WHERE queue = :claim_queue AND state IN ('available','scheduled','retryable')"
    " AND scheduled_at <= :now"
    " ORDER BY priority, scheduled_at, id LIMIT :limit FOR UPDATE SKIP LOCKED)"
    " UPDATE {chimeway_jobs} AS j SET state = 'executing', attempt = j.attempt + 1,"
    " attempted_at = :now, attempted_by = :by"
    " FROM picked WHERE j.id = picked.id"
    " RETURNING j.id, j.worker, j.queue, CAST(j.args AS text), j.attempt, j.max_attempts, j.priority,"
    " j.inserted_at, j.scheduled_at"
)

_mine = sa.and_(c.state == "executing", c.attempted_by == sa.bindparam("by"))

# Completions are acknowledged in batches; the state/owner guard keeps a job
# that was cancelled or rescued meanwhile from being overwritten.
COMPLETE_MANY = (
    sa.update(jobs)
    .where(c.id.in_(sa.bindparam("ids", expanding=True)), _mine)
    .values(completed_at=sa.bindparam("now", type_=c.completed_at.type), state="completed")
)

FINISH = (
    sa.update(jobs)
    .where(c.id == sa.bindparam("job_id"), _mine, c.attempt == sa.bindparam("job_attempt"))
)

# A failed, cancelled or discarded run appends its entry (bound as ``entry``,
# JSON text) to ``errors``; a snooze counts itself in ``meta``. Both are
# written where they are, so no worker reads them back.
_entry_param = sa.bindparam("entry", type_=sa.Text())
APPEND_ERROR = {
    "postgresql": c.errors.op("||", return_type=c.errors.type)(
        sa.func.jsonb_build_array(sa.cast(_entry_param, postgresql.JSONB()))),
    "sqlite": sa.func.json_insert(c.errors, "$[#]", sa.func.json(_entry_param), type_=c.errors.type),
}
COUNT_SNOOZE = {
    "postgresql": sa.literal_column(
        "jsonb_set(meta, '{snoozed}', to_jsonb(COALESCE(CAST(meta->>'snoozed' AS integer), 0) + 1))",
        c.meta.type),
    "sqlite": sa.literal_column(
        "json_set(meta, '$.snoozed', COALESCE(json_extract(meta, '$.snoozed'), 0) + 1)", c.meta.type),
}

RELEASE_MINE = (
    sa.update(jobs)
    .where(_mine)
    .values(state="available", scheduled_at=sa.bindparam("now", type_=c.scheduled_at.type))
)

_live_workers = sa.select(workers.c.id).where(
    workers.c.heartbeat_at >= sa.bindparam("cutoff", type_=workers.c.heartbeat_at.type)
)
_orphaned = sa.and_(
    c.state == "executing",
    sa.or_(c.attempted_by.is_(None), c.attempted_by.not_in(_live_workers)),
)

RESCUE_AVAILABLE = (
    sa.update(jobs)
    .where(_orphaned, c.attempt < c.max_attempts)
    .values(state="available", scheduled_at=sa.bindparam("now", type_=c.scheduled_at.type))
)
RESCUE_DISCARD = (
    sa.update(jobs)
    .where(_orphaned, c.attempt >= c.max_attempts)
    .values(state="discarded", discarded_at=sa.bindparam("now", type_=c.discarded_at.type))
)
DELETE_STALE_WORKERS = sa.delete(workers).where(
    workers.c.heartbeat_at < sa.bindparam("cutoff", type_=workers.c.heartbeat_at.type)
)

INSERT_WORKER = sa.insert(workers)
HEARTBEAT = (
    sa.update(workers)
    .where(workers.c.id == sa.bindparam("worker_id"))
    .values(heartbeat_at=sa.bindparam("now", type_=workers.c.heartbeat_at.type))
)
DELETE_WORKER = sa.delete(workers).where(workers.c.id == sa.bindparam("worker_id"))

COUNTS = sa.select(c.queue, c.state, sa.func.count()).group_by(c.queue, c.state)
OLDEST_DUE = (
    sa.select(c.queue, sa.func.min(c.scheduled_at))
    .where(c.state.in_(DUE_STATES), c.scheduled_at <= sa.bindparam("now", type_=c.scheduled_at.type))
    .group_by(c.queue)
)

SELECT_JOB = sa.select(jobs).where(c.id == sa.bindparam("job_id"))

# Retrying a finished job re-arms it with at least one more attempt.
_rearm = {
    "state": "available",
    "scheduled_at": sa.bindparam("now", type_=c.scheduled_at.type),
    "max_attempts": sa.case((c.max_attempts > c.attempt, c.max_attempts), else_=c.attempt + 1),
    "completed_at": None,
    "cancelled_at": None,
    "discarded_at": None,
}
RETRY_ONE = (
    sa.update(jobs)
    .where(c.id == sa.bindparam("job_id"), c.state.in_((*FINAL_STATES, "retryable", "scheduled")))
    .values(**_rearm)
)
_other = jobs.alias("other")
# A discarded job whose unique key is active again (or shared by a newer
# discarded job) stays put: re-arming it would break the unique index.
RETRY_DISCARDED = (
    sa.update(jobs)
    .where(
        c.state == "discarded",
        sa.or_(
            c.unique_key.is_(None),
            ~sa.exists().where(
                _other.c.unique_key == c.unique_key,
                sa.or_(_other.c.state.in_(ACTIVE_JOB_STATES), sa.and_(
                    _other.c.state == "discarded", _other.c.id > c.id)),
            ),
        ),
    )
    .values(**_rearm)
)

CANCEL_ONE = (
    sa.update(jobs)
    .where(c.id == sa.bindparam("job_id"), c.state.in_(ACTIVE_JOB_STATES))
    .values(state="cancelled", cancelled_at=sa.bindparam("now", type_=c.cancelled_at.type))
)

# Jobs made pointless by their callers' own writes (a workflow run that left
# its wait before its timer fired), looked up through the unique key index.
CANCEL_UNIQUE = (
    sa.update(jobs)
    .where(
        c.unique_key.in_(sa.bindparam("keys", expanding=True)),
        _UNIQUE_WHERE,
        c.state.in_(DUE_STATES),
    )
    .values(state="cancelled", cancelled_at=sa.bindparam("now", type_=c.cancelled_at.type))
)

# Claiming given jobs (a test's inline mode runs the jobs its commit made):
# the same transition as CLAIM, for the ones that are still due.
CLAIM_IDS = (
    sa.update(jobs)
    .where(
        c.id.in_(sa.bindparam("ids", expanding=True)),
        c.state.in_(DUE_STATES),
        c.scheduled_at <= sa.bindparam("now", type_=c.scheduled_at.type),
    )
    .values(
        state="executing",
        attempt=c.attempt + 1,
        attempted_at=sa.bindparam("now", type_=c.attempted_at.type),
        attempted_by=sa.bindparam("by"),
    )
    .returning(*claim_columns)
)

# Draining with scheduled jobs: make waiting jobs due now (those of the given
# queues due by ``until``), except the ones this drain has already run.
STAGE = (
    sa.update(jobs)
    .where(
        c.queue.in_(sa.bindparam("queues", expanding=True)),
        c.state.in_(("scheduled", "retryable")),
        c.scheduled_at <= sa.bindparam("until", type_=c.scheduled_at.type),
        c.id.not_in(sa.bindparam("ran", expanding=True)),
    )
    .values(state="available", scheduled_at=sa.bindparam("now", type_=c.scheduled_at.type))
)

ENQUEUED_STATES = ("available", "scheduled")
