"""Retention benchmark: prints figures, gates nothing.

Creates (and drops) its own PostgreSQL database on ``CHIMEWAY_TEST_PG``
(default ``postgresql://postgres@127.0.0.1:5432``) and measures:

1. pruning a backlog: ``--events`` old events (each with one notification,
   two final deliveries and their attempts) pruned by worker-style passes
   (10 s time limit, 1,000 events per transaction): rows/s, time and rows
   per pass, the longest batch transaction;
2. keeping pace: triggers at full speed in this process (``trigger_many``,
   chunks of 100) while 1, then 2, ``chimeway worker`` processes deliver
   (queue dispatcher) and prune with short ages (events and completed jobs
   after ``--age`` seconds, a pass every second), sampling every second how
   many rows are past their age and still there.

Run: ``.venv/bin/python tests/bench/retention_bench.py [--events 200000] [--seconds 30]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _db import fresh_postgres  # noqa: E402

from chimeway import Chimeway, Notifier, Recipient, TriggerRequest  # noqa: E402
from chimeway.db import create_engine  # noqa: E402
from chimeway.models import metadata  # noqa: E402
from chimeway.testing import FakeClock, RecordingChannel  # noqa: E402

SEED = 1000

APP = textwrap.dedent('''
    import os
    from datetime import timedelta
    from typing import Any

    from chimeway import Chimeway, Notifier, Recipient, Retention
    from chimeway.testing import RecordingChannel

    AGE = timedelta(seconds=float(os.environ["BENCH_AGE"]))

    app = Chimeway(os.environ["BENCH_DB"], dispatcher="queue", channels={"rec": RecordingChannel()},
                   retention=Retention(events=AGE, completed_jobs=AGE, interval=timedelta(seconds=1)))


    class Pace(Notifier):
        key = "bench_pace"
        channels = ["rec"]
        templates = {"rec": {"body": "n={{ n }}"}}

        def recipients(self, params: dict[str, Any]) -> list[Recipient]:
            return [Recipient(id=f"user:{params['n'] % 1000}")]
''')


class Old(Notifier):
    key = "bench_old"
    channels = ["rec", "in_app"]
    templates = {"rec": {"body": "n={{ n }}"}, "in_app": {"title": "t", "body": "n={{ n }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"user:{params['n'] % 1000}")]


def _copy(conn: sa.Connection, copies: int) -> None:
    """Copy the seeded events ``copies`` times over, with their rows, ids derived per copy."""
    f = "md5({col}::text || ':' || k)::uuid"

    def new(col: str) -> str:
        return f.format(col=col)

    series = f"generate_series(1, {copies}) AS k"
    conn.exec_driver_sql(
        f"INSERT INTO chimeway_events SELECT {new('id')}, tenant, idempotency_key || ':' || k, notifier_key,"
        f" notifier_version, actor, correlation_id, cancellation_key, params, created_at, payload_hash"
        f" FROM chimeway_events, {series}")
    conn.exec_driver_sql(
        f"INSERT INTO chimeway_notifications SELECT {new('id')}, {new('event_id')}, tenant, recipient_id, recipient,"
        f" notifier_key, category, created_at, inbox_at, inbox_content, seen_at, read_at, archived_at"
        f" FROM chimeway_notifications, {series}")
    cols = [c.name for c in metadata.tables["chimeway_deliveries"].columns]
    picked = [new(c) if c in ("id", "notification_id", "event_id") else c for c in cols]
    conn.exec_driver_sql(f"INSERT INTO chimeway_deliveries ({', '.join(cols)}) SELECT {', '.join(picked)}"
                         f" FROM chimeway_deliveries, {series}")
    for table in ("chimeway_attempts", "chimeway_delivery_decisions"):
        cols = [c.name for c in metadata.tables[table].columns]
        picked = [new(c) if c in ("id", "delivery_id") else c for c in cols]
        conn.exec_driver_sql(f"INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join(picked)}"
                             f" FROM {table}, {series}")


def _counts(engine: sa.Engine) -> dict[str, int]:
    names = ["chimeway_events", "chimeway_notifications", "chimeway_deliveries", "chimeway_attempts",
             "chimeway_delivery_decisions"]
    with engine.connect() as conn:
        return {n: int(conn.exec_driver_sql(f"SELECT count(*) FROM {n}").scalar_one()) for n in names}


def backlog(url: str, events: int) -> None:
    clock = FakeClock()
    app = Chimeway(url, clock=clock, channels={"rec": RecordingChannel()})
    app.migrate()
    started = time.perf_counter()
    with Session(app.engine) as session, session.begin():
        app.trigger_many(session, Old, [TriggerRequest(params={"n": i}, idempotency_key=f"old-{i}")
                                        for i in range(SEED)])
    with app.engine.begin() as conn:
        _copy(conn, max(0, events // SEED - 1))
        conn.exec_driver_sql("ANALYZE")
    loaded = _counts(app.engine)
    print(f"loaded {sum(loaded.values())} rows in {time.perf_counter() - started:.1f}s: "
          + ", ".join(f"{k.removeprefix('chimeway_')} {v}" for k, v in loaded.items()))
    clock.advance(days=91)
    pruner = app.pruner
    batches: list[float] = []
    last = [time.perf_counter()]

    def on_batch(target: str, deleted: Mapping[str, int]) -> None:
        now = time.perf_counter()
        if deleted.get("chimeway_events"):
            batches.append(now - last[0])
        last[0] = now

    passes = []
    total_started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        last[0] = t0
        deleted = pruner.prune(clock.now(), time_limit=pruner.time_limit, on_batch=on_batch)
        rows = sum(deleted.values())
        passes.append((time.perf_counter() - t0, rows, deleted.get("chimeway_events", 0)))
        if rows == 0:
            break
    total = time.perf_counter() - total_started
    rows = sum(p[1] for p in passes)
    print(f"pruned {rows} rows ({sum(p[2] for p in passes)} events) in {total:.1f}s: "
          f"{rows / total:,.0f} rows/s, {sum(p[2] for p in passes) / total:,.0f} events/s")
    for i, (secs, n, ev) in enumerate(passes, 1):
        print(f"  pass {i}: {secs:.2f}s, {n} rows ({ev} events)")
    print(f"  batch transactions (1000 events each): median {statistics.median(batches) * 1000:.0f} ms, "
          f"max {max(batches) * 1000:.0f} ms")
    left = _counts(app.engine)
    print(f"left: {left}")
    app.close()


PAST_AGE = """
SELECT
  (SELECT count(*) FROM chimeway_events e WHERE e.created_at < :cutoff
     AND NOT EXISTS (SELECT 1 FROM chimeway_deliveries d WHERE d.event_id = e.id
                     AND d.status NOT IN ('succeeded','cancelled','suppressed'))) AS events,
  (SELECT count(*) FROM chimeway_jobs WHERE state = 'completed' AND completed_at < :cutoff) AS jobs,
  (SELECT count(*) FROM chimeway_events) AS all_events,
  (SELECT count(*) FROM chimeway_deliveries WHERE status NOT IN ('succeeded','cancelled','suppressed')) AS unsent
