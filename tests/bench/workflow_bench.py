"""Workflow benchmark: prints figures, gates nothing.

Creates (and drops) its own database on ``CHIMEWAY_BENCH_PG`` (default
``postgresql://postgres@127.0.0.1:5432``) and measures, with the queue
dispatcher and a fake clock (so "due" costs no waiting). Every figure is
timed until the work is done *and* its queue is drained: no job of that
queue is left available, scheduled, retryable or executing. CPU figures
are this process's CPU time (Chimeway's Python, worker threads included;
not the database server's) divided by the runs or signals.

- planning: ``--runs`` triggers of a workflow notifier (``wait(minutes=10,
  unless="notification.read")`` then ``deliver("email")``), 500 per
  transaction; the clock covers the trigger transactions up to their last
  commit; runs/s.
- progression, sweep: ``--runs`` runs wait, the clock moves past their wait,
  and ``app.progress_due()`` advances them all (each advance renders and
  plans the email, and queues its delivery job); then ``app.work()`` runs
  whatever ``chimeway_workflows`` jobs are still due (the runs' own timer
  jobs, had the sweep left them). The clock covers both, from the sweep's
  call until ``work()`` returns; runs/s, and how many leftover jobs ran.
- progression, per-run jobs: the same, with no sweep: a worker (10 threads
  on ``chimeway_workflows``, no plugins) runs the runs' own
  ``ProgressionWorker`` jobs. The clock covers the worker's start until
  every run has moved on and the queue is drained; runs/s.
- signals: ``--runs`` ``notification.read`` signals tracked for as many
  waiting runs, 1,000 per transaction (one ``SignalRouterWorker`` job each,
  as ``track`` enqueues them): the clock covers the track transactions to
  their last commit; then a worker (10 threads on ``chimeway_signals``, no
  plugins) routes them: from its start until every signal is routed and
  the signals queue is drained; signals/s. It also says how many timer jobs
  of the runs the signals stopped are still queued.

Each progression figure is measured ``--rounds`` times (fresh runs each
round, the two ways alternating) and printed per round and as the median.

Run: ``.venv/bin/python tests/bench/workflow_bench.py [--runs 10000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
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

WORKFLOWS = "chimeway_workflows"
SIGNALS = "chimeway_signals"


class Nudge(Notifier):
    key = "bench_nudge"
    templates = {"email": {"subject": "Still there, {{ name }}?", "body": "You have {{ n }} unread items."}}
    workflow = [wait(minutes=10, unless="notification.read"), deliver("email")]

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=str(params["user"]), email=f"{params['user']}@example.test")]


class Stopwatch:
    """Wall and CPU time of this process from ``start`` to ``stop``."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu


def trigger_many(app: Chimeway, runs: int, prefix: str, chunk: int = 500) -> float:
    started = time.perf_counter()
    for first in range(0, runs, chunk):
        with Session(app.engine) as session, session.begin():
            for i in range(first, min(runs, first + chunk)):
                app.trigger(session, Nudge, {"user": f"user:{prefix}{i}", "name": f"N{i}", "n": i},
                            idempotency_key=f"{prefix}-{i}")
    return time.perf_counter() - started


def with_worker(app: Chimeway, queues: dict[str, int], done: Callable[[], bool], clock: Stopwatch) -> None:
    """Time (into ``clock``) from the worker's start until ``done()`` holds.

    The worker runs ``queues`` (threads per queue) with no plugins: the
    workflow sweep, cron and rescues would otherwise do part of the work the
    jobs are timed for.
    """
    stop = threading.Event()
    worker = threading.Thread(target=app.queue.run_worker,
                              kwargs={"queues": queues, "poll_interval": 0.05, "stop_event": stop,
                                      "plugins": ()})
    clock.start()
    worker.start()
    try:
        while not done():
            time.sleep(0.01)
        clock.stop()
    finally:
        stop.set()
        worker.join(60)


def unfinished_jobs(app: Chimeway, queue: str) -> int:
    """Jobs of ``queue`` that wait (due or not) or run."""
    with app.engine.connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT count(*) FROM chimeway_jobs WHERE queue = :q AND state IN "
            "('available', 'scheduled', 'retryable', 'executing')"), {"q": queue}).scalar_one())


