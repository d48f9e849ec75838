"""Job queue benchmark: prints figures, gates nothing.

Creates (and drops) its own database on ``CHIMEWAY_BENCH_PG`` (default
``postgresql://postgres@127.0.0.1:5432``) and measures:

- bulk enqueue (``insert_many`` in one transaction per chunk), jobs/s;
- no-op jobs processed per second by one worker process (concurrency 20) and
  by two, measured from the first claim to the last completion recorded in
  the jobs table (process start-up excluded);
- enqueue-to-start latency at a light steady rate, woken by NOTIFY and by
  polling: from the moment the enqueue's transaction has committed to the
  moment the job function starts (p99 interpolated between ranks);
- a worker process's peak RSS.

Run: ``.venv/bin/python tests/bench/queue_bench.py [--jobs 20000]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests" / "integration" / "queue"))

from _db import fresh_postgres  # noqa: E402
from queue_worker_proc import LATENCY_DDL  # noqa: E402

from chimeway.db import create_engine  # noqa: E402
from chimeway.models import metadata  # noqa: E402
from chimeway.queue import JobQueue, NewJob  # noqa: E402

WORKER = ROOT / "tests" / "integration" / "queue" / "queue_worker_proc.py"




def reset(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE chimeway_jobs, chimeway_workers, queue_latency"))


def start_worker(url: str, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, str(WORKER), url, *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scalar(engine: sa.Engine, query: str) -> float:
    with engine.connect() as conn:
        return float(conn.execute(sa.text(query)).scalar_one() or 0)


def wait_until(engine: sa.Engine, query: str, target: float, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while scalar(engine, query) < target:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {query} >= {target}")
        time.sleep(0.05)


def wait_listening(engine: sa.Engine, n: int) -> None:
    wait_until(engine, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND application_name = 'chimeway-listener' AND query LIKE 'LISTEN%'", n, 30)


def bench_enqueue(engine: sa.Engine, q: JobQueue, total: int) -> float:
    chunk = 5000
    started = time.perf_counter()
    for base in range(0, total, chunk):
        with engine.begin() as conn:
            q.insert_many(conn, [NewJob(worker="noop", args={"n": i})
                                 for i in range(base, min(total, base + chunk))])
    return total / (time.perf_counter() - started)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_throughput(url: str, engine: sa.Engine, q: JobQueue, total: int,
                     procs: int) -> tuple[float, float, float]:
    """Jobs/s from first claim to last completion, peak RSS (MB), worker CPU us per job."""
    reset(engine)
    workers = [start_worker(url, "--concurrency", "20", "--poll", "1") for _ in range(procs)]
    wait_listening(engine, procs)
    cpu_before = sum(cpu_seconds(w.pid) for w in workers)
    bench_enqueue(engine, q, total)
    wait_until(engine, "SELECT count(*) FROM chimeway_jobs WHERE state = 'completed'", total)
    cpu = sum(cpu_seconds(w.pid) for w in workers) - cpu_before
    rss = max(peak_rss_mb(w.pid) for w in workers)
    for w in workers:
        stop(w)
    span = scalar(engine, "SELECT extract(epoch FROM max(completed_at) - min(attempted_at)) "
                          "FROM chimeway_jobs")
    return total / span, rss, cpu / total * 1e6


def bench_claim(engine: sa.Engine, q: JobQueue, claims: int = 200, batch: int = 20) -> float:
    """Median seconds of one claim statement (batch of 20), the worker loop's unit of work."""
    reset(engine)
    bench_enqueue(engine, q, claims * batch)
    times = []
    for _ in range(claims):
        started = time.perf_counter()
        q.claim("default", batch, "bench")
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_latency(url: str, engine: sa.Engine, q: JobQueue, count: int, rate: float,
                  *worker_args: str) -> tuple[float, float]:
    reset(engine)
    worker = start_worker(url, "--concurrency", "20", *worker_args)
    if "--no-notify" not in worker_args:
        wait_listening(engine, 1)
    else:
        wait_until(engine, "SELECT count(*) FROM chimeway_workers", 1, 30)
    time.sleep(0.5)
    committed: dict[int, float] = {}
    for key in range(count):
        with engine.begin() as conn:
            q.enqueue(conn, "stamp", {"key": key})
        committed[key] = time.time()      # the clock starts once the enqueue has committed
        time.sleep(1.0 / rate)
    wait_until(engine, "SELECT count(*) FROM queue_latency", count, 60)
    stop(worker)
    with engine.connect() as conn:
        values = sorted((started - committed[key]) * 1000
                        for key, started in conn.execute(sa.text("SELECT key, started FROM queue_latency")))
    return statistics.median(values), percentile(values, 0.99)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values``, by linear interpolation between the nearest ranks."""
    at = q * (len(values) - 1)
    low = int(at)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (at - low)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default=os.environ.get("CHIMEWAY_BENCH_PG",
                                                           "postgresql://postgres@127.0.0.1:5432"))
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--enqueue-jobs", type=int, default=100_000)
    parser.add_argument("--latency-jobs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--polling-jobs", type=int, default=200,
                        help="jobs for the polling latency (5/s: 200 take 40 s); p99 needs a few hundred")
    ns = parser.parse_args()
    with fresh_postgres(server=ns.server) as url:
        engine = create_engine(url)
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.text(LATENCY_DDL))
        q = JobQueue(engine)
        print(f"cpus={os.cpu_count()} postgres={scalar(engine, 'SHOW server_version_num'):.0f} "
              f"load average={os.getloadavg()[0]:.1f}")
        rate = bench_enqueue(engine, q, ns.enqueue_jobs)
        print(f"bulk enqueue: {rate:,.0f} jobs/s ({ns.enqueue_jobs:,} jobs, chunks of 5,000)")
        claim = bench_claim(engine, q)
        print(f"claim round trip (20 jobs, one statement): p50 {claim * 1000:.2f} ms "
              f"=> one worker loop tops out near {20 / claim:,.0f} no-op jobs/s at concurrency 20")
        one, rss, us = bench_throughput(url, engine, q, ns.jobs, 1)
        print(f"no-op jobs, 1 worker process x20: {one:,.0f} jobs/s ({ns.jobs:,} jobs; "
              f"worker CPU {us:.0f} us/job)")
        print(f"worker peak RSS: {rss:.1f} MB")
        two, rss2, us2 = bench_throughput(url, engine, q, ns.jobs, 2)
        print(f"no-op jobs, 2 worker processes x20: {two:,.0f} jobs/s (worker CPU {us2:.0f} "
              f"us/job, peak RSS {rss2:.1f} MB)")
        p50, p99 = bench_latency(url, engine, q, ns.latency_jobs, ns.rate, "--poll", "30")
        print(f"enqueue->start via NOTIFY ({ns.rate:.0f}/s, {ns.latency_jobs} jobs): p50 {p50:.1f} ms, "
              f"p99 {p99:.1f} ms")
        p50, p99 = bench_latency(url, engine, q, ns.polling_jobs, 5.0, "--no-notify",
                                 "--poll", "1.0")
        print(f"enqueue->start via polling 1.0 s (5/s, {ns.polling_jobs} jobs): p50 {p50:.1f} ms, "
              f"p99 {p99:.1f} ms")
        engine.dispose()


if __name__ == "__main__":
    main()
