"""Delivery jobs: the job queue's way to run the executor, whatever the dispatcher.

One ``chimeway.deliver`` job carries one delivery id; the delivery row stays
the source of truth. The job is registered with every dispatcher: the
``queue`` dispatcher inserts one per planned delivery, and the rescuer
(:class:`DeliveryRescue`) inserts one for each delivery a crash left behind,
so a worker re-drives it with no operator action.

Channel outcomes map onto job outcomes:

- succeeded / permanent / bounced / last attempt → the job completes
  (the delivery row says ``succeeded`` or ``cancelled`` with the reason);
- temporary → ``Retry`` no earlier than the delivery's retry time
  (which honours the provider's ``Retry-After``);
- deferred (quiet hours) or not yet due → ``Snooze`` until due;
- in flight under another holder's live lease → ``Snooze`` until the lease
  would run out: the job completes only once the delivery is final, so a
  job rescued from a dead worker never leaves its delivery behind.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from chimeway.db import writer
from chimeway.deliveries import FINAL, Status
from chimeway.dispatch.base import Due
from chimeway.dispatch.batching import Combiner
from chimeway.dispatch.executor import Claimed, DeliveryOutcome, Executor, Sent
from chimeway.errors import UnknownChannelError
from chimeway.queue import JobInfo, JobQueue, NewJob, Retry, Snooze

__all__ = ["DELIVERY_QUEUE", "DELIVERY_WORKER", "DeliveryJobs", "DeliveryRescue"]

log = logging.getLogger("chimeway.deliveries")

DELIVERY_QUEUE = "chimeway_delivery"
DELIVERY_WORKER = "chimeway.deliver"
# Past a lease's expiry, so the rerun finds it run out rather than just alive.
LEASE_MARGIN = 0.5


class DeliveryJobs:
    """Registers the ``chimeway.deliver`` job and builds its rows.

    Args:
        executor: the shared executor.
        queue: the job queue.
        max_attempts: job attempts per delivery.
    """

    def __init__(self, executor: Executor, queue: JobQueue, *, max_attempts: int) -> None:
        self.executor = executor
        self.queue = queue
        self.max_attempts = max_attempts
        # Delivery jobs running at once in this process share their claim and
        # record transactions (group commit); each still sends on its own thread.
        self._claims: Combiner[uuid.UUID, Claimed | None] = Combiner(self._claim_batch)
        self._records: Combiner[Sent, DeliveryOutcome] = Combiner(executor.record)
        queue.register(self.deliver, name=DELIVERY_WORKER, queue=DELIVERY_QUEUE, max_attempts=max_attempts)

    def job(self, due: Due, *, unique: bool = False) -> NewJob:
        """The job row for one delivery.

        Args:
            due: the delivery and when it is due.
            unique: at most one active job of this kind per delivery (re-drives
                use it, so repeated rescues never pile up jobs).
        """
        return NewJob(worker=DELIVERY_WORKER, args={"delivery_id": str(due.id)}, queue=DELIVERY_QUEUE,
                      scheduled_at=due.not_before, max_attempts=self.max_attempts,
                      unique_key=f"{DELIVERY_WORKER}:{due.id}" if unique else None)

    def _claim_batch(self, ids: list[uuid.UUID]) -> list[Claimed | None]:
        claimed = {c.message.delivery_id: c for c in self.executor.claim(ids)}
        # Two jobs for one delivery in the same batch: only the first gets it.
        return [claimed.pop(i, None) for i in ids]

    def deliver(self, delivery_id: str, job: JobInfo) -> None:
        """The ``chimeway.deliver`` job: one attempt at one delivery, if it is due."""
        did = uuid.UUID(delivery_id)
        claimed = self._claims.call(did)
        if claimed is None and self.executor.take_back_if_expired(did, max_attempts=job.max_attempts):
            claimed = self._claims.call(did)
        if claimed is not None:
            outcome = self._records.call(self.executor.send(claimed, max_attempts=job.max_attempts))
            if outcome.status == Status.FAILED:
                wait = _seconds_until(outcome.retry_at, self.executor.clock.now())
                raise Retry(f"temporary: {outcome.result.detail}", after=wait)
            if outcome.status == Status.DISPATCHED:
                raise Retry("the attempt could not be recorded; the delivery is re-sent when its lease runs out",
                            after=self.executor.leases.ttl.total_seconds() + LEASE_MARGIN)
            if outcome.status in FINAL:
                return
            # The record changed nothing (the delivery was taken back or
            # re-driven meanwhile): the job ends only once the delivery is final.
        self._not_claimed(did)

    def _not_claimed(self, did: uuid.UUID) -> None:
        # Final already (done), in flight, not due, or on a channel this worker lacks.
        now = self.executor.clock.now()
        row = self.executor.status_of(did)
        if row is None or row.status in FINAL:
            return
        if row.status == Status.DISPATCHED:
            until = row.lease_expires_at or now
            raise Snooze(max(1.0, _seconds_until(until, now) + LEASE_MARGIN))
        if row.channel not in self.executor.channels:
            raise UnknownChannelError(
                f"delivery {did} uses channel {row.channel!r}, which is not configured in this worker"
            )
        wait = _seconds_until(row.not_before, now)
        # Claimable but not claimed: another job of this delivery holds the
        # claim right now, or it is not due yet.
        raise Snooze(max(wait, 1.0))


class DeliveryRescue:
    """The worker's rescue loop for deliveries: nothing committed is left behind.

    Each pass takes back sends whose lease ran out and gives each a delivery
    job. With the ``sync`` dispatcher it also gives jobs to deliveries its
    process left ``pending`` (killed between commit and send) and to
    ``failed``/``deferred`` ones whose time has come; the ``queue``
    dispatcher's own jobs already cover those.

    It is a worker plugin (``delivery_rescue``); ``run(now)`` is one pass at
    the executor clock's time.

    Args:
        jobs: the delivery jobs.
        include_open: also re-drive pending/failed/deferred deliveries (sync).
        pending_after: how old a ``pending`` delivery must be to count as left behind.
        interval: time between passes.
    """

    name = "delivery_rescue"

    def __init__(self, jobs: DeliveryJobs, *, include_open: bool, pending_after: timedelta,
                 interval: timedelta = timedelta(seconds=15)) -> None:
        self.jobs = jobs
        self.include_open = include_open
        self.pending_after = pending_after
        self.interval = interval

    def __repr__(self) -> str:
        return f"<DeliveryRescue every {self.interval.total_seconds():g}s>"

    def run(self, now: datetime) -> int:
        """One pass (at the executor clock's time); returns how many deliveries got a job."""
        return self()

    def __call__(self) -> int:
        """One pass; returns how many deliveries got a job."""
        executor = self.jobs.executor
        released = executor.release_expired()
        due = [Due(i) for i in released.redrive]
        if self.include_open:
            due += executor.recoverable(older_than=self.pending_after).due
        return self.redrive(due)

    def redrive(self, due: Sequence[Due]) -> int:
        """Give each delivery a (unique) job; returns how many were inserted."""
        if not due:
            return 0
        queue = self.jobs.queue
        with writer(queue.engine).begin() as conn:
            return len(queue.insert_many(conn, [self.jobs.job(d, unique=True) for d in due]))


def _seconds_until(when: datetime | None, now: datetime) -> float:
    if when is None:
        return 0.0
    return max(0.0, (when - now).total_seconds())
