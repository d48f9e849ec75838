"""``JobQueue``: every business rule of the queue, over the statements in ``sql``."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from chimeway.clock import Clock, SystemClock, utc
from chimeway.db import is_postgres, own_tables, writer
from chimeway.errors import (
    ConfigurationError,
    InvalidInputError,
    UnknownQueueError,
)
from chimeway.queue import sql
from chimeway.queue.args import UniqueSpec, check_args, unique_key
from chimeway.queue.backoff import default_backoff
from chimeway.queue.browse import Browsing
from chimeway.queue.draining import DRAIN_BATCH, Draining
from chimeway.queue.ops import JOB_STATES, Operations, QueueCounts
from chimeway.queue.outcomes import JobEvent
from chimeway.queue.plugins.base import Plugin, check_plugins
from chimeway.queue.plugins.lifeline import Lifeline
from chimeway.queue.plugins.pruner import Pruner, job_targets
from chimeway.queue.registry import Delay, JobHandle, NewJob
from chimeway.queue.worker import Worker

__all__ = ["BUILTIN_QUEUES", "JOB_STATES", "JobQueue", "QueueCounts"]

log = logging.getLogger("chimeway.queue")

BUILTIN_QUEUES = ("chimeway_delivery", "chimeway_signals", "chimeway_workflows", "default")

F = TypeVar("F", bound=Callable[..., Any])


class JobQueue(Operations, Browsing, Draining):
    """A durable job queue in Chimeway's tables (Oban's model).

    Args:
        engine: SQLAlchemy engine (PostgreSQL or SQLite).
        clock: source of every timestamp the queue writes or compares.
        node: this node's name in ``attempted_by`` and heartbeats (default: host name).
        notify: on PostgreSQL, send ``NOTIFY`` on enqueue and ``LISTEN`` in
            workers; ``False`` polls only (e.g. behind PgBouncer in
            transaction mode).
        backoff: seconds to wait after failed attempt *n*; default
            ``15 + 2**n`` with 10% jitter.
        stale_after: a worker whose heartbeat is older than this is dead and
            its executing jobs are rescued.
        inline: run your own jobs right after the transaction that enqueued
            them commits, in the committing thread (a testing mode; see
            ``chimeway.testing.inline_jobs``).
        plugins: what every worker of this queue runs besides jobs (default:
            a :class:`~chimeway.queue.plugins.Lifeline` and a
            :class:`~chimeway.queue.plugins.Pruner` of finished jobs); see
            :attr:`plugins`.
    """

    def __init__(
        self,
        engine: Engine,
        clock: Clock | None = None,
        node: str | None = None,
        notify: bool = True,
        *,
        backoff: Callable[[int], float] = default_backoff,
        stale_after: timedelta = timedelta(seconds=60),
        inline: bool = False,
        plugins: Sequence[Plugin] | None = None,
    ) -> None:
        self.engine = engine
        self.inline = inline
        self.clock: Clock = clock or SystemClock()
        self.node = node or socket.gethostname()
        self.notify = notify and is_postgres(engine)
        self.backoff = backoff
        self.stale_after = stale_after
        self._writer = writer(engine)
        self._pg = is_postgres(engine)
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._queues: set[str] = set(BUILTIN_QUEUES)
        self._handles: dict[str, JobHandle] = {}
        self._listeners: list[Callable[[JobEvent], None]] = []
        self._inserted: list[Callable[[Connection, Sequence[Mapping[str, Any]]], None]] = []
        self._plugins = check_plugins(
            plugins if plugins is not None
            else (Lifeline(self), Pruner(engine, job_targets()))
        )

    # --- declaring -------------------------------------------------------------

    @property
    def queues(self) -> frozenset[str]:
        """Names of the declared queues."""
        return frozenset(self._queues)

    @property
    def handles(self) -> Mapping[str, JobHandle]:
        """Registered job functions by worker name."""
        return dict(self._handles)

    @property
    def plugins(self) -> tuple[Plugin, ...]:
        """What every worker of this queue runs besides jobs, each on its own thread.

        Assign a new sequence to change it (names must be unique); a
        ``Chimeway`` app sets its own (see ``Chimeway.plugins``).
        ``run_worker(plugins=...)`` overrides it for one worker.
        """
        return self._plugins

    @plugins.setter
    def plugins(self, plugins: Sequence[Plugin]) -> None:
        self._plugins = check_plugins(plugins)

    def declare_queue(self, name: str) -> None:
        """Declare a queue so jobs may be enqueued to it.

        Args:
            name: queue name (1-100 characters).
        """
        if not isinstance(name, str) or not name or len(name) > 100:
            raise InvalidInputError(f"queue name must be 1-100 characters, got {name!r}")
        self._queues.add(name)

    def register(
        self,
        fn: Callable[..., Any],
        name: str | None = None,
        queue: str = "default",
        max_attempts: int = 20,
        priority: int = 0,
        unique: UniqueSpec = None,
        chunk: int | None = None,
    ) -> JobHandle:
        """Register a job function and return its handle.

        Args:
            fn: called as ``fn(**args)``, plus ``job=JobInfo`` if it has a
                ``job`` parameter; with ``chunk``, as ``fn(jobs)`` instead.
            name: worker name stored on jobs; default ``module.qualname``.
            queue: the queue its jobs go to (must be declared).
            max_attempts: attempts before a failing job is discarded (>= 1).
            priority: default priority (lower runs first).
            unique: ``None``; ``True`` (all args); a tuple of arg names; or a
                callable ``args -> str | None``. While a job with the same key
                is active, enqueueing another returns ``None``.
            chunk: run up to this many claimed jobs together: ``fn`` gets a
                list of ``JobInfo`` and returns one outcome per job, in order
                (a value completes it; an exception is its outcome, as if a
                one-job function had returned it).
        """
        name = name or f"{fn.__module__}.{fn.__qualname__}"
        if not callable(fn):
            raise InvalidInputError(f"job {name!r} must be callable, got {type(fn).__name__}")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise InvalidInputError(f"max_attempts for job {name!r} must be >= 1, got {max_attempts!r}")
        if not isinstance(priority, int):
            raise InvalidInputError(f"priority for job {name!r} must be an int, got {priority!r}")
        if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1):
            raise InvalidInputError(f"chunk for job {name!r} must be an int >= 1, got {chunk!r}")
        self._check_queue(queue)
        existing = self._handles.get(name)
        if existing is not None and existing.fn is not fn:
            raise ConfigurationError(f"a different function is already registered as job {name!r}")
        handle = JobHandle(self, fn, name=name, queue=queue, max_attempts=max_attempts,
                           priority=priority, unique=unique, chunk=chunk)
        self._handles[name] = handle
        return handle

    def job(self, **options: Any) -> Callable[[Callable[..., Any]], JobHandle]:
        """Decorator form of :meth:`register`.

        Args:
            **options: as for :meth:`register` (``name``, ``queue``, ...).
        """

        def decorate(fn: Callable[..., Any]) -> JobHandle:
            return self.register(fn, **options)

        return decorate

    def on_event(self, callback: Callable[[JobEvent], None]) -> None:
        """Call ``callback(JobEvent)`` on every job start, stop and exception.

        Callbacks run on the worker thread; exceptions they raise are logged
        and ignored.

        Args:
            callback: the telemetry handler.
        """
        self._listeners.append(callback)

    def on_insert(self, callback: Callable[[Connection, Sequence[Mapping[str, Any]]], None]) -> None:
        """Call ``callback(conn, rows)`` in the transaction that inserts jobs.

        ``rows`` are the inserted rows' values (``queue``, ``scheduled_at``,
        ...). A dispatcher that runs jobs elsewhere uses it to wake its
        workers once that transaction commits.

        Args:
            callback: the hook; an exception it raises aborts the insert.
        """
        self._inserted.append(callback)

    def _check_queue(self, queue: str) -> None:
        if queue not in self._queues:
            raise UnknownQueueError(
                f"queue {queue!r} is not declared; declared: {sorted(self._queues)}"
            )

    # --- enqueueing --------------------------------------------------------------

    def enqueue(
        self,
        session: Session | Connection,
        worker: str,
        args: Mapping[str, Any],
        *,
        queue: str | None = None,
        schedule_in: Delay | None = None,
        scheduled_at: datetime | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        unique_key: str | None = None,
    ) -> int | None:
        """Insert one job in the caller's transaction.

        Args:
            session: the caller's ``Session`` or ``Connection``.
            worker: worker name (e.g. ``"chimeway.deliver"``).
            args: JSON arguments with string keys.
            queue: defaults to the registered worker's queue, else ``"default"``.
            schedule_in: delay (seconds or ``timedelta``) before it is due.
            scheduled_at: due time, instead of ``schedule_in``.
            priority: lower runs first.
            max_attempts: attempts before discarding.
            unique_key: explicit unique key (default from the worker's ``unique``).

        Returns:
            The new job's id, or ``None`` when a unique duplicate is active.
        """
        job = NewJob(worker=worker, args=args, queue=queue, schedule_in=schedule_in,
                     scheduled_at=scheduled_at, priority=priority, max_attempts=max_attempts,
                     unique_key=unique_key)
        now = self.clock.now()
        row = sql.as_row(self._values(job, now), now)
        with own_tables(session, self.engine) as conn:
            job_id = conn.execute(sql.insert_jobs(conn), row).scalar()
            self._announce(conn, {row["queue"]})
            if job_id is None:
                return None
            for callback in self._inserted:
                callback(conn, [row])
        self._inline_after(session, [int(job_id)], [row["worker"]])
        return int(job_id)

    def insert_many(
        self, session: Session | Connection, jobs: Iterable[NewJob | Mapping[str, Any]]
    ) -> list[int]:
        """Insert many jobs with one INSERT statement, in the caller's transaction.

        Every row is checked before anything is written.

        Args:
            session: the caller's ``Session`` or ``Connection``.
            jobs: ``NewJob`` values (or mappings of ``NewJob`` fields).

        Returns:
            Ids of the inserted jobs; unique duplicates are skipped.
        """
        now = self.clock.now()
        values = self._values
        batch = [values(j if isinstance(j, NewJob) else NewJob(**j), now) for j in jobs]
        if not batch:
            return []
        with own_tables(session, self.engine) as conn:
            ids = sql.bulk_insert(conn, batch, now)
            self._announce(conn, {v[1] for v in batch})
            if ids and self._inserted:
                rows = [sql.as_row(v, now) for v in batch]
                for callback in self._inserted:
                    callback(conn, rows)
        self._inline_after(session, ids, {v[2] for v in batch})
        return ids

    def cancel_unique(self, session: Session | Connection, keys: Sequence[str]) -> int:
        """Cancel the jobs with these unique keys that have not started, in the caller's transaction.

        A job already executing is left to finish.

        Args:
            session: the caller's ``Session`` or ``Connection``.
            keys: unique keys (as given to ``NewJob(unique_key=...)``).

        Returns:
            how many jobs were cancelled.
        """
        if not keys:
            return 0
        with own_tables(session, self.engine) as conn:
            return int(conn.execute(sql.CANCEL_UNIQUE, {"keys": list(keys), "now": self.clock.now()}).rowcount)

    def _values(self, job: NewJob, now: datetime) -> sql.JobValues:
        """A new job's checked values (see ``sql.JobValues``); raises naming the bad field."""
        worker = job.worker
        handle = self._handles.get(worker) if type(worker) is str else None
        if not isinstance(worker, str) or not worker or len(worker) > 300:
            raise InvalidInputError(f"worker name must be 1-300 characters, got {worker!r}")
        queue = job.queue or (handle.queue if handle else "default")
        if queue not in self._queues:
            self._check_queue(queue)
        args = check_args(job.args)
        if handle is not None and handle.takes_job and "job" in args:
            raise InvalidInputError(f"job {worker!r} takes a 'job' parameter; args cannot use 'job'")
        due = now if job.scheduled_at is None and job.schedule_in is None else self._due(job, now)
        priority = job.priority if job.priority is not None else (handle.priority if handle else 0)
        max_attempts = job.max_attempts or (handle.max_attempts if handle else 20)
        if (type(max_attempts) is not int and not isinstance(max_attempts, int)) or max_attempts < 1:
            raise InvalidInputError(f"max_attempts must be >= 1, got {max_attempts!r}")
        key = job.unique_key
        if key is None and handle is not None and handle.unique is not None:
            key = unique_key(worker, handle.unique, args)
        if key is not None and len(key) > 500:
            raise InvalidInputError(f"unique_key for job {worker!r} is longer than 500 characters")
        if due == now:
            return ("available", queue, worker, args, max_attempts, int(priority), key, None)
        return ("available" if due <= now else "scheduled", queue, worker, args, max_attempts,
                int(priority), key, due)

    @staticmethod
    def _due(job: NewJob, now: datetime) -> datetime:
        if job.schedule_in is not None and job.scheduled_at is not None:
            raise InvalidInputError("pass schedule_in or scheduled_at, not both")
        if job.scheduled_at is not None:
            if not isinstance(job.scheduled_at, datetime):
                raise InvalidInputError(f"scheduled_at must be a datetime, got {job.scheduled_at!r}")
            return utc(job.scheduled_at)
        if job.schedule_in is not None:
            delay = job.schedule_in
            if isinstance(delay, bool) or not isinstance(delay, int | float | timedelta):
                raise InvalidInputError(f"schedule_in must be seconds or a timedelta, got {delay!r}")
            return now + (delay if isinstance(delay, timedelta) else timedelta(seconds=delay))
        return now

    def _announce(self, conn: Connection, queues: set[str]) -> None:
        if not self.notify:
            return
        # PostgreSQL folds identical notifications within a transaction, but
        # each pg_notify is still a round trip: send once per transaction per
        # queue. Inside a savepoint always send, since a rollback to it would
        # drop the notification.
        txn = conn.get_transaction()
        if txn is None or conn.in_nested_transaction():
            sql.notify(conn, queues)
            return
        seen = conn.info.get("chimeway_notified")
        if seen is None or seen[0] is not txn:
            seen = (txn, set[str]())
            conn.info["chimeway_notified"] = seen
        fresh = queues - seen[1]
        if fresh:
            sql.notify(conn, fresh)
            seen[1].update(fresh)

    # --- running -----------------------------------------------------------------------

    def work(self, until_empty: bool = True, queues: Iterable[str] | None = None) -> int:
        """Run due jobs in this thread (scripts and tests).

        Claims and runs jobs due at ``clock.now()`` until none are due. Jobs
        that fail are rescheduled by their backoff, so they are not due again
        within the same call unless the clock moves.

        Args:
            until_empty: keep going until no job is due; ``False`` runs one batch.
            queues: queues to drain; default every declared queue.

        Returns:
            Number of jobs run.
        """
        names = sorted(queues) if queues is not None else sorted(self._queues)
        for name in names:
            self._check_queue(name)
        by = self.new_worker_id("drain")
        self.register_worker(by, dict.fromkeys(names, 1))
        ran = 0
        beat = time.monotonic()
        try:
            while True:
                got = 0
                for name in names:
                    for job in self.claim(name, DRAIN_BATCH, by):
                        self.record(job, self.execute(job), by)
                        got += 1
                        if time.monotonic() - beat > self.stale_after.total_seconds() / 4:
                            self.heartbeat(by)
                            beat = time.monotonic()
                ran += got
                if not got or not until_empty:
                    break
        finally:
            self.release(by)
            self.unregister_worker(by)
        return ran

    def run_worker(
        self,
        queues: Mapping[str, int] | None = None,
        poll_interval: float = 1.0,
        shutdown_grace: float = 15.0,
        stop_event: Any = None,
        *,
        plugins: Sequence[Plugin] | None = None,
        heartbeat_interval: float = 5.0,
        rescue_interval: float | None = None,
        prune_interval: float | None = None,
    ) -> int:
        """Run a worker until ``stop_event`` is set or SIGTERM/SIGINT arrives.

        Args:
            queues: queue name -> concurrency (threads) on this node; default
                every declared queue with 10.
            poll_interval: seconds between polls (the fallback when NOTIFY is
                off or missed; SQLite always polls).
            shutdown_grace: seconds running jobs get to finish on shutdown;
                the rest are released back to ``available``.
            stop_event: a ``threading.Event`` that stops the worker when set.
            plugins: the plugins this worker runs (default: :attr:`plugins`).
            heartbeat_interval: seconds between heartbeats.
            rescue_interval: seconds between passes of the ``lifeline`` plugin
                (default: its own interval, 30).
            prune_interval: seconds between passes of the ``pruner`` plugin
                (default: its own interval, 60); 0 leaves it out.

        Returns:
            Number of jobs this worker ran.
        """
        chosen = dict(queues) if queues is not None else dict.fromkeys(sorted(self._queues), 10)
        for name, limit in chosen.items():
            self._check_queue(name)
            if not isinstance(limit, int) or limit < 1:
                raise InvalidInputError(f"concurrency for queue {name!r} must be >= 1, got {limit!r}")
        running = check_plugins(self._plugins if plugins is None else plugins)
        intervals: dict[str, float] = {}
        if rescue_interval is not None:
            intervals[Lifeline.name] = rescue_interval
        if prune_interval is not None:
            if prune_interval:
                intervals[Pruner.name] = prune_interval
            else:
                running = tuple(p for p in running if p.name != Pruner.name)
        worker = Worker(self, chosen, poll_interval=poll_interval, shutdown_grace=shutdown_grace,
                        stop_event=stop_event, heartbeat_interval=heartbeat_interval,
                        plugins=running, intervals=intervals)
        return worker.run()
