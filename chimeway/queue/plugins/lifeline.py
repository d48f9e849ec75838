"""Lifeline: jobs left ``executing`` by a worker that died go back to ``available``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

__all__ = ["Lifeline", "Rescuer"]


class Rescuer(Protocol):
    """What the lifeline calls: ``JobQueue.rescue``."""

    def rescue(self, stale_after: timedelta | None = None, *, now: datetime | None = None) -> int: ...


class Lifeline:
    """Rescue the jobs of workers whose heartbeat went stale (every 30 s by default).

    A rescued job keeps the attempt it spent; one already on its last attempt
    is discarded instead (see :meth:`JobQueue.rescue`).

    Args:
        jobs: the queue (``JobQueue``).
        interval: time between passes.
        stale_after: a heartbeat older than this means the worker is dead
            (default: the queue's ``stale_after``).
    """

    name = "lifeline"

    def __init__(self, jobs: Rescuer, *, interval: timedelta = timedelta(seconds=30),
                 stale_after: timedelta | None = None) -> None:
        self.jobs = jobs
        self.interval = interval
        self.stale_after = stale_after

    def __repr__(self) -> str:
        return f"<Lifeline every {self.interval.total_seconds():g}s>"

    def run(self, now: datetime) -> int:
        """One pass; returns how many jobs were rescued or discarded."""
        return self.jobs.rescue(self.stale_after, now=now)
