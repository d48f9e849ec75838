"""Heartbeat: a running worker says it is alive, so its jobs are not rescued from under it."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Protocol

__all__ = ["Beater", "Heartbeat"]


class Beater(Protocol):
    """What a heartbeat calls: ``JobQueue.heartbeat``."""

    def heartbeat(self, worker_id: str, queues: Mapping[str, int] | None = None, *,
                  now: datetime | None = None) -> None: ...


class Heartbeat:
    """Refresh one worker's row in ``chimeway_workers`` (every worker runs one).

    Args:
        jobs: the queue (``JobQueue``).
        worker_id: the worker's id.
        queues: its queues and their concurrency (re-registered if another
            node judged the worker dead during a long stall).
        interval: time between beats.
    """

    name = "heartbeat"

    def __init__(self, jobs: Beater, worker_id: str, queues: Mapping[str, int], *,
                 interval: timedelta = timedelta(seconds=5)) -> None:
        self.jobs = jobs
        self.worker_id = worker_id
        self.queues = dict(queues)
        self.interval = interval

    def __repr__(self) -> str:
        return f"<Heartbeat of {self.worker_id} every {self.interval.total_seconds():g}s>"

    def run(self, now: datetime) -> int:
        """One beat; returns 1."""
        self.jobs.heartbeat(self.worker_id, self.queues, now=now)
        return 1
