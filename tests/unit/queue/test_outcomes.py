"""What each way of leaving a job function does to the job row."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from chimeway.errors import NotFoundError
from chimeway.queue import Cancel, JobEvent, JobInfo, JobQueue, Retry, Snooze


def enqueue(engine: sa.Engine, q: JobQueue, worker: str, **args: Any) -> int:
    with engine.begin() as conn:
        job_id = q.enqueue(conn, worker, args)
    assert job_id is not None
    return job_id


def test_return_completes_and_passes_args_and_job_info(
    q: JobQueue, sqlite_engine: sa.Engine, clock: Any
) -> None:
    seen: list[tuple[int, JobInfo]] = []

    def task(n: int, job: JobInfo) -> None:
        seen.append((n, job))

    q.register(task, name="task")
    job_id = enqueue(sqlite_engine, q, "task", n=5)
    assert q.work() == 1
    row = q.get(job_id)
    assert row.state == "completed"
    assert row.completed_at == clock.now()
    assert row.attempt == 1
    n, info = seen[0]
    assert n == 5
    assert (info.id, info.worker, info.queue, info.attempt, info.max_attempts) == (
        job_id, "task", "default", 1, 20)
    assert info.args == {"n": 5}


def test_failure_retries_with_backoff_then_discards(
    q: JobQueue, sqlite_engine: sa.Engine, clock: Any
) -> None:
    def flaky() -> None:
        raise ValueError("provider down")

    q.register(flaky, name="flaky", max_attempts=3)
    job_id = enqueue(sqlite_engine, q, "flaky")
    start = clock.now()

    assert q.work() == 1
    row = q.get(job_id)
    assert (row.state, row.attempt) == ("retryable", 1)
    assert row.scheduled_at == start + timedelta(seconds=10)
    assert q.work() == 0, "not due before its backoff"

    clock.advance(seconds=10)
    assert q.work() == 1
    row = q.get(job_id)
    assert (row.state, row.attempt) == ("retryable", 2)
    assert row.scheduled_at == clock.now() + timedelta(seconds=20)

    clock.advance(seconds=20)
    assert q.work() == 1
    row = q.get(job_id)
    assert (row.state, row.attempt) == ("discarded", 3)
    assert row.discarded_at == clock.now()
    assert [e["attempt"] for e in row.errors] == [1, 2, 3]
    assert all(e["error"] == "ValueError: provider down" for e in row.errors)
    assert "flaky" in row.errors[0]["traceback"]


def test_cancel_stops_for_good(q: JobQueue, sqlite_engine: sa.Engine, clock: Any) -> None:
    def task() -> None:
        raise Cancel("user deleted")

    q.register(task, name="task")
    job_id = enqueue(sqlite_engine, q, "task")
    assert q.work() == 1
    row = q.get(job_id)
    assert row.state == "cancelled"
    assert row.cancelled_at == clock.now()
    assert row.errors[0]["error"] == "cancelled: user deleted"
    clock.advance(days=30)
    assert q.work() == 0


def test_snooze_reschedules_without_spending_an_attempt(
    q: JobQueue, sqlite_engine: sa.Engine, clock: Any
) -> None:
    attempts: list[int] = []

    def task(job: JobInfo) -> None:
        attempts.append(job.attempt)
        if len(attempts) < 3:
            raise Snooze(60)

    q.register(task, name="task", max_attempts=1)
    job_id = enqueue(sqlite_engine, q, "task")
    assert q.work() == 1
    row = q.get(job_id)
    assert (row.state, row.attempt, row.meta) == ("scheduled", 0, {"snoozed": 1})
    assert row.scheduled_at == clock.now() + timedelta(seconds=60)
    clock.advance(seconds=59)
    assert q.work() == 0
    clock.advance(seconds=1)
    assert q.work() == 1
    clock.advance(seconds=60)
    assert q.work() == 1
    row = q.get(job_id)
    assert row.state == "completed", "max_attempts=1 was never spent by snoozing"
    assert attempts == [1, 1, 1]
    assert row.errors == []


def test_retry_after_is_a_floor_over_backoff(
    q: JobQueue, sqlite_engine: sa.Engine, clock: Any
) -> None:
    afters = iter([120.0, 1.0])

    def task() -> None:
        raise Retry("429 Too Many Requests", after=next(afters))

    q.register(task, name="task", max_attempts=3)
    job_id = enqueue(sqlite_engine, q, "task")
    q.work()
    row = q.get(job_id)
    assert row.state == "retryable"
    assert row.scheduled_at == clock.now() + timedelta(seconds=120), "Retry-After beats backoff 10s"
    clock.advance(seconds=120)
    q.work()
    row = q.get(job_id)
    assert row.scheduled_at == clock.now() + timedelta(seconds=20), "backoff 20s beats after=1s"
    assert [e["error"] for e in row.errors] == ["Retry: 429 Too Many Requests"] * 2


def test_unregistered_worker_is_discarded_with_a_reason(
    q: JobQueue, sqlite_engine: sa.Engine
) -> None:
    job_id = enqueue(sqlite_engine, q, "nobody.knows.me")
    assert q.work() == 1
    row = q.get(job_id)
    assert row.state == "discarded"
    assert "'nobody.knows.me' is not registered" in row.errors[0]["error"]
    assert q.work() == 0


def test_retry_a_discarded_job_gives_it_another_attempt(
    q: JobQueue, sqlite_engine: sa.Engine, clock: Any
) -> None:
    calls: list[int] = []

    def task(job: JobInfo) -> None:
        calls.append(job.attempt)
        if job.attempt == 1:
            raise RuntimeError("first time fails")

    q.register(task, name="task", max_attempts=1)
    job_id = enqueue(sqlite_engine, q, "task")
    q.work()
    assert q.get(job_id).state == "discarded"
    assert q.retry(job_id) is True
    row = q.get(job_id)
    assert (row.state, row.max_attempts, row.discarded_at) == ("available", 2, None)
    assert q.work() == 1
    assert q.get(job_id).state == "completed"
    assert calls == [1, 2]
    assert q.retry(job_id) is True, "a completed job can be run again on purpose"
    with pytest.raises(NotFoundError):
        q.retry(999_999)


def test_retry_discarded_rearms_all_discarded(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    def task() -> None:
        raise RuntimeError("no")

    q.register(task, name="task", max_attempts=1)
    ids = [enqueue(sqlite_engine, q, "task", n=i) for i in range(3)]
    assert q.work() == 3
    assert q.retry_discarded() == 3
    assert {q.get(i).state for i in ids} == {"available"}
    assert q.retry_discarded() == 0


def test_cancel_before_running(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    ran: list[int] = []
    q.register(lambda: ran.append(1), name="task")
    job_id = enqueue(sqlite_engine, q, "task")
    assert q.cancel(job_id) is True
    assert q.get(job_id).state == "cancelled"
    assert q.work() == 0
    assert ran == []
    assert q.cancel(job_id) is False
    with pytest.raises(NotFoundError):
        q.cancel(424242)


def test_events_report_start_stop_and_exception(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    events: list[JobEvent] = []
    q.on_event(events.append)
    q.on_event(lambda e: 1 / 0)  # a broken callback must not break the job

    def ok() -> None:
        pass

    def bad() -> None:
        raise KeyError("missing")

    q.register(ok, name="ok")
    q.register(bad, name="bad")
    a = enqueue(sqlite_engine, q, "ok")
    b = enqueue(sqlite_engine, q, "bad")
    q.work()
    assert [(e.kind, e.job_id, e.state) for e in events] == [
        ("start", a, "executing"), ("stop", a, "completed"),
        ("start", b, "executing"), ("exception", b, "retryable"),
    ]
    assert events[3].error == "KeyError: 'missing'"
    assert events[1].duration is not None and events[1].duration >= 0
    assert q.get(a).state == "completed"


def test_priority_then_schedule_order(q: JobQueue, sqlite_engine: sa.Engine, clock: Any) -> None:
    order: list[str] = []
    h = q.register(lambda tag: order.append(tag), name="t")
    with sqlite_engine.begin() as conn:
        h.enqueue(conn, tag="low", priority=5)
        h.enqueue(conn, tag="later", scheduled_at=clock.now() + timedelta(seconds=1))
        h.enqueue(conn, tag="first")
        h.enqueue(conn, tag="second")
    assert q.work() == 3
    assert order == ["first", "second", "low"]
    clock.advance(seconds=1)
    assert q.work() == 1
    assert order[-1] == "later"