def count(app: Chimeway, *where: Any) -> int:
    r = workflow_runs_table
    with app.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(r).where(*where)).scalar_one())


def due_runs(app: Chimeway, clock: FakeClock, runs: int, prefix: str) -> None:
    with app.engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE chimeway_jobs"))
    trigger_many(app, runs, prefix)
    assert count(app, workflow_runs_table.c.state == "waiting") == runs
    clock.advance(minutes=10)


def sweep_round(app: Chimeway, clock: FakeClock, runs: int, prefix: str) -> tuple[float, float, int]:
    due_runs(app, clock, runs, prefix)
    active = count(app, workflow_runs_table.c.state == "active")
    timer = Stopwatch()
    timer.start()
    moved = app.progress_due()
    leftover = app.work(queues=[WORKFLOWS])
    timer.stop()
    assert moved == runs and count(app, workflow_runs_table.c.state == "active") == active + runs, moved
    assert unfinished_jobs(app, WORKFLOWS) == 0
    return timer.wall, timer.cpu, leftover


def jobs_round(app: Chimeway, clock: FakeClock, runs: int, prefix: str) -> tuple[float, float]:
    due_runs(app, clock, runs, prefix)
    r = workflow_runs_table
    active = count(app, r.c.state == "active")
    timer = Stopwatch()
    with_worker(app, {WORKFLOWS: 10},
                lambda: count(app, r.c.state == "waiting") == 0 and unfinished_jobs(app, WORKFLOWS) == 0, timer)
    assert count(app, r.c.state == "active") == active + runs
    return timer.wall, timer.cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    server = os.environ.get("CHIMEWAY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
    runs = args.runs
    print(f"{runs} runs per measurement, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with fresh_postgres(server=server) as url:
        engine = create_engine(url, pool_size=12)
        metadata.create_all(engine)
        clock = FakeClock()
        app = Chimeway(engine=engine, clock=clock, dispatcher="queue", channels={"email": RecordingChannel()})

        took = trigger_many(app, runs, "p")
        print(f"planning      {runs} workflow triggers in {took:.2f}s: {runs / took:,.0f} runs/s")
        clock.advance(minutes=10)
        app.progress_due()

        sweeps: list[float] = []
        jobs: list[float] = []
        for round_ in range(args.rounds):
            wall, cpu, leftover = sweep_round(app, clock, runs, f"s{round_}-")
            sweeps.append(runs / wall)
            print(f"progression   sweep, until the workflow queue is drained: {runs} runs in {wall:.2f}s = "
                  f"{runs / wall:,.0f} runs/s ({1000 * cpu / runs:.2f} ms CPU/run; "
                  f"{leftover} leftover timer jobs ran)")
            wall, cpu = jobs_round(app, clock, runs, f"j{round_}-")
            jobs.append(runs / wall)
            print(f"progression   per-run ProgressionWorker jobs (a worker, 10 threads, no sweep), until the "
                  f"queue is drained: {runs} runs in {wall:.2f}s = {runs / wall:,.0f} runs/s "
                  f"({1000 * cpu / runs:.2f} ms CPU/run)")
        print(f"progression   median of {args.rounds}: sweep {statistics.median(sweeps):,.0f} runs/s, "
              f"per-run jobs {statistics.median(jobs):,.0f} runs/s")

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

        timer = Stopwatch()
        with_worker(app, {SIGNALS: 10}, lambda: routed() and unfinished_jobs(app, SIGNALS) == 0, timer)
        with engine.connect() as conn:
            matched = conn.execute(sa.select(sa.func.sum(s.c.matched))).scalar_one()
        assert matched == runs, matched
        print(f"signals       {runs} routed ({matched} runs stopped) by SignalRouterWorker jobs (a worker, "
              f"10 threads), until the queue is drained: {timer.wall:.2f}s = {runs / timer.wall:,.0f} signals/s "
              f"({1000 * timer.cpu / runs:.2f} ms CPU/signal); timer jobs of the stopped runs still queued: "
              f"{unfinished_jobs(app, WORKFLOWS)}")
        app.close()
        engine.dispose()


if __name__ == "__main__":
    main()
