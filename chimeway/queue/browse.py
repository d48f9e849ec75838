"""Looking through jobs: filtered listings, a delivery's jobs, and actions on many jobs at once.

Listings page by id (newest first) with an index behind every filter, so
they stay fast on tables of millions of rows. A search in the job's
arguments has no index to use; it looks at the newest
:data:`ARGS_SEARCH_WINDOW` jobs only, and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chimeway.clock import Clock
from chimeway.db import JsonText
from chimeway.errors import InvalidInputError, NotFoundError
from chimeway.models import ACTIVE_JOB_STATES, queue_states_table
from chimeway.queue import sql
from chimeway.queue.ops import JOB_STATES

__all__ = ["ARGS_SEARCH_WINDOW", "MAX_BULK", "Browsing", "JobFilter", "JobSummary", "WorkerStatus", "parse_ids"]

ARGS_SEARCH_WINDOW = 100_000
MAX_BULK = 10_000

c = sql.c
_jobs = sql.jobs


@dataclass(frozen=True, kw_only=True)
class JobFilter:
    """Which jobs to list or act on; every field left ``None`` matches all.

    Args:
        queue: the queue name.
        state: one of the job states.
        worker: the job's worker name (e.g. ``chimeway.deliver``).
        args_text: text that appears in the job's JSON arguments.
        inserted_after: only jobs enqueued at or after this time.
        inserted_before: only jobs enqueued before this time.
        ids: only these job ids.
    """

    queue: str | None = None
    state: str | None = None
    worker: str | None = None
    args_text: str | None = None
    inserted_after: datetime | None = None
    inserted_before: datetime | None = None
    ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in JOB_STATES:
            raise InvalidInputError(f"state must be one of {', '.join(JOB_STATES)}, got {self.state!r}")

    def conditions(self, conn: Connection) -> list[Any]:
        where: list[Any] = []
        if self.queue:
            where.append(c.queue == self.queue)
        if self.state:
            where.append(c.state == self.state)
        if self.worker:
            where.append(c.worker == self.worker)
        if self.inserted_after is not None:
            where.append(c.inserted_at >= self.inserted_after)
        if self.inserted_before is not None:
            where.append(c.inserted_at < self.inserted_before)
        if self.ids is not None:
            where.append(c.id.in_(self.ids))
        if self.args_text:
            newest = conn.execute(sa.select(sa.func.max(c.id))).scalar() or 0
            pattern = "%" + self.args_text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append(c.id > newest - ARGS_SEARCH_WINDOW)
            where.append(sa.cast(c.args, sa.Text).like(pattern, escape="\\"))
        return where


@dataclass(frozen=True, kw_only=True)
class JobSummary:
    """One job in a listing.

    Args:
        id: the job's id.
        state: its state.
        queue: its queue.
        worker: its worker name.
        args: its JSON arguments.
        attempt: attempts used so far.
        max_attempts: attempts allowed.
        priority: lower runs first.
        inserted_at: when it was enqueued.
        scheduled_at: when it is (or was) due.
        attempted_at: when its last attempt started.
        attempted_by: the worker process that ran the last attempt.
        finished_at: when it completed, was cancelled or discarded.
        last_error: the newest entry of its error list, or ``None``.
        errors: every recorded error (only filled by :meth:`Browsing.details`).
    """

    id: int
    state: str
    queue: str
    worker: str
    args: dict[str, Any] = field(hash=False)
    attempt: int
    max_attempts: int
    priority: int
    inserted_at: datetime
    scheduled_at: datetime
    attempted_at: datetime | None
    attempted_by: str | None
    finished_at: datetime | None
    last_error: str | None
    errors: tuple[dict[str, Any], ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, hash=False)

    def __str__(self) -> str:
        error = f"  last error: {self.last_error}" if self.last_error else ""
        return (f"job {self.id} [{self.state}] {self.worker} on {self.queue}, "
                f"attempt {self.attempt}/{self.max_attempts}{error}")


@dataclass(frozen=True, kw_only=True)
class WorkerStatus:
    """A worker process that has registered itself (see ``heartbeat_at`` for liveness).

    Args:
        id: the worker's id (node, pid, kind and a random suffix).
        node: the host it runs on.
        queues: queue name -> concurrency it runs.
        started_at: when it started.
        heartbeat_at: its last heartbeat.
    """

    id: str
    node: str
    queues: dict[str, int] = field(hash=False)
    started_at: datetime
    heartbeat_at: datetime


def _summary(row: Any, *, full: bool = False) -> JobSummary:
    errors = list(row.errors or [])
    last = errors[-1] if errors else None
    return JobSummary(
        id=row.id, state=row.state, queue=row.queue, worker=row.worker, args=dict(row.args or {}),
        attempt=row.attempt, max_attempts=row.max_attempts, priority=row.priority,
        inserted_at=row.inserted_at, scheduled_at=row.scheduled_at, attempted_at=row.attempted_at,
        attempted_by=row.attempted_by,
        finished_at=row.completed_at or row.cancelled_at or row.discarded_at,
        last_error=(str(last.get("error")) if isinstance(last, dict) else None),
        errors=tuple(e for e in errors if isinstance(e, dict)) if full else (),
        meta=dict(row.meta or {}) if full else {},
    )


_RETRYABLE_FROM = (*sql.FINAL_STATES, "retryable", "scheduled")
_other = _jobs.alias("other_job")


class Browsing:
    """Listings and actions on many jobs, mixed into :class:`~chimeway.queue.JobQueue`."""

    engine: Engine
    clock: Clock
    _writer: Engine

    def list_jobs(self, where: JobFilter | None = None, *, limit: int = 50,
             before_id: int | None = None) -> list[JobSummary]:
        """Jobs matching ``where``, newest first.

        Args:
            where: the filter (default: every job).
            limit: at most this many (1-1000).
            before_id: only jobs with a smaller id (the next page).
        """
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidInputError(f"limit must be between 1 and 1000, got {limit!r}")
        where = where or JobFilter()
        with self.engine.connect() as conn:
            conds = where.conditions(conn)
            if before_id is not None:
                conds.append(c.id < before_id)
            rows = conn.execute(sa.select(_jobs).where(*conds).order_by(c.id.desc()).limit(limit)).all()
        return [_summary(r) for r in rows]

    def details(self, job_id: int) -> JobSummary:
        """One job with every recorded error and traceback.

        Args:
            job_id: the job's id.

        Raises:
            NotFoundError: no job has that id.
        """
        with self.engine.connect() as conn:
            row = conn.execute(sql.SELECT_JOB, {"job_id": job_id}).first()
        if row is None:
            raise NotFoundError(f"no job with id {job_id!r}")
        return _summary(row, full=True)

    def for_delivery(self, delivery_id: Any) -> list[JobSummary]:
        """The jobs that carried one delivery (the queue dispatcher's), newest first.

        Args:
            delivery_id: the delivery's id.
        """
        # Spelt exactly as ix_chimeway_jobs_delivery is, literals included, so the index serves
        # it; sorted here, since "ORDER BY id ... LIMIT" tempts the planner into a backward scan
        # of the whole table in search of the few rows that match.
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(_jobs).where(JsonText(c.args, "delivery_id") == str(delivery_id),
                                       c.worker == sa.literal_column("'chimeway.deliver'"))
                .limit(200)
            ).all()
        return [_summary(r) for r in sorted(rows, key=lambda r: r.id, reverse=True)[:20]]

    def live_workers(self) -> list[WorkerStatus]:
        """Registered workers, most recent heartbeat first (dead ones linger until rescued)."""
        w = sql.workers
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(w).order_by(w.c.heartbeat_at.desc()).limit(500)).all()
        return [WorkerStatus(id=r.id, node=r.node, queues={str(k): int(v) for k, v in (r.queues or {}).items()},
                             started_at=r.started_at, heartbeat_at=r.heartbeat_at) for r in rows]

    # --- pausing ----------------------------------------------------------------------

    def pause_queue(self, queue: str, *, by: str | None = None) -> None:
        """Pause a queue: every worker stops claiming from it within one poll.

        Jobs already running finish; jobs can still be enqueued.

        Args:
            queue: the queue name.
            by: who paused it (shown by the dashboard).
        """
        self._set_paused(queue, self.clock.now(), by)

    def resume_queue(self, queue: str) -> None:
        """Resume a paused queue; workers claim from it again within one poll.

        Args:
            queue: the queue name.
        """
        self._set_paused(queue, None, None)

    def paused_queues(self) -> dict[str, datetime]:
        """Paused queues and when each was paused."""
        qs = queue_states_table
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(qs.c.queue, qs.c.paused_at).where(qs.c.paused_at.is_not(None)))
            return {r.queue: r.paused_at for r in rows}

    def _set_paused(self, queue: str, at: datetime | None, by: str | None) -> None:
        if not isinstance(queue, str) or not queue or len(queue) > 100:
            raise InvalidInputError(f"queue name must be 1-100 characters, got {queue!r}")
        qs = queue_states_table
        values = {"paused_at": at, "paused_by": by, "updated_at": self.clock.now()}
        for _ in range(2):
            try:
                with self._writer.begin() as conn:
                    changed = conn.execute(sa.update(qs).where(qs.c.queue == queue).values(**values)).rowcount
                    if not changed:
                        conn.execute(sa.insert(qs).values(queue=queue, **values))
                return
            except sa.exc.IntegrityError:
                continue  # another caller inserted the row first: update it instead

    def _ids(self, where: JobFilter) -> list[int]:
        with self.engine.connect() as conn:
            return list(conn.execute(
                sa.select(c.id).where(*where.conditions(conn)).order_by(c.id).limit(MAX_BULK)
            ).scalars())

    def retry_many(self, where: JobFilter) -> int:
        """Make the matching finished, retryable or scheduled jobs due now.

        A job whose unique key is held by an active job stays as it is. At
        most :data:`MAX_BULK` jobs per call.

        Args:
            where: which jobs (``JobFilter(ids=(...))`` for a selection).

        Returns:
            how many jobs were re-armed.
        """
        ids = self._ids(where)
        if not ids:
            return 0
        statement = (
            sa.update(_jobs)
            .where(
                c.id.in_(sa.bindparam("ids", expanding=True)),
                c.state.in_(_RETRYABLE_FROM),
                # Two re-armed jobs may not share a unique key, nor take one an
                # active job holds: the newest of a key wins, the rest stay.
                sa.or_(c.unique_key.is_(None), ~sa.exists().where(
                    _other.c.unique_key == c.unique_key, _other.c.id != c.id,
                    sa.or_(_other.c.state.in_(ACTIVE_JOB_STATES),
                           sa.and_(_other.c.id > c.id,
                                   _other.c.id.in_(sa.bindparam("ids", expanding=True)),
                                   _other.c.state.in_(_RETRYABLE_FROM))))),
            )
            .values(**sql._rearm)
        )
        with self._writer.begin() as conn:
            return int(conn.execute(statement, {"ids": ids, "now": self.clock.now()}).rowcount)

    def cancel_many(self, where: JobFilter) -> int:
        """Cancel the matching jobs that have not finished (at most :data:`MAX_BULK`).

        Args:
            where: which jobs.

        Returns:
            how many jobs were cancelled.
        """
        ids = self._ids(where)
        if not ids:
            return 0
        statement = (
            sa.update(_jobs)
            .where(c.id.in_(sa.bindparam("ids", expanding=True)), c.state.in_(ACTIVE_JOB_STATES))
            .values(state="cancelled", cancelled_at=sa.bindparam("now", type_=c.cancelled_at.type))
        )
        with self._writer.begin() as conn:
            return int(conn.execute(statement, {"ids": ids, "now": self.clock.now()}).rowcount)

    def delete_many(self, where: JobFilter) -> int:
        """Delete the matching jobs that are not executing (at most :data:`MAX_BULK`).

        Args:
            where: which jobs.

        Returns:
            how many jobs were deleted.
        """
        ids = self._ids(where)
        if not ids:
            return 0
        statement = sa.delete(_jobs).where(c.id.in_(sa.bindparam("ids", expanding=True)),
                                           c.state != "executing")
        with self._writer.begin() as conn:
            return int(conn.execute(statement, {"ids": ids}).rowcount)


def parse_ids(values: Sequence[str]) -> tuple[int, ...]:
    """Job ids from form or command-line values; a bad one is an input error naming it."""
    out = []
    for value in values:
        try:
            out.append(int(value))
        except (TypeError, ValueError):
            raise InvalidInputError(f"job id {value!r} is not a number") from None
    return tuple(out)
