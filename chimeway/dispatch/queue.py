"""The ``queue`` dispatcher: one job per delivery, inserted in the caller's transaction.

The job carries only the delivery id; the delivery row stays the source of
truth, so a job for a delivery that is already final does nothing. Channel
outcomes map onto job outcomes:

- succeeded / permanent / bounced / last attempt → the job completes
  (the delivery row says ``succeeded`` or ``cancelled`` with the reason);
- temporary → ``Retry`` no earlier than the delivery's retry time
  (which honours the provider's ``Retry-After``);
- deferred (quiet hours) or not yet due → ``Snooze`` until due, without
  spending an attempt.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from chimeway.dispatch.base import Due
from chimeway.dispatch.batching import Combiner
from chimeway.dispatch.executor import Claimed, DeliveryOutcome, Executor, Sent
from chimeway.models import deliveries_table
from chimeway.queue import JobInfo, JobQueue, NewJob, Retry, Snooze

__all__ = ["DELIVERY_QUEUE", "DELIVERY_WORKER", "QueueDispatcher"]

DELIVERY_QUEUE = "chimeway_delivery"
DELIVERY_WORKER = "chimeway.deliver"


class QueueDispatcher:
    """Delivers through the job queue; workers run the jobs.

    Args:
        executor: the shared executor.
        queue: the job queue.
        max_attempts: job attempts per delivery.
    """

    name = "queue"

    def __init__(self, executor: Executor, queue: JobQueue, *, max_attempts: int) -> None:
        self.executor = executor
        self.queue = queue
        self.max_attempts = max_attempts
        # Delivery jobs running at once in this process share their claim and
        # record transactions (group commit); each still sends on its own thread.
        self._claims: Combiner[uuid.UUID, Claimed | None] = Combiner(self._claim_batch)
        self._records: Combiner[Sent, DeliveryOutcome] = Combiner(executor.record)
        queue.register(self._deliver, name=DELIVERY_WORKER, queue=DELIVERY_QUEUE, max_attempts=max_attempts)

    def planned(self, target: Session | Connection, conn: Connection, deliveries: Sequence[Due]) -> None:
        if deliveries:
            self.queue.insert_many(conn, [self._job(d) for d in deliveries])

    def redrive(self, deliveries: Sequence[Due]) -> int:
        if not deliveries:
            return 0
        with self.queue.engine.begin() as conn:
            self.queue.insert_many(conn, [self._job(d) for d in deliveries])
        return len(deliveries)

    def _job(self, due: Due) -> NewJob:
        return NewJob(worker=DELIVERY_WORKER, args={"delivery_id": str(due.id)}, queue=DELIVERY_QUEUE,
                      scheduled_at=due.not_before, max_attempts=self.max_attempts)

    def _claim_batch(self, ids: list[uuid.UUID]) -> list[Claimed | None]:
        claimed = {c.message.delivery_id: c for c in self.executor.claim(ids)}
        # Two jobs for one delivery in the same batch: only the first gets it.
        return [claimed.pop(i, None) for i in ids]

    def _deliver(self, delivery_id: str, job: JobInfo) -> None:
        did = uuid.UUID(delivery_id)
        claimed = self._claims.call(did)
        if claimed is not None:
            outcome = self._records.call(self.executor.send(claimed, max_attempts=job.max_attempts))
            if outcome.status == "failed":
                wait = _seconds_until(outcome.retry_at, self.executor.clock.now())
                raise Retry(f"temporary: {outcome.result.detail}", after=wait)
            return
        now = self.executor.clock.now()
        # Nothing claimed: final already, claimed by another worker, or not due yet.
        with self.executor.engine.connect() as conn:
            row = conn.execute(
                sa.select(deliveries_table.c.status, deliveries_table.c.not_before)
                .where(deliveries_table.c.id == did)
            ).first()
        if row is not None and row.status in ("deferred", "failed", "pending") and row.not_before is not None:
            wait = _seconds_until(row.not_before, now)
            if wait > 0:
                raise Snooze(wait)


def _seconds_until(when: datetime | None, now: datetime) -> float:
    if when is None:
        return 0.0
    return max(0.0, (when - now).total_seconds())
