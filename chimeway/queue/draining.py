"""Running jobs on demand, for tests: draining queues, the inline mode, and listings of what waits.

Oban's testing vocabulary over the real queue: every job still runs through
the same claim, runner and recording as a worker's, so its row shows what a
worker would have left behind.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from chimeway.clock import Clock, utc
from chimeway.errors import InvalidInputError
from chimeway.queue import sql
from chimeway.queue.args import check_args
from chimeway.queue.browse import JobSummary, _summary
from chimeway.queue.engine import JobEngine
from chimeway.queue.outcomes import JobInfo
from chimeway.queue.registry import JobHandle
from chimeway.queue.runner import Claimed, Result
from chimeway.transactions import after_commit

__all__ = ["DRAIN_BATCH", "DrainResult", "Draining", "is_own_worker"]

# How many jobs one round of work() or drain() claims per queue.
DRAIN_BATCH = 10
_END_OF_TIME = datetime(9999, 12, 31, tzinfo=UTC)


def is_own_worker(worker: str) -> bool:
    """Whether a worker name is one of Chimeway's own (deliveries, signals, workflows, cron)."""
    return worker.startswith("chimeway.")


@dataclass(frozen=True, kw_only=True)
class DrainResult:
    """How the jobs a drain ran ended, one count per outcome.

    Args:
        completed: returned normally.
        cancelled: raised or returned ``Cancel``.
        snoozed: raised or returned ``Snooze`` (now ``scheduled`` again).
        retryable: failed with attempts left (now ``retryable``).
        discarded: failed on their last attempt.
    """

    completed: int = 0
    cancelled: int = 0
    snoozed: int = 0
    retryable: int = 0
    discarded: int = 0

    @property
    def ran(self) -> int:
        """Every job the drain ran."""
        return self.completed + self.cancelled + self.snoozed + self.retryable + self.discarded


_COUNTED = {"completed": "completed", "cancelled": "cancelled", "scheduled": "snoozed",
            "retryable": "retryable", "discarded": "discarded"}


