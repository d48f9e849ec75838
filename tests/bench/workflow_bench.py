"""Workflow benchmark: prints figures, gates nothing.

Creates (and drops) its own database on ``CHIMEWAY_BENCH_PG`` (default
``postgresql://postgres@127.0.0.1:5432``) and measures, with the queue
dispatcher and a fake clock (so "due" costs no waiting):

- planning: triggers of a workflow notifier per second (runs created);
- progression: 10,000 runs waiting, the clock moves past their wait, and the
  ``ProgressionWorker`` sweep (``app.progress_due()``) advances them all —
  each advance renders and plans the next delivery; runs/s. Also the
  per-run ``ProgressionWorker`` jobs (one job per run, as scheduled when the
  wait began): left over after the sweep, and advancing runs on a worker
  that runs no sweep, timed from the worker's start until every run moved
  and the queue is drained;
- signals: 10,000 ``notification.read`` signals tracked (one router job
  each, as ``track`` enqueues them) for 10,000 waiting runs; time until all
  are routed by a worker running ``SignalRouterWorker`` jobs and its queue
  is drained; signals/s.

Run: ``.venv/bin/python tests/bench/workflow_bench.py [--runs 10000]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _db import fresh_postgres  # noqa: E402

from chimeway import Chimeway, Notifier, Recipient  # noqa: E402
from chimeway.db import create_engine  # noqa: E402
from chimeway.models import metadata, signals_table, workflow_runs_table  # noqa: E402
from chimeway.testing import FakeClock, RecordingChannel  # noqa: E402
from chimeway.workflow import deliver, wait  # noqa: E402


class Nudge(Notifier):
    key = "bench_nudge"
    templates = {"email": {"subject": "Still there, {{ name }}?", "body": "You have {{ n }} unread items."}}
    workflow = [wait(minutes=10, unless="notification.read"), deliver("email")]

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=str(params["user"]), email=f"{params['user']}@example.test")]




def trigger_many(app: Chimeway, runs: int, prefix: str, chunk: int = 500) -> float:
    started = time.perf_counter()
    for first in range(0, runs, chunk):
        with Session(app.engine) as session, session.begin():
            for i in range(first, min(runs, first + chunk)):
                app.trigger(session, Nudge, {"user": f"user:{prefix}{i}", "name": f"N{i}", "n": i},
                            idempotency_key=f"{prefix}-{i}")
    return time.perf_counter() - started


def with_worker(app: Chimeway, queues: dict[str, int], done: Callable[[], bool]) -> float:
    """Seconds from the worker's start until ``done()`` holds.

    The worker runs ``queues`` (threads per queue) with no plugins: the
    workflow sweep, cron and rescues would otherwise do part of the work the
    jobs are timed for.
    """
    stop = threading.Event()
    worker = threading.Thread(target=app.queue.run_worker,
                              kwargs={"queues": queues, "poll_interval": 0.05, "stop_event": stop,
                                      "plugins": ()})
    started = time.perf_counter()
    worker.start()
    try:
        while not done():
            time.sleep(0.02)
        return time.perf_counter() - started
    finally:
        stop.set()
        worker.join(60)


def drained(app: Chimeway, queue: str) -> bool:
    """No job of ``queue`` waits or runs."""
    with app.engine.connect() as conn:
        return not conn.execute(sa.text(
            "SELECT 1 FROM chimeway_jobs WHERE queue = :q AND state IN "
            "('available', 'scheduled', 'retryable', 'executing') LIMIT 1"), {"q": queue}).first()


def count(app: Chimeway, *where: Any) -> int:
    r = workflow_runs_table
    with app.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(r).where(*where)).scalar_one())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    args = parser.parse_args()
    server = os.environ.get("CHIMEWAY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
    runs = args.runs
    with fresh_postgres(server=server) as url:
        engine = create_engine(url, pool_size=10)
        metadata.create_all(engine)
        clock = FakeClock()
        app = Chimeway(engine=engine, clock=clock, dispatcher="queue", channels={"email": RecordingChannel()})
        r = workflow_runs_table

        took = trigger_many(app, runs, "a")
        print(f"planning      {runs} workflow triggers in {took:.2f}s: {runs / took:,.0f} runs/s")
        assert count(app, r.c.state == "waiting") == runs

        clock.advance(minutes=10)
        started = time.perf_counter()
        moved = app.progress_due()
        took = time.perf_counter() - started
        assert moved == runs and count(app, r.c.state == "active") == runs, moved
        print(f"progression   sweep advanced {moved} due runs in {took:.2f}s: {moved / took:,.0f} runs/s")
        started = time.perf_counter()
        jobs = app.work(queues=["chimeway_workflows"])
        took = time.perf_counter() - started
        print(f"              then {jobs} per-run ProgressionWorker jobs found nothing left "
              f"to do in {took:.2f}s: {jobs / took:,.0f} jobs/s")

        with engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE chimeway_jobs"))
        trigger_many(app, runs, "b")
        clock.advance(minutes=10)
        took = with_worker(app, {"chimeway_workflows": 10},
                           lambda: drained(app, "chimeway_workflows") and count(app, r.c.state == "waiting") == 0)
        print(f"progression   {runs} per-run ProgressionWorker jobs (a worker, 10 threads, no sweep) advanced "
              f"their runs in {took:.2f}s, timed until the queue was drained: {runs / took:,.0f} runs/s")

        with engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE chimeway_jobs"))
        trigger_many(app, runs, "c")
        started = time.perf_counter()
        for first in range(0, runs, 1000):
            with Session(app.engine) as session, session.begin():
                for i in range(first, min(runs, first + 1000)):
                    app.track(session, "notification.read", actor=f"user:c{i}")
        track_took = time.perf_counter() - started
        print(f"signals       {runs} tracked (one router job each) in {track_took:.2f}s: "
              f"{runs / track_took:,.0f} signals/s")
        s = signals_table

        def routed() -> bool:
            with engine.connect() as conn:
                return int(conn.execute(sa.select(sa.func.count(s.c.routed_at))).scalar_one()) == runs

        took = with_worker(app, {"chimeway_signals": 10}, lambda: routed() and drained(app, "chimeway_signals"))
        with engine.connect() as conn:
            matched = conn.execute(sa.select(sa.func.sum(s.c.matched))).scalar_one()
        assert matched == runs, matched
        print(f"signals       {runs} routed ({matched} runs stopped) by SignalRouterWorker jobs "
              f"(a worker, 10 threads) in {took:.2f}s: {runs / took:,.0f} signals/s")
        app.close()
        engine.dispose()


if __name__ == "__main__":
    main()
