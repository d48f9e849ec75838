"""Record trigger benchmark: prints figures, gates nothing.

Creates (and drops) its own database on ``CHIMEWAY_BENCH_PG`` (default
``postgresql://postgres@127.0.0.1:5432``), fills an ``appointments`` table
with ``--rows`` rows that are all due, and measures with the queue
dispatcher (one delivery job per reminder, in the batch's transaction):

- rows triggered per second by one scan, for each ``--concurrency`` value
  (batches in flight at once), from a fresh set of events each time;
- a re-scan of the same rows once they are all notified (the cost of a
  schedule that keeps matching rows already done).

Run: ``.venv/bin/python tests/bench/record_trigger_bench.py [--rows 10000]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests" / "integration" / "scheduling"))

from _db import fresh_postgres  # noqa: E402
from sched_proc import ProofAppointment, ProofBase, build_app  # noqa: E402

from chimeway.db import create_engine  # noqa: E402
from chimeway.models import metadata  # noqa: E402


def reset(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(
            "TRUNCATE chimeway_events, chimeway_notifications, chimeway_deliveries, "
            "chimeway_delivery_decisions, chimeway_jobs, chimeway_cron_ticks CASCADE"
        ))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    ns = parser.parse_args()
    server = os.environ.get("CHIMEWAY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
    with fresh_postgres(server=server) as url:
        engine = create_engine(url)
        metadata.create_all(engine)
        ProofBase.metadata.create_all(engine)
        soon = datetime.now(UTC) + timedelta(hours=2)
        with engine.begin() as conn:
            conn.execute(sa.insert(ProofAppointment), [
                {"id": i, "patient": f"p{i}", "starts_at": soon + timedelta(seconds=i), "cancelled": False}
                for i in range(1, ns.rows + 1)
            ])
        print(f"{ns.rows} due appointment rows, batch_size={ns.batch}, dispatcher=queue, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        for concurrency in ns.concurrency:
            reset(engine)
            app = build_app(url, batch_size=ns.batch, concurrency=concurrency)
            started = time.perf_counter()
            result = app.scan_record_trigger("reminders")
            elapsed = time.perf_counter() - started
            assert result.triggered == ns.rows, result
            print(f"  first scan, concurrency {concurrency}: {ns.rows} rows in {elapsed:.1f}s = "
                  f"{ns.rows / elapsed:,.0f} rows triggered/s")
            started = time.perf_counter()
            again = app.scan_record_trigger("reminders")
            elapsed = time.perf_counter() - started
            assert again.already == ns.rows, again
            print(f"  re-scan, all already notified: {elapsed:.2f}s = {ns.rows / elapsed:,.0f} rows checked/s")
            app.close()
        engine.dispose()


if __name__ == "__main__":
    main()