class Draining(JobEngine):
    """Drain, inline runs and listings of waiting jobs, mixed into :class:`~chimeway.queue.JobQueue`.

    Attributes:
        inline: when ``True``, jobs of your own workers run in the committing
            thread right after the transaction that enqueued them commits
            (Chimeway's own jobs keep waiting for a worker or ``work()``).
    """

    engine: Engine
    clock: Clock
    inline: bool = False
    _writer: Engine
    _queues: set[str]

    if TYPE_CHECKING:
        def _check_queue(self, queue: str) -> None: ...

    def enqueued(self, *, worker: str | None = None, queue: str | None = None) -> list[JobSummary]:
        """Jobs waiting to run (``available`` or ``scheduled``), oldest first.

        Args:
            worker: only this worker name.
            queue: only this queue.
        """
        c = sql.c
        where: list[sa.ColumnElement[bool]] = [c.state.in_(sql.ENQUEUED_STATES)]
        if worker is not None:
            where.append(c.worker == worker)
        if queue is not None:
            where.append(c.queue == queue)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(sql.jobs).where(*where).order_by(c.id)).all()
        return [_summary(row) for row in rows]

    def drain(
        self, queues: Iterable[str] | str | None = None, *, with_scheduled: bool | datetime = True,
    ) -> DrainResult:
        """Run the queues' jobs in this thread until none is left to run; returns how they ended.

        Jobs that the drained jobs enqueue run too. A job runs at most once
        per drain through staging: one that fails or snoozes is counted and
        left ``retryable`` or ``scheduled``, as a worker would leave it.

        Args:
            queues: a queue name or names (default: every declared queue).
            with_scheduled: also run ``scheduled`` and ``retryable`` jobs
                before their time (``True``), or those due by a given time;
                ``False`` runs only jobs due at the clock's time.
        """
        names = [queues] if isinstance(queues, str) else sorted(queues or self._queues)
        for name in names:
            self._check_queue(name)
        if isinstance(with_scheduled, datetime):
            until: datetime | None = utc(with_scheduled)
        elif isinstance(with_scheduled, bool):
            until = _END_OF_TIME if with_scheduled else None
        else:
            raise InvalidInputError(f"with_scheduled must be a bool or a datetime, got {with_scheduled!r}")
        by = self.new_worker_id("drain")
        self.register_worker(by, dict.fromkeys(names, 1))
        ran: set[int] = set()
        outcomes: Counter[str] = Counter()
        try:
            while True:
                if until is not None:
                    with self._writer.begin() as conn:
                        conn.execute(sql.STAGE, {"queues": names, "until": until, "ran": sorted(ran),
                                                 "now": self.clock.now()})
                got = 0
                for name in names:
                    for job in self.claim(name, DRAIN_BATCH, by):
                        result = self.execute(job)
                        self.record(job, result, by)
                        ran.add(job.info.id)
                        outcomes[_COUNTED[result.state]] += 1
                        got += 1
                if not got:
                    break
        finally:
            self.release(by)
            self.unregister_worker(by)
        return DrainResult(**outcomes)

    def perform(
        self, handle: JobHandle, args: Mapping[str, Any], *, attempt: int = 1,
        max_attempts: int | None = None, queue: str | None = None,
    ) -> Result:
        """Run one job function exactly as a worker runs a claimed job, without a row.

        The args are checked as ``enqueue`` checks them and travel through
        JSON, so the function sees what it would see from the table; the
        result is the state a worker would write, with the function's
        return value or exception.

        Args:
            handle: the registered job.
            args: the job's arguments.
            attempt: the attempt to pretend this is (from 1).
            max_attempts: defaults to the job's.
            queue: defaults to the job's.
        """
        plain = json.loads(json.dumps(check_args(args)))
        if handle.takes_job and "job" in plain:
            raise InvalidInputError(f"job {handle.name!r} takes a 'job' parameter; args cannot use 'job'")
        limit = handle.max_attempts if max_attempts is None else max_attempts
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise InvalidInputError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        if not isinstance(attempt, int) or isinstance(attempt, bool) or not 1 <= attempt <= limit:
            raise InvalidInputError(f"attempt must be an int from 1 to max_attempts ({limit}), got {attempt!r}")
        now = self.clock.now()
        info = JobInfo(id=0, worker=handle.name, queue=queue or handle.queue, args=plain, attempt=attempt,
                       max_attempts=limit, inserted_at=now, scheduled_at=now)
        return self.execute(Claimed(info, handle.priority))

    def run_jobs(self, ids: Sequence[int]) -> list[Result]:
        """Run the given jobs now, in this thread, if they are due; returns their results.

        Args:
            ids: job ids.
        """
        if not ids:
            return []
        by = self.new_worker_id("inline")
        now = self.clock.now()
        with self._writer.begin() as conn:
            rows = conn.execute(sql.CLAIM_IDS, {"ids": list(ids), "now": now, "by": by}).all()
        if not rows:
            return []
        self.register_worker(by, dict.fromkeys({r.queue for r in rows}, 1))
        results = []
        try:
            for r in sorted(rows, key=lambda r: r.id):
                job = Claimed(
                    JobInfo(id=r.id, worker=r.worker, queue=r.queue, args=r.args, attempt=r.attempt,
                            max_attempts=r.max_attempts, inserted_at=r.inserted_at,
                            scheduled_at=r.scheduled_at),
                    r.priority,
                )
                result = self.execute(job)
                self.record(job, result, by)
                results.append(result)
        finally:
            self.release(by)
            self.unregister_worker(by)
        return results

    def _inline_after(self, session: Session | Connection, ids: Sequence[int], workers: Iterable[str]) -> None:
        """In inline mode, run the user's jobs among ``ids`` once ``session`` commits."""
        if not self.inline or not ids or all(is_own_worker(w) for w in workers):
            return
        after_commit(session, lambda: self._run_inline(list(ids)))

    def _run_inline(self, ids: list[int]) -> None:
        c = sql.c
        with self.engine.connect() as conn:
            mine = list(conn.execute(
                sa.select(c.id).where(c.id.in_(ids), ~c.worker.startswith("chimeway."))).scalars())
        self.run_jobs(mine)
