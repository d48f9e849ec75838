"""The durable job queue: Oban's model over Chimeway's tables.

::

    q = JobQueue(engine)
    send = q.register(send_receipt, queue="mailers", max_attempts=5)
    with Session(engine) as session, session.begin():
        send.enqueue(session, order_id=7)      # runs only if this commits
    q.run_worker(queues={"mailers": 5})
"""

from __future__ import annotations

from chimeway.queue.backoff import default_backoff
from chimeway.queue.browse import JobFilter, JobSummary
from chimeway.queue.manager import BUILTIN_QUEUES, JOB_STATES, JobQueue, QueueCounts
from chimeway.queue.outcomes import Cancel, JobEvent, JobInfo, JobOutcome, Retry, Snooze
from chimeway.queue.registry import JobHandle, NewJob

__all__ = [
    "BUILTIN_QUEUES",
    "JOB_STATES",
    "Cancel",
    "JobEvent",
    "JobFilter",
    "JobHandle",
    "JobInfo",
    "JobOutcome",
    "JobQueue",
    "JobSummary",
    "NewJob",
    "QueueCounts",
    "Retry",
    "Snooze",
    "default_backoff",
]
