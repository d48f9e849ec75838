"""The ``queue`` dispatcher: one job per delivery, inserted in the caller's transaction.

The job carries only the delivery id (see :mod:`chimeway.dispatch.jobs` for
how its outcomes map onto job outcomes); the delivery row stays the source
of truth, so a job for a delivery that is already final does nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from chimeway.db import writer
from chimeway.dispatch.base import Due
from chimeway.dispatch.jobs import DELIVERY_QUEUE, DELIVERY_WORKER, DeliveryJobs

__all__ = ["DELIVERY_QUEUE", "DELIVERY_WORKER", "QueueDispatcher"]


class QueueDispatcher:
    """Delivers through the job queue; workers run the jobs.

    Args:
        jobs: the delivery jobs (registered on the app's job queue).
    """

    name = "queue"

    def __init__(self, jobs: DeliveryJobs) -> None:
        self.jobs = jobs
        self.executor = jobs.executor
        self.queue = jobs.queue

    def planned(self, target: Session | Connection, conn: Connection, deliveries: Sequence[Due]) -> None:
        if deliveries:
            self.queue.insert_many(conn, [self.jobs.job(d) for d in deliveries])

    def redrive(self, deliveries: Sequence[Due]) -> int:
        if not deliveries:
            return 0
        # Unique per delivery: a re-drive never piles a second job onto one
        # that is still waiting to run.
        with writer(self.queue.engine).begin() as conn:
            self.queue.insert_many(conn, [self.jobs.job(d, unique=True) for d in deliveries])
        return len(deliveries)
