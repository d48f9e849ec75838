"""Counts, pruning, rescue of dead workers' jobs, and the threaded worker on SQLite."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from queue_unit_helpers import job_count

from chimeway.queue import JobInfo, JobQueue


def test_counts_per_queue_and_state(q: JobQueue, sqlite_engine: sa.Engine, clock: Any) -> None:
    q.declare_queue("mailers")
    h = q.register(lambda: None, name="t", queue="mailers")
    with sqlite_engine.begin() as conn:
        h.enqueue(conn)
        h.enqueue(conn, schedule_in=60)
    clock.advance(seconds=30)
    counts = q.counts()
    assert set(counts) >= {"mailers", "default", "chimeway_delivery"}
    assert counts["mailers"].states["available"] == 1
    assert counts["mailers"].states["scheduled"] == 1
    assert counts["mailers"].oldest_available_age == 30.0
    assert counts["default"].oldest_available_age is None
    assert sum(counts["default"].states.values()) == 0


def test_prune_deletes_old_finished_jobs_per_state(
    q: JobQueue, sqlite_engine: sa.Engine, clock: Any
) -> None:
    q.register(lambda: None, name="ok")
    with sqlite_engine.begin() as conn:
        done = q.enqueue(conn, "ok", {})
        gone = q.enqueue(conn, "missing", {})
        waiting = q.enqueue(conn, "ok", {}, schedule_in=timedelta(days=30))
    q.work()
    assert q.prune(completed=timedelta(hours=1)) == 0
    clock.advance(hours=2)
    assert q.prune(completed=timedelta(hours=1), discarded=None) == 1
    assert job_count(sqlite_engine) == 2
    clock.advance(days=8)
    assert q.prune() == 1
    assert q.get(waiting).state == "scheduled"
    assert {done, gone}.isdisjoint({waiting})


def test_rescue_returns_a_dead_workers_jobs(q: JobQueue, sqlite_engine: sa.Engine, clock: Any) -> None:
    q.register(lambda: None, name="ok", max_attempts=2)
    with sqlite_engine.begin() as conn:
        ids = [q.enqueue(conn, "ok", {"n": i}) for i in range(3)]
    dead = "node:1:worker:dead"
    q.register_worker(dead, {"default": 3})
    claimed = q.claim("default", 3, dead)
    assert len(claimed) == 3
    with sqlite_engine.begin() as conn:  # one of them is on its last attempt
        conn.execute(sa.text("UPDATE chimeway_jobs SET attempt = 2 WHERE id = :i"), {"i": ids[2]})
    assert q.rescue() == 0, "heartbeat still fresh"
    clock.advance(seconds=61)
    assert q.rescue() == 3
    assert [q.get(i).state for i in ids] == ["available", "available", "discarded"]
    assert q.work() == 2
    assert [q.get(i).attempt for i in ids[:2]] == [2, 2]


def test_cancelled_while_executing_stays_cancelled(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    box: dict[str, int] = {}

    def task(job: JobInfo) -> None:
        q.cancel(job.id)
        box["id"] = job.id

    q.register(task, name="task")
    with sqlite_engine.begin() as conn:
        q.enqueue(conn, "task", {})
    q.work()
    assert q.get(box["id"]).state == "cancelled"


def test_run_worker_on_sqlite_runs_everything_then_stops(
    q: JobQueue, sqlite_engine: sa.Engine
) -> None:
    done: list[int] = []
    lock = threading.Lock()
    all_done = threading.Event()

    def task(n: int) -> None:
        with lock:
            done.append(n)
            if len(done) == 40:
                all_done.set()

    q.register(task, name="task")
    with sqlite_engine.begin() as conn:
        q.insert_many(conn, [{"worker": "task", "args": {"n": i}} for i in range(40)])
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(
        q.run_worker(queues={"default": 4}, poll_interval=0.05, stop_event=stop)))
    thread.start()
    assert all_done.wait(30)
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert sorted(done) == list(range(40))
    assert result == [40]
    counts = q.counts()["default"].states
    assert counts["completed"] == 40
    with sqlite_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM chimeway_workers")).scalar() == 0


def test_a_lone_completion_is_acknowledged_without_waiting_for_the_poll(
    q: JobQueue, sqlite_engine: sa.Engine
) -> None:
    q.register(lambda: None, name="task")
    with sqlite_engine.begin() as conn:
        job_id = q.enqueue(conn, "task", {})
    assert job_id is not None
    stop = threading.Event()
    thread = threading.Thread(target=q.run_worker, kwargs={
        "queues": {"default": 2}, "poll_interval": 30.0, "heartbeat_interval": 30.0,
        "stop_event": stop})
    thread.start()
    try:
        deadline = time.monotonic() + 10  # a third of the poll interval
        while q.get(job_id).state != "completed" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert q.get(job_id).state == "completed"
    finally:
        stop.set()
        thread.join(30)


def test_a_stalled_worker_judged_dead_rejoins_on_its_next_heartbeat(
    q: JobQueue, sqlite_engine: sa.Engine, clock: Any
) -> None:
    q.register_worker("slow", {"default": 1})
    clock.advance(minutes=5)
    q.rescue()
    with sqlite_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM chimeway_workers")).scalar() == 0
    q.heartbeat("slow", {"default": 1})
    with sqlite_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT id FROM chimeway_workers")).scalar() == "slow"


def test_a_job_raising_system_exit_in_a_worker_is_a_failed_attempt(
    q: JobQueue, sqlite_engine: sa.Engine
) -> None:
    def bail() -> None:
        raise SystemExit(3)

    q.register(bail, name="bail")
    with sqlite_engine.begin() as conn:
        job_id = q.enqueue(conn, "bail", {})
    assert job_id is not None
    stop = threading.Event()
    thread = threading.Thread(target=q.run_worker, kwargs={
        "queues": {"default": 1}, "poll_interval": 0.05, "stop_event": stop})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while q.get(job_id).state == "available" or q.get(job_id).state == "executing":
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(30)
    row = q.get(job_id)
    assert (row.state, row.attempt) == ("retryable", 1)
    assert row.errors[0]["error"] == "SystemExit: 3"