"""


def keep_pace(url: str, workers: int, seconds: float, age: float, tmp: Path) -> None:
    from datetime import UTC, datetime

    (tmp / "retention_bench_app.py").write_text(APP)
    env = {**os.environ, "BENCH_DB": url, "BENCH_AGE": str(age), "PYTHONPATH": f"{ROOT}:{tmp}"}
    os.environ.update({"BENCH_DB": url, "BENCH_AGE": str(age)})
    sys.path.insert(0, str(tmp))
    import retention_bench_app as mod

    app: Chimeway = mod.app
    with app.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE chimeway_events, chimeway_notifications, chimeway_deliveries, "
                             "chimeway_attempts, chimeway_delivery_decisions, chimeway_jobs, chimeway_workers CASCADE")
    procs = [subprocess.Popen([sys.executable, "-m", "chimeway.cli", "worker", "--app", "retention_bench_app:app",
                               "--log-level", "warning"], cwd=tmp, env=env, stdout=subprocess.DEVNULL)
             for _ in range(workers)]
    engine = create_engine(url)
    stop = threading.Event()
    triggered = [0]

    def load() -> None:
        n = 0
        while not stop.is_set():
            with Session(app.engine) as session, session.begin():
                app.trigger_many(session, mod.Pace, [
                    TriggerRequest(params={"n": n + i}, idempotency_key=f"p{workers}-{n + i}") for i in range(100)])
            n += 100
            triggered[0] = n

    time.sleep(3)  # workers start
    loader = threading.Thread(target=load)
    loader.start()
    samples = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(1)
        cutoff = datetime.now(UTC) - timedelta(seconds=age)
        with engine.connect() as conn:
            samples.append(conn.execute(sa.text(PAST_AGE), {"cutoff": cutoff}).one())
    stop.set()
    loader.join()
    elapsed = time.monotonic() - started
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(60)
    ev = [s.events for s in samples]
    jobs = [s.jobs for s in samples]
    unsent = [s.unsent for s in samples]
    print(f"{workers} worker(s), {elapsed:.0f}s, {triggered[0]} triggers ({triggered[0] / elapsed:,.0f}/s); "
          f"age {age:g}s, a pass every 1s")
    print(f"  deliveries not yet final: max {max(unsent)}, at the end {unsent[-1]}")
    print(f"  events past their age (final, still there): max {max(ev)}, mean {statistics.mean(ev):.0f}; "
          f"events in the table at the end: {samples[-1].all_events}")
    print(f"  completed jobs past their age: max {max(jobs)}, mean {statistics.mean(jobs):.0f}")
    print(f"  per-second samples (events past age): {ev}")
    engine.dispose()
    app.close()
    del sys.modules["retention_bench_app"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--age", type=float, default=5.0)
    parser.add_argument("--skip-backlog", action="store_true")
    args = parser.parse_args()
    import tempfile

    with fresh_postgres("chimeway_retention_bench") as server_url:
        url = server_url.replace("postgresql://", "postgresql+psycopg://", 1)
        if not args.skip_backlog:
            print("== pruning a backlog")
            backlog(url, args.events)
        print("== keeping pace")
        with tempfile.TemporaryDirectory() as tmp:
            for workers in (1, 2):
                keep_pace(url, workers, args.seconds, args.age, Path(tmp))


if __name__ == "__main__":
    main()
