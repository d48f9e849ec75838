"""Registered job functions and the handles used to enqueue them."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from chimeway.queue.args import UniqueSpec

__all__ = ["Enqueuer", "JobHandle", "NewJob"]

Delay = float | int | timedelta


@dataclass(frozen=True, kw_only=True, slots=True)
class NewJob:
    """One job to insert with :meth:`JobQueue.insert_many`.

    Args:
        worker: registered worker name (need not be registered in this process).
        args: JSON arguments with string keys.
        queue: target queue; defaults to the worker's queue, else ``"default"``.
        scheduled_at: when the job becomes due.
        schedule_in: delay from now (seconds or ``timedelta``) instead of ``scheduled_at``.
        priority: lower runs first; defaults to the worker's priority, else 0.
        max_attempts: defaults to the worker's, else 20.
        unique_key: explicit unique key; defaults to the worker's ``unique`` rule.
    """

    worker: str
    args: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    scheduled_at: datetime | None = None
    schedule_in: Delay | None = None
    priority: int | None = None
    max_attempts: int | None = None
    unique_key: str | None = None


class Enqueuer(Protocol):
    """What a :class:`JobHandle` inserts its jobs through (``JobQueue``)."""

    def enqueue(
        self,
        session: Session | Connection,
        worker: str,
        args: Mapping[str, Any],
        *,
        queue: str | None = ...,
        schedule_in: Delay | None = ...,
        scheduled_at: datetime | None = ...,
        priority: int | None = ...,
    ) -> int | None: ...

    def insert_many(
        self, session: Session | Connection, jobs: Iterable[NewJob | Mapping[str, Any]]
    ) -> list[int]: ...


class JobHandle:
    """A registered job function: enqueue it, or call it directly in tests.

    Returned by :meth:`JobQueue.register` and :meth:`JobQueue.job`.
    """

    def __init__(
        self,
        queue_: Enqueuer,
        fn: Callable[..., Any],
        *,
        name: str,
        queue: str,
        max_attempts: int,
        priority: int,
        unique: UniqueSpec,
        chunk: int | None = None,
    ) -> None:
        self._jobs = queue_
        self.fn = fn
        self.name = name
        self.queue = queue
        self.max_attempts = max_attempts
        self.priority = priority
        self.unique = unique
        # A chunk function takes a list of JobInfo and returns one outcome each.
        self.chunk = chunk
        params = inspect.signature(fn).parameters
        self.takes_job = "job" in params

    def __repr__(self) -> str:
        return f"<JobHandle {self.name} queue={self.queue!r}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function directly, outside the queue."""
        return self.fn(*args, **kwargs)

    def enqueue(
        self,
        session: Session | Connection,
        *,
        schedule_in: Delay | None = None,
        scheduled_at: datetime | None = None,
        priority: int | None = None,
        **args: Any,
    ) -> int | None:
        """Insert one job in the caller's transaction; it runs only if that commits.

        Args:
            session: the caller's ``Session`` or ``Connection``.
            schedule_in: delay (seconds or ``timedelta``) before the job is due.
            scheduled_at: when the job is due (instead of ``schedule_in``).
            priority: overrides the registered priority (lower runs first).
            **args: the job's arguments, passed to the function as keywords.

        Returns:
            The job id, or ``None`` when a unique duplicate is already active.
        """
        return self._jobs.enqueue(
            session, self.name, args, queue=self.queue, schedule_in=schedule_in,
            scheduled_at=scheduled_at, priority=priority,
        )

    def enqueue_many(
        self,
        session: Session | Connection,
        args_list: Iterable[Mapping[str, Any]],
        *,
        schedule_in: Delay | None = None,
        scheduled_at: datetime | None = None,
        priority: int | None = None,
    ) -> list[int]:
        """Insert many jobs of this worker with one INSERT statement.

        Args:
            session: the caller's ``Session`` or ``Connection``.
            args_list: one argument mapping per job.
            schedule_in: delay applied to every job.
            scheduled_at: due time applied to every job.
            priority: overrides the registered priority.

        Returns:
            Ids of the inserted jobs (unique duplicates are skipped).
        """
        return self._jobs.insert_many(
            session,
            [
                NewJob(worker=self.name, args=args, queue=self.queue, schedule_in=schedule_in,
                       scheduled_at=scheduled_at, priority=priority)
                for args in args_list
            ],
        )
