"""What a job function sees and what it can say back.

A job function returns normally to complete, or raises one of these to steer
the queue. Any other exception is a failure: retried with backoff until the
job's attempts run out, then discarded.

::

    Exception
    └── JobOutcome
        ├── Cancel      stop for good; the job becomes ``cancelled``
        ├── Snooze      run again later without spending an attempt
        └── Retry       fail this attempt, retry no sooner than ``after``
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

__all__ = ["Cancel", "JobEvent", "JobInfo", "JobOutcome", "Retry", "Snooze"]


class JobOutcome(Exception):
    """Base of the exceptions a job raises to choose its outcome."""


class Cancel(JobOutcome):
    """Stop the job for good: it becomes ``cancelled`` and is never retried.

    Args:
        reason: why; recorded in the job's ``errors``.
    """

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(reason)
        self.reason = reason


class Snooze(JobOutcome):
    """Run the job again after ``seconds`` without spending an attempt.

    Args:
        seconds: delay before the job is due again (>= 0).
    """

    def __init__(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"Snooze seconds must be >= 0, got {seconds!r}")
        super().__init__(f"snoozed for {seconds}s")
        self.seconds = float(seconds)


class Retry(JobOutcome):
    """Fail this attempt and retry no sooner than ``after`` seconds.

    The delay is ``max(backoff, after)``, so a provider's ``Retry-After`` is
    honoured without ever retrying faster than the normal schedule. The
    attempt is spent: when attempts run out the job is discarded.

    Args:
        reason: why; recorded in the job's ``errors``.
        after: minimum delay in seconds before the next attempt.
    """

    def __init__(self, reason: str = "retry requested", *, after: float | None = None) -> None:
        if after is not None and after < 0:
            raise ValueError(f"Retry after must be >= 0, got {after!r}")
        super().__init__(reason)
        self.reason = reason
        self.after = after


@dataclass(frozen=True, kw_only=True)
class JobInfo:
    """The job being run, passed to job functions that take a ``job`` parameter.

    Args:
        id: the job's id.
        worker: registered worker name.
        queue: queue the job was claimed from.
        args: the job's JSON arguments.
        attempt: this attempt's number, starting at 1.
        max_attempts: attempts allowed before the job is discarded.
        inserted_at: when the job was enqueued.
        scheduled_at: when the job became due.
    """

    id: int
    worker: str
    queue: str
    args: dict[str, Any] = field(hash=False)
    attempt: int
    max_attempts: int
    inserted_at: datetime
    scheduled_at: datetime

    def __repr__(self) -> str:
        return (
            f"JobInfo(id={self.id}, worker={self.worker!r}, queue={self.queue!r}, args={self.args!r}, "
            f"attempt={self.attempt}/{self.max_attempts}, inserted_at={self.inserted_at.isoformat()}, "
            f"scheduled_at={self.scheduled_at.isoformat()})"
        )


EventKind = Literal["start", "stop", "exception"]


@dataclass(frozen=True, kw_only=True)
class JobEvent:
    """One telemetry event about a job run, given to ``JobQueue.on_event`` callbacks.

    ``start`` is sent before the function runs; ``stop`` after it returned,
    cancelled or snoozed; ``exception`` after any other failure (including
    ``Retry``) or when the worker is not registered.

    Args:
        kind: ``"start"``, ``"stop"`` or ``"exception"``.
        job_id: the job's id.
        worker: the job's worker name.
        queue: the job's queue.
        attempt: the attempt number being run.
        duration: seconds the function ran (``None`` for ``start``).
        state: the state the job moved to (``"executing"`` for ``start``).
        error: the error text for failures, cancel reasons and snoozes.
    """

    kind: EventKind
    job_id: int
    worker: str
    queue: str
    attempt: int
    duration: float | None = None
    state: str = "executing"
    error: str | None = None
