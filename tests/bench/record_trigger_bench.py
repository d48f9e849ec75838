"""Record trigger benchmark: prints figures, gates nothing.

Creates (and drops) its own database on ``CHIMEWAY_BENCH_PG`` (default
``postgresql://postgres@127.0.0.1:5432``), fills an ``appointments`` table
with ``--rows`` rows that are all due, and measures with the queue
dispatcher (one delivery job per reminder, in the batch's transaction):

- rows triggered per second by one scan (``app.scan_record_trigger``), for
  each ``--concurrency`` value (batches in flight at once), from a fresh set
  of events each time. The clock covers the call, from its start until it
  returns: every batch committed. The values are measured in ``--rounds``
  interleaved rounds (1, 2, 4, 1, 2, 4, ...) and summed up as medians;
- with each scan, its CPU time per row: this process's (Chimeway's Python,
  every thread) and the database server's (the backends serving the bench's
  database, read from ``/proc`` when the server runs on this host). Python
  runs one thread at a time, so a scan cannot go faster than its Python
  part, whatever its concurrency: concurrency can only hide the database's
  part (and the round trips) behind it;
- a re-scan of the same rows once they are all notified (the cost of a
  schedule that keeps matching rows already done), timed the same way.

Run: ``.venv/bin/python tests/bench/record_trigger_bench.py [--rows 10000]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def server_cpu(database: str) -> dict[str, float] | None:
    """CPU seconds of each server process serving ``database`` (its title names it), or ``None``."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f"{database} ".encode() not in f.read().replace(b"\0", b" "):
                    continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            found[pid] = (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    return found or None


def used(before: dict[str, float] | None, after: dict[str, float] | None) -> float | None:
    """Server CPU seconds spent between two readings (backends that came and stayed included)."""
    if after is None:
        return None
    before = before or {}
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=2)
    ns = parser.parse_args()
    server = os.environ.get("CHIMEWAY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
    with fresh_postgres(server=server) as url:
        database = url.rsplit("/", 1)[1]
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
        rates: dict[int, list[float]] = {c: [] for c in ns.concurrency}
        for round_ in range(ns.rounds):
            for concurrency in ns.concurrency:
                reset(engine)
                app = build_app(url, batch_size=ns.batch, concurrency=concurrency)
                cpu_before, server_before = time.process_time(), server_cpu(database)
                started = time.perf_counter()
                result = app.scan_record_trigger("reminders")
                elapsed = time.perf_counter() - started
                python = time.process_time() - cpu_before
                database_cpu = used(server_before, server_cpu(database))
                assert result.triggered == ns.rows, result
                rates[concurrency].append(ns.rows / elapsed)
                per_row = f"{1000 * python / ns.rows:.2f} ms Python" + (
                    "" if database_cpu is None else f", {1000 * database_cpu / ns.rows:.2f} ms database")
                print(f"  round {round_ + 1}, first scan, concurrency {concurrency}: {ns.rows} rows in "
                      f"{elapsed:.2f}s = {ns.rows / elapsed:,.0f} rows triggered/s (CPU per row: {per_row})")
                if round_ == 0:
                    started = time.perf_counter()
                    again = app.scan_record_trigger("reminders")
                    elapsed = time.perf_counter() - started
                    assert again.already == ns.rows, again
                    print(f"  re-scan, all already notified: {elapsed:.2f}s = "
                          f"{ns.rows / elapsed:,.0f} rows checked/s")
                app.close()
        base = statistics.median(rates[ns.concurrency[0]])
        print("  medians: " + ", ".join(
            f"concurrency {c}: {statistics.median(r):,.0f} rows/s ({statistics.median(r) / base:.2f}x)"
            for c, r in rates.items()))
        engine.dispose()


if __name__ == "__main__":
    main()
