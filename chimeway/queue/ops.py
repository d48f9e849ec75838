"""Operating the queue: counts, retry, cancel, inspection, pruning and rescue."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from chimeway.clock import Clock, utc
from chimeway.errors import InvalidInputError, NotFoundError
from chimeway.models import Job
from chimeway.queue import sql
from chimeway.queue.outcome_log import log_rescued
from chimeway.queue.plugins.pruner import DEFAULT_JOB_AGES, Pruner, job_targets

__all__ = ["JOB_STATES", "Operations", "QueueCounts"]

log = logging.getLogger("chimeway.queue")

JOB_STATES = (
    "available", "scheduled", "executing", "retryable", "completed", "discarded", "cancelled",
)


@dataclass(frozen=True, kw_only=True)
class QueueCounts:
    """Jobs in one queue, by state.

    Args:
        queue: the queue name.
        states: a count for every job state (zero included).
        oldest_available_age: seconds the oldest due job has waited, or ``None``.
    """

    queue: str
    states: Mapping[str, int]
    oldest_available_age: float | None


class Operations:
    """The operator's verbs, mixed into :class:`~chimeway.queue.JobQueue`."""

    engine: Engine
    clock: Clock
    stale_after: timedelta
    _writer: Engine
    _queues: set[str]

    def rescue(self, stale_after: timedelta | None = None, *, now: datetime | None = None) -> int:
        """Return jobs left ``executing`` by dead workers to ``available``.

        A worker is dead when its heartbeat is older than ``stale_after``.
        Rescued jobs keep the attempt they spent; one already at
        ``max_attempts`` is discarded instead. Workers do this by themselves
        (the :class:`~chimeway.queue.plugins.Lifeline` plugin).

        Args:
            stale_after: defaults to the queue's ``stale_after``.
            now: the time to judge heartbeats at (default: the clock's).

        Returns:
            Number of jobs rescued or discarded.
        """
        now = now or self.clock.now()
        params = {"cutoff": now - (stale_after or self.stale_after), "now": now}
        seen = (sql.c.id, sql.c.queue, sql.c.worker, sql.c.attempt, sql.c.attempted_by)
        with self._writer.begin() as conn:
            revived = conn.execute(sql.RESCUE_AVAILABLE.returning(*seen), params).all()
            discarded = conn.execute(sql.RESCUE_DISCARD.returning(*seen), params).all()
            conn.execute(sql.DELETE_STALE_WORKERS, params)
        log_rescued(revived, "available")
        log_rescued(discarded, "discarded")
        return len(revived) + len(discarded)

    def prune(
        self,
        *,
        completed: timedelta | None = DEFAULT_JOB_AGES["completed"],
        cancelled: timedelta | None = DEFAULT_JOB_AGES["cancelled"],
        discarded: timedelta | None = DEFAULT_JOB_AGES["discarded"],
        limit: int = 1000,
    ) -> int:
        """Delete every finished job older than its state's age, however many there are.

        Workers do this by themselves every minute (the
        :class:`~chimeway.queue.plugins.Pruner` plugin).

        Args:
            completed: age after which completed jobs go (``None`` keeps them).
            cancelled: likewise for cancelled jobs.
            discarded: likewise for discarded jobs.
            limit: jobs per transaction, to keep each one short.

        Returns:
            Number of jobs deleted.
        """
        targets = job_targets(completed=completed, cancelled=cancelled, discarded=discarded)
        pruner = Pruner(self.engine, targets, batch_size=limit)
        return sum(pruner.prune(self.clock.now()).values())

    def counts(self) -> dict[str, QueueCounts]:
        """Jobs per queue and state, and how long the oldest due job has waited.

        Every declared queue is present, with zeros when empty.
        """
        now = self.clock.now()
        table: dict[str, dict[str, int]] = {q: dict.fromkeys(JOB_STATES, 0) for q in self._queues}
        with self.engine.connect() as conn:
            for queue, state, n in conn.execute(sql.COUNTS):
                table.setdefault(queue, dict.fromkeys(JOB_STATES, 0))[state] = int(n)
            oldest = {r[0]: r[1] for r in conn.execute(sql.OLDEST_DUE, {"now": now})}
        return {
            queue: QueueCounts(
                queue=queue, states=states,
                oldest_available_age=(
                    (now - utc(oldest[queue])).total_seconds() if queue in oldest else None
                ),
            )
            for queue, states in sorted(table.items())
        }

    def get(self, job_id: int) -> Job:
        """Load one job row (detached).

        Args:
            job_id: the job's id.

        Raises:
            NotFoundError: no job has that id.
        """
        with Session(self.engine, expire_on_commit=False) as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"no job with id {job_id!r}")
            session.expunge(job)
            return job

    def retry(self, job_id: int) -> bool:
        """Make a finished, retryable or scheduled job due now.

        A job that already used all its attempts gets one more.

        Args:
            job_id: the job's id.

        Returns:
            ``True`` if the job was re-armed, ``False`` if it is available or executing.

        Raises:
            NotFoundError: no job has that id.
        """
        try:
            with self._writer.begin() as conn:
                changed = conn.execute(sql.RETRY_ONE, {"job_id": job_id,
                                                       "now": self.clock.now()}).rowcount
        except sa.exc.IntegrityError as exc:
            raise InvalidInputError(
                f"job {job_id} cannot be retried: a job with its unique key is already active"
            ) from exc
        if not changed:
            self.get(job_id)
        return bool(changed)

    def retry_discarded(self) -> int:
        """Re-arm every discarded job (those whose unique key is active again stay).

        Returns:
            Number of jobs made available.
        """
        with self._writer.begin() as conn:
            return int(conn.execute(sql.RETRY_DISCARDED, {"now": self.clock.now()}).rowcount)

    def cancel(self, job_id: int) -> bool:
        """Cancel a job that has not finished.

        An executing job is marked ``cancelled`` at once; its running call is
        not interrupted, and whatever it returns is ignored.

        Args:
            job_id: the job's id.

        Returns:
            ``True`` if the job was cancelled, ``False`` if it had already finished.

        Raises:
            NotFoundError: no job has that id.
        """
        with self._writer.begin() as conn:
            changed = conn.execute(sql.CANCEL_ONE, {"job_id": job_id,
                                                    "now": self.clock.now()}).rowcount
        if not changed:
            self.get(job_id)
        return bool(changed)
