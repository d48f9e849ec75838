"""Log lines for job outcomes an operator must see: retries, discards, snoozes, cancels, rescues.

Completed jobs are not logged here (they are the normal case and would
drown everything else); ``JobQueue.on_event`` and the OpenTelemetry hooks
see those.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from chimeway.logs import log_event
from chimeway.queue.outcomes import JobInfo
from chimeway.queue.runner import Result

__all__ = ["log_outcome", "log_rescued"]

log = logging.getLogger("chimeway.queue")


def _when(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def log_outcome(info: JobInfo, result: Result) -> None:
    """Log a job that did not complete: ``job.retry``, ``job.discard``, ``job.snooze`` or ``job.cancel``."""
    state = result.state
    common: dict[str, Any] = {"job_id": info.id, "queue": info.queue, "worker": info.worker, "attempt": info.attempt,
              "max_attempts": info.max_attempts}
    if state == "retryable":
        at = result.values.get("scheduled_at")
        log_event(log, logging.WARNING, "job.retry",
                  f"job {info.id} ({info.worker}) failed attempt {info.attempt}/{info.max_attempts}, "
                  f"retrying at {_when(at)}: {result.error}",
                  **common, error=result.error, retry_at=_when(at))
    elif state == "discarded":
        log_event(log, logging.ERROR, "job.discard",
                  f"job {info.id} ({info.worker}) discarded after attempt "
                  f"{info.attempt}/{info.max_attempts}: {result.error}",
                  **common, error=result.error)
    elif state == "scheduled":
        at = result.values.get("scheduled_at")
        log_event(log, logging.INFO, "job.snooze",
                  f"job {info.id} ({info.worker}) snoozed until {_when(at)}",
                  **common, until=_when(at))
    elif state == "cancelled":
        log_event(log, logging.INFO, "job.cancel",
                  f"job {info.id} ({info.worker}) cancelled itself: {result.error}",
                  **common, reason=result.error)


def log_rescued(rows: Sequence[Any], state: str) -> None:
    """Log each job taken back from a dead worker (``job.rescue``), made ``state`` again."""
    for row in rows:
        log_event(log, logging.WARNING, "job.rescue",
                  f"job {row.id} ({row.worker}) rescued from dead worker {row.attempted_by}: now {state}",
                  job_id=row.id, queue=row.queue, worker=row.worker, attempt=row.attempt,
                  dead_worker=row.attempted_by, state=state)
