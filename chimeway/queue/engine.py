"""The engine: the ``JobQueue`` methods a worker runs on (claim, execute, record, heartbeat).

A worker (``chimeway.queue.worker``), ``JobQueue.work`` and tools that drive
jobs by hand use these public methods and nothing else; every job
transition a worker causes is written here.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chimeway import telemetry
from chimeway.clock import Clock
from chimeway.db import schema_of, sql_in
from chimeway.queue import sql
from chimeway.queue.outcome_log import log_outcome
from chimeway.queue.outcomes import JobEvent, JobInfo
from chimeway.queue.registry import JobHandle
from chimeway.queue.runner import Claimed, Later, Result, outcome_of, run_chunk, run_job, settle

__all__ = ["Claimer", "JobEngine"]

log = logging.getLogger("chimeway.queue")

_CLAIM_TEXT: dict[tuple[str, str | None], str] = {}


class JobEngine:
    """Claiming, running and recording jobs, and worker liveness; mixed into ``JobQueue``."""

    clock: Clock
    node: str
    backoff: Callable[[int], float]
    _pg: bool
    _writer: Engine
    _autocommit: Engine
    _handles: dict[str, JobHandle]
    _listeners: list[Callable[[JobEvent], None]]

    def claim(self, queue: str, limit: int, by: str, *, acks: Sequence[int] = ()) -> list[Claimed]:
        """Mark up to ``limit`` due jobs of ``queue`` executing by ``by`` and return them.

        Jobs another claim holds are skipped, not waited for. The result is
        ordered by priority, due time and id.

        Args:
            queue: the queue to claim from.
            limit: at most this many jobs.
            by: the claiming worker's id (see :meth:`new_worker_id`).
            acks: ids of jobs ``by`` finished, completed in the same round trip.
        """
        if self._pg:
            with self._autocommit.connect() as conn:
                return self._claim_pg(conn, queue, limit, by, acks)
        now = self.clock.now()
        with self._writer.begin() as conn:
            # Finished jobs ride along with the next claim: one commit, not two.
            if acks:
                conn.execute(sql.COMPLETE_MANY, {"ids": list(acks), "by": by, "now": now})
            rows = conn.execute(sql.CLAIM, {"claim_queue": queue, "limit": limit, "now": now,
                                            "by": by}).all()
        return self._claimed(rows)

    def claimer(self, by: str) -> Claimer:
        """Claims and acknowledgements for worker ``by`` over one connection it keeps.

        A worker's loop claims many times a second; on PostgreSQL keeping one
        connection spares each claim a pool checkout (and its ping). Close it
        when done.

        Args:
            by: the claiming worker's id.
        """
        return Claimer(self, by)

    def _claim_pg(self, conn: Connection, queue: str, limit: int, by: str,
                  acks: Sequence[int]) -> list[Claimed]:
        # Acknowledgement and claim are ONE autocommit statement (see
        # sql.CLAIM_PG), run on the driver's cursor: rows come back as plain
        # tuples in the claim_columns order.
        text = _CLAIM_TEXT.get((conn.dialect.name, schema_of(conn)))
        if text is None:
            text = str(sql_in(conn, sql.CLAIM_PG).compile(dialect=conn.dialect))
            _CLAIM_TEXT[(conn.dialect.name, schema_of(conn))] = text
        params = {"claim_queue": queue, "limit": limit, "now": self.clock.now(), "by": by,
                  "acks": list(acks)}
        dbapi = conn.dialect.loaded_dbapi
        try:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(text, params)
                rows = cursor.fetchall()
            finally:
                cursor.close()
        except dbapi.Error as exc:
            # The pool must not hand this connection out again if it broke.
            conn.invalidate(exc)
            raise sa.exc.DBAPIError.instance(text, params, exc, dbapi.Error, dialect=conn.dialect) from exc
        return self._claimed(rows, json.loads)

    def _claimed(self, rows: Sequence[Any], load: Callable[[Any], Any] = lambda args: args) -> list[Claimed]:
        observed = telemetry.ENABLED and telemetry.observing()
        claimed = [
            Claimed(JobInfo(id=i, worker=w, queue=q, args=load(a), attempt=n, max_attempts=m,
                            inserted_at=ins, scheduled_at=due), p, observed)
            for i, w, q, a, n, m, p, ins, due in rows
        ]
        claimed.sort(key=lambda j: (j.priority, j.info.scheduled_at, j.info.id))
        return claimed

    def execute(self, job: Claimed) -> Result:
        """Run a claimed job's function here and decide its next state (nothing is written).

        Telemetry spans and :meth:`on_event` callbacks see the run.

        Args:
            job: from :meth:`claim`.
        """
        if telemetry.ENABLED and (telemetry.observing() if job.observed is None else job.observed):
            return self._execute_traced(job)
        if not self._listeners:
            return run_job(job, self._handles, self.clock.now, self.backoff)
        return self._execute_observed(job)

    def chunk_size(self, worker: str) -> int | None:
        """How many jobs of ``worker`` one call of its function takes (``None``: one job per call, by keywords)."""
        handle = self._handles.get(worker)
        return None if handle is None else handle.chunk

    def execute_chunk(self, jobs: Sequence[Claimed]) -> list[Result | Later]:
        """Run claimed jobs of one chunk function in one call; one result per job, in order.

        As :meth:`execute` for each job (nothing is written). A job that
        telemetry records runs as a chunk of its own, so that its span
        covers its own work only. A job whose outcome the function gives as
        a future comes back :class:`Later`: pass it to :meth:`settle_later`
        once its future resolves.

        Args:
            jobs: from :meth:`claim`, all of one worker registered with ``chunk``.
        """
        if telemetry.ENABLED and any(telemetry.observing() if j.observed is None else j.observed for j in jobs):
            return [self.execute(job) for job in jobs]
        if not self._listeners:
            return run_chunk(jobs, self._handles, self.clock.now, self.backoff)
        for job in jobs:
            info = job.info
            self._emit(JobEvent(kind="start", job_id=info.id, worker=info.worker, queue=info.queue,
                                attempt=info.attempt))
        results = run_chunk(jobs, self._handles, self.clock.now, self.backoff)
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, Result):
                self._stopped(job, result)
        return results

    def settle_later(self, job: Claimed, later: Later) -> Result:
        """The result of a chunk's job whose outcome came later (its future has resolved).

        Args:
            job: the job.
            later: what :meth:`execute_chunk` gave for it.
        """
        result = settle(job, outcome_of(later.future), time.perf_counter() - later.started, self.clock.now,
                        self.backoff)
        if self._listeners:
            self._stopped(job, result)
        return result

    def _execute_traced(self, job: Claimed) -> Result:
        info = job.info
        waited = (self.clock.now() - info.scheduled_at).total_seconds()
        with telemetry.job_span(info.id, info.worker, info.queue, info.attempt, waited) as current:
            result = (self._execute_observed(job) if self._listeners
                      else run_job(job, self._handles, self.clock.now, self.backoff))
            telemetry.job_finished(current, info.queue, result.state, result.error)
        return result

    def _execute_observed(self, job: Claimed) -> Result:
        info = job.info
        self._emit(JobEvent(kind="start", job_id=info.id, worker=info.worker, queue=info.queue,
                            attempt=info.attempt))
        result = run_job(job, self._handles, self.clock.now, self.backoff)
        self._stopped(job, result)
        return result

    def _stopped(self, job: Claimed, result: Result) -> None:
        info = job.info
        failed = result.state in ("retryable", "discarded")
        self._emit(JobEvent(kind="exception" if failed else "stop", job_id=info.id, worker=info.worker, queue=info.queue,
                            attempt=info.attempt, duration=result.duration, state=result.state,
                            error=result.error))

    def _emit(self, event: JobEvent) -> None:
        for callback in self._listeners:
            try:
                callback(event)
            except Exception:
                log.exception("job event callback %r failed", callback)

    def record(self, job: Claimed, result: Result, by: str, *, retry_for: float = 0.0) -> bool:
        """Write the outcome of a run, if ``by`` still holds the job.

        Args:
            job: from :meth:`claim`.
            result: from :meth:`execute`.
            by: the worker that claimed it.
            retry_for: seconds to keep trying through a database outage; 0
                raises the first error.

        Returns:
            ``False`` when the database stayed unreachable for ``retry_for``
            seconds: the job stays ``executing`` and is rescued once ``by``'s
            heartbeat goes stale.
        """
        deadline = time.monotonic() + retry_for
        delay = 0.05
        while True:
            try:
                self._record(job, result, by)
                return True
            except sa.exc.SQLAlchemyError:
                if not retry_for:
                    raise
                if time.monotonic() > deadline:
                    log.exception("could not record outcome of job %s", job.info.id)
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _record(self, job: Claimed, result: Result, by: str) -> None:
        values: dict[str, Any] = dict(result.values, state=result.state)
        params = {"job_id": job.info.id, "by": by, "job_attempt": job.info.attempt}
        if result.state == "completed":
            values["completed_at"] = self.clock.now()
        with self._writer.begin() as conn:
            dialect = conn.dialect.name
            if result.entry is not None:
                values["errors"] = sql.APPEND_ERROR[dialect]
                params["entry"] = json.dumps(result.entry)
            if result.state == "scheduled":
                values["meta"] = sql.COUNT_SNOOZE[dialect]
            conn.execute(sql.FINISH.values(**values), params)
        if result.state != "completed":
            log_outcome(job.info, result)

    def complete(self, ids: Sequence[int], by: str) -> None:
        """Mark jobs ``by`` ran successfully ``completed``, in one statement.

        A job cancelled or rescued meanwhile is left as it is.

        Args:
            ids: the job ids.
            by: the worker that claimed them.
        """
        engine = self._autocommit if self._pg else self._writer
        with engine.begin() as conn:
            conn.execute(sql.COMPLETE_MANY, {"ids": list(ids), "by": by, "now": self.clock.now()})

    def release(self, by: str) -> int:
        """Put the jobs ``by`` still holds back to ``available`` (a worker shutting down).

        Args:
            by: the worker's id.

        Returns:
            how many jobs were released.
        """
        with self._writer.begin() as conn:
            return int(conn.execute(sql.RELEASE_MINE, {"by": by, "now": self.clock.now()}).rowcount)

    # --- liveness ----------------------------------------------------------------------

    def new_worker_id(self, kind: str = "worker") -> str:
        """A fresh worker id: ``node:pid:kind:random``.

        Args:
            kind: what the id is for (``worker``, ``drain``).
        """
        return f"{self.node}:{os.getpid()}:{kind}:{uuid.uuid4().hex[:8]}"

    def register_worker(self, worker_id: str, queues: Mapping[str, int]) -> None:
        """Add a worker's row to ``chimeway_workers`` with a fresh heartbeat.

        Args:
            worker_id: from :meth:`new_worker_id`.
            queues: the queues it runs and their concurrency.
        """
        now = self.clock.now()
        with self._writer.begin() as conn:
            conn.execute(sql.INSERT_WORKER, {"id": worker_id, "node": self.node,
                                             "queues": dict(queues), "started_at": now,
                                             "heartbeat_at": now})

    def heartbeat(self, worker_id: str, queues: Mapping[str, int] | None = None, *,
                  now: datetime | None = None) -> None:
        """Refresh a worker's heartbeat; re-register it if another node judged it dead.

        Args:
            worker_id: the worker.
            queues: its queues, for the row if it must be written again.
            now: the heartbeat's time (default: the clock's).
        """
        now = now or self.clock.now()
        with self._writer.begin() as conn:
            beat = conn.execute(sql.HEARTBEAT, {"worker_id": worker_id, "now": now})
            if beat.rowcount == 0:
                # Another node judged this worker dead (a long stall) and
                # deleted its row; come back to life rather than stay "dead".
                conn.execute(sql.INSERT_WORKER, {"id": worker_id, "node": self.node,
                                                 "queues": dict(queues or {}), "started_at": now,
                                                 "heartbeat_at": now})

    def unregister_worker(self, worker_id: str) -> None:
        """Delete a worker's row (a clean shutdown).

        Args:
            worker_id: the worker.
        """
        with self._writer.begin() as conn:
            conn.execute(sql.DELETE_WORKER, {"worker_id": worker_id})


class Claimer:
    """One worker's claims and acknowledgements (see :meth:`JobEngine.claimer`).

    On PostgreSQL it keeps one autocommit connection, opened on first use and
    opened again after an error; on SQLite every call takes the write lock
    afresh, as :meth:`JobEngine.claim` does.
    """

    def __init__(self, jobs: JobEngine, by: str) -> None:
        self._jobs = jobs
        self.by = by
        self._conn: Connection | None = None

    def _connection(self) -> Connection:
        conn = self._conn
        if conn is None or conn.invalidated or conn.closed:
            if conn is not None:
                conn.close()
            conn = self._conn = self._jobs._autocommit.connect()
        return conn

    def claim(self, queue: str, limit: int, *, acks: Sequence[int] = ()) -> list[Claimed]:
        """As :meth:`JobEngine.claim` for this worker."""
        if not self._jobs._pg:
            return self._jobs.claim(queue, limit, self.by, acks=acks)
        return self._jobs._claim_pg(self._connection(), queue, limit, self.by, acks)

    def close(self) -> None:
        """Give the connection back."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
