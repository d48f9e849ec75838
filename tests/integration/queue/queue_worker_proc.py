"""A worker process for the queue's integration tests and benchmark.

Run as ``python queue_worker_proc.py URL [options]``. It registers:

- ``record(n, sleep=0)``: inserts ``(n, job id, attempt, pid)`` into
  ``queue_side_effects`` (its own transaction) after sleeping ``sleep`` seconds;
- ``noop(**args)``: does nothing;
- ``stamp(key)``: records the wall-clock time it started in ``queue_latency``
  under ``key`` (the benchmark notes when each job's enqueue committed; both
  clocks are this host's).

and works the ``default`` queue until SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any

import sqlalchemy as sa

from chimeway.db import create_engine, writer
from chimeway.queue import JobInfo, JobQueue

SIDE_EFFECTS_DDL = (
    "CREATE TABLE IF NOT EXISTS queue_side_effects "
    "(n INTEGER NOT NULL, job_id BIGINT NOT NULL, attempt INTEGER NOT NULL, pid INTEGER NOT NULL)"
)

LATENCY_DDL = "CREATE TABLE IF NOT EXISTS queue_latency (key INTEGER PRIMARY KEY, started DOUBLE PRECISION NOT NULL)"


def build(url: str, *, concurrency: int, notify: bool, backoff: float | None,
          stale_after: float) -> tuple[JobQueue, sa.Engine]:
    from datetime import timedelta

    engine = create_engine(url, pool_size=concurrency + 5, max_overflow=10, pool_pre_ping=True)
    options: dict[str, Any] = {"stale_after": timedelta(seconds=stale_after)}
    if backoff is not None:
        options["backoff"] = lambda attempt: backoff
    q = JobQueue(engine, notify=notify, **options)
    side = writer(engine)
    insert = sa.text("INSERT INTO queue_side_effects (n, job_id, attempt, pid) "
                     "VALUES (:n, :job_id, :attempt, :pid)")
    pid = os.getpid()

    def record(n: int, job: JobInfo, sleep: float = 0.0) -> None:
        if sleep:
            time.sleep(sleep)
        with side.begin() as conn:
            conn.execute(insert, {"n": n, "job_id": job.id, "attempt": job.attempt, "pid": pid})

    def noop(**_: Any) -> None:
        pass

    stamp_insert = sa.text("INSERT INTO queue_latency (key, started) VALUES (:k, :t)")

    def stamp(key: int) -> None:
        started = time.time()
        with side.begin() as conn:
            conn.execute(stamp_insert, {"k": key, "t": started})

    q.register(record, name="record")
    q.register(noop, name="noop")
    q.register(stamp, name="stamp")
    return q, engine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--no-notify", action="store_true")
    parser.add_argument("--grace", type=float, default=15.0)
    parser.add_argument("--backoff", type=float, default=None)
    parser.add_argument("--stale-after", type=float, default=60.0)
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument("--rescue-interval", type=float, default=30.0)
    ns = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format=f"[worker {os.getpid()}] %(message)s")
    q, _ = build(ns.url, concurrency=ns.concurrency, notify=not ns.no_notify,
                 backoff=ns.backoff, stale_after=ns.stale_after)
    ran = q.run_worker(queues={"default": ns.concurrency}, poll_interval=ns.poll,
                       shutdown_grace=ns.grace, heartbeat_interval=ns.heartbeat,
                       rescue_interval=ns.rescue_interval)
    print(f"ran={ran}", flush=True)


if __name__ == "__main__":
    main()
