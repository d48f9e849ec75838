"""Worker processes against a real PostgreSQL: exactly-once, crashes, lost connections, NOTIFY."""

from __future__ import annotations

import signal

import pytest
import sqlalchemy as sa
from queue_pg_helpers import Workers, listening, scalar, wait_for

from chimeway.db import create_engine
from chimeway.queue import JobQueue

pytestmark = pytest.mark.postgres

COMPLETED = "SELECT count(*) FROM chimeway_jobs WHERE state = 'completed'"


def enqueue_records(url: str, count: int, sleep: float = 0.0, start: int = 0) -> None:
    engine = create_engine(url)
    q = JobQueue(engine)
    args = [{"n": i, "sleep": sleep} if sleep else {"n": i} for i in range(start, start + count)]
    with engine.begin() as conn:
        q.insert_many(conn, [{"worker": "record", "args": a} for a in args])
    engine.dispose()


def test_two_worker_processes_run_every_job_exactly_once(
    pg_url: str, workers: Workers, side_engine: sa.Engine
) -> None:
    procs = [workers.start("--concurrency", "10") for _ in range(2)]
    wait_for(listening(side_engine, 2), 30, "both workers to LISTEN", procs)
    enqueue_records(pg_url, 2000)
    wait_for(lambda: scalar(side_engine, COMPLETED) == 2000, 90, "2000 completed jobs", procs)
    for proc in procs:
        code, out, err = workers.stop(proc)
        assert code == 0, err
        assert out.startswith("ran=")
    assert scalar(side_engine, "SELECT count(*) FROM queue_side_effects") == 2000
    assert scalar(side_engine, "SELECT count(DISTINCT n) FROM queue_side_effects") == 2000
    assert scalar(side_engine, "SELECT count(DISTINCT pid) FROM queue_side_effects") == 2
    assert scalar(side_engine, "SELECT count(*) FROM chimeway_workers") == 0


def test_sigkilled_worker_jobs_are_rescued_and_completed(
    pg_url: str, workers: Workers, side_engine: sa.Engine
) -> None:
    total = 300
    enqueue_records(pg_url, total, sleep=0.02)
    victim = workers.start("--concurrency", "10")
    wait_for(lambda: scalar(side_engine, "SELECT count(*) FROM queue_side_effects") >= 50,
             30, "the victim to get going", [victim])
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=10)
    orphaned = scalar(side_engine, "SELECT count(*) FROM chimeway_jobs WHERE state = 'executing'")
    assert orphaned > 0, "killed mid-batch: some jobs were left executing"

    survivor = workers.start("--concurrency", "10", "--stale-after", "1", "--heartbeat", "0.2",
                             "--rescue-interval", "0.2")
    wait_for(lambda: scalar(side_engine, COMPLETED) == total, 60, "all jobs completed", [survivor])
    code, _, err = workers.stop(survivor)
    assert code == 0, err
    assert scalar(side_engine, "SELECT count(DISTINCT n) FROM queue_side_effects") == total
    twice = scalar(side_engine, "SELECT count(*) - count(DISTINCT n) FROM queue_side_effects")
    print(f"\nSIGKILL: {orphaned} jobs orphaned, {twice} ran twice (at-least-once)")
    assert twice <= orphaned
    assert scalar(side_engine, "SELECT max(attempt) FROM chimeway_jobs") <= 2


def test_worker_survives_terminated_connections(
    pg_url: str, workers: Workers, side_engine: sa.Engine
) -> None:
    total = 400
    enqueue_records(pg_url, total, sleep=0.005)
    proc = workers.start("--concurrency", "5", "--poll", "30", "--backoff", "0.1")
    wait_for(lambda: scalar(side_engine, "SELECT count(*) FROM queue_side_effects") >= 40,
             30, "progress before the kill", [proc])
    terminate = ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    for _ in range(2):
        wait_for(listening(side_engine), 30, "the listener to (re)connect", [proc])
        before = scalar(side_engine, "SELECT count(*) FROM queue_side_effects")
        assert scalar(side_engine, terminate) >= 2, "the pool's and the listener's backends"
        side_engine.dispose()
        wait_for(lambda b=before: scalar(side_engine, "SELECT count(*) FROM queue_side_effects")
                 > b + 20, 30, "progress after the kill", [proc])
    wait_for(lambda: scalar(side_engine, COMPLETED) == total, 60, "all jobs completed", [proc])
    # The LISTEN connection was terminated too: only a reconnected listener
    # can wake the worker before its 30 s poll.
    wait_for(listening(side_engine), 30, "the listener to reconnect", [proc])
    enqueue_records(pg_url, 1, start=total)
    wait_for(lambda: scalar(side_engine, COMPLETED) == total + 1, 20,
             "a NOTIFY after reconnection", [proc])
    code, _, err = workers.stop(proc)
    assert code == 0, err
    assert scalar(side_engine, "SELECT count(DISTINCT n) FROM queue_side_effects") == total + 1


def test_notify_wakes_an_idle_worker_before_its_poll(
    pg_url: str, workers: Workers, side_engine: sa.Engine
) -> None:
    proc = workers.start("--concurrency", "2", "--poll", "30")
    wait_for(listening(side_engine), 30, "the worker to LISTEN", [proc])
    enqueue_records(pg_url, 1)
    # 30 s poll: finishing well inside it means the NOTIFY woke the worker.
    wait_for(lambda: scalar(side_engine, COMPLETED) == 1, 15, "the job to run", [proc])
    code, _, err = workers.stop(proc)
    assert code == 0, err


@pytest.mark.parametrize(("grace", "completed"), [("0.2", 0), ("20", 2)])
def test_sigterm_waits_for_running_jobs_up_to_the_grace_then_releases(
    pg_url: str, workers: Workers, side_engine: sa.Engine, grace: str, completed: int
) -> None:
    enqueue_records(pg_url, 4, sleep=1.5)
    proc = workers.start("--concurrency", "2", "--grace", grace, "--poll", "30")
    wait_for(lambda: scalar(side_engine, "SELECT count(*) FROM chimeway_jobs "
                                         "WHERE state = 'executing'") == 2,
             30, "two jobs executing", [proc])
    code, _, err = workers.stop(proc)
    assert code == 0, err
    assert scalar(side_engine, COMPLETED) == completed
    assert scalar(side_engine, "SELECT count(*) FROM chimeway_jobs WHERE state = 'available'") \
        == 4 - completed
    assert scalar(side_engine, "SELECT count(*) FROM chimeway_workers") == 0
