"""Chimeway's job queue side by side with pgqueuer and procrastinate: prints figures, gates nothing.

The peers are an optional extra: ``pip install -e '.[bench]'``. A peer that is
not installed is skipped, and the script says so.

Every round runs each system in turn (Chimeway, pgqueuer, procrastinate, then
again), each in a database of its own created on ``CHIMEWAY_BENCH_PG`` (default
``postgresql://postgres@127.0.0.1:5432``) and dropped afterwards. The schema is
each system's own (Chimeway's metadata, ``Queries.install()``, procrastinate's
``apply_schema``), at its default settings. Two workloads, the same for all:

- **bulk enqueue**: ``--enqueue-jobs`` jobs named ``noop`` with the JSON
  argument ``{"n": i}``, in chunks of 5,000, each chunk one statement in one
  transaction through the system's own batch API (Chimeway
  ``JobQueue.insert_many``, pgqueuer ``Queries.enqueue`` with lists,
  procrastinate ``Task.batch_defer_async``). The clock is the caller's
  ``perf_counter`` around the loop of chunks, from before the first chunk to
  after the last commit; connecting and schema creation are outside it.
- **no-op jobs, one worker**: the queue is emptied (``TRUNCATE``), ``--jobs``
  such jobs are enqueued (not timed), then ONE worker process starts with
  ``--concurrency`` jobs in flight and drains the backlog. The clock is the
  one each system writes in its own tables: from the earliest claim to the
  latest completion (Chimeway ``min(attempted_at)`` to ``max(completed_at)``
  on ``chimeway_jobs``; pgqueuer the first ``picked`` to the last
  ``successful`` row of ``pgqueuer_log``; procrastinate the first
  ``started`` to the last ``succeeded`` row of ``procrastinate_events``). The
  worker's start-up (interpreter, imports, connecting) precedes the first
  claim and so is outside it; the last completion is as each system records
  it, so an acknowledgement it buffers counts when it is written.

The workers: Chimeway's is ``tests/integration/queue/queue_worker_proc.py``
(threads; a synchronous no-op; pool of concurrency + 5, NOTIFY on, polling
every second), as in ``queue_bench.py``. pgqueuer's runs ``PgQueuer.run`` on
one asyncpg connection (its documented set-up) with ``max_concurrent_tasks``
= concurrency, its only hard cap on jobs in flight, and ``batch_size`` =
concurrency / 2 (the most that cap allows), an ``async`` no-op. Its figure
depends on that choice: the cap adds a budget to its dequeue query and halves
the batch. ``--pgqueuer-uncapped`` runs it with ``batch_size`` = concurrency
and no cap instead (Chimeway also claims up to concurrency jobs per
statement), at the price of jobs in flight no longer being bounded at
concurrency. procrastinate's runs ``run_worker_async(concurrency=...)``
on a psycopg pool of at most concurrency + 5 connections, an ``async`` no-op.

Run: ``.venv/bin/python tests/bench/peers.py [--rounds 3] [--jobs 20000]
[--enqueue-jobs 50000] [--concurrency 20] [--systems chimeway,pgqueuer]
[--pgqueuer-uncapped]``. With the defaults procrastinate's rounds take most of
the time (about ten minutes in all on two busy cores).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

import queue_bench
from _db import fresh_postgres

from chimeway.db import create_engine
from chimeway.models import metadata
from chimeway.queue import JobQueue

CHUNK = 5000
SYSTEMS = ("chimeway", "pgqueuer", "procrastinate")
PEER_MODULES = {"pgqueuer": "pgqueuer", "procrastinate": "procrastinate"}


@dataclass(frozen=True)
class Probe:
    """The SQL that empties a system's queue, counts its completed jobs, and spans them."""

    clear: str
    done: str
    span: str


PROBES = {
    "chimeway": Probe(
        clear="TRUNCATE chimeway_jobs, chimeway_workers",
        done="SELECT count(*) FROM chimeway_jobs WHERE state = 'completed'",
        span="SELECT extract(epoch FROM max(completed_at) - min(attempted_at)) FROM chimeway_jobs",
    ),
    "pgqueuer": Probe(
        clear="TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics",
        done="SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'",
        span="SELECT extract(epoch FROM "
             "(SELECT max(created) FROM pgqueuer_log WHERE status = 'successful') - "
             "(SELECT min(created) FROM pgqueuer_log WHERE status = 'picked'))",
    ),
    "procrastinate": Probe(
        clear="TRUNCATE procrastinate_jobs, procrastinate_workers CASCADE",
        done="SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'",
        span="SELECT extract(epoch FROM "
             "(SELECT max(at) FROM procrastinate_events WHERE type = 'succeeded') - "
             "(SELECT min(at) FROM procrastinate_events WHERE type = 'started'))",
    ),
}


# --- pgqueuer ---------------------------------------------------------------------------

async def _pgqueuer_connect(url: str) -> Any:
    import asyncpg

    return await asyncpg.connect(url)


async def pgqueuer_install(url: str) -> None:
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    conn = await _pgqueuer_connect(url)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()


async def pgqueuer_enqueue(url: str, total: int) -> float:
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    conn = await _pgqueuer_connect(url)
    try:
        queries = Queries(AsyncpgDriver(conn))
        started = time.perf_counter()
        for base in range(0, total, CHUNK):
            ns = range(base, min(total, base + CHUNK))
            await queries.enqueue(["noop"] * len(ns),
                                  [json.dumps({"n": n}).encode() for n in ns], [0] * len(ns))
        return total / (time.perf_counter() - started)
    finally:
        await conn.close()


async def pgqueuer_worker(url: str, concurrency: int, uncapped: bool) -> None:
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job

    conn = await _pgqueuer_connect(url)
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        pass

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, pgq.shutdown.set)
    try:
        if uncapped:
            await pgq.run(batch_size=concurrency)
        else:
            await pgq.run(batch_size=max(1, concurrency // 2), max_concurrent_tasks=concurrency)
    finally:
        await conn.close()


# --- procrastinate ----------------------------------------------------------------------

async def _procrastinate_noop(n: int) -> None:
    pass


def procrastinate_app(url: str, max_size: int) -> Any:
    import procrastinate

    # The app lives in this script on purpose and names its task explicitly, so
    # procrastinate's warning about apps defined in ``__main__`` does not apply.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(
        conninfo=url, min_size=1, max_size=max_size))
    app.task(name="noop")(_procrastinate_noop)
    return app


async def procrastinate_install(url: str) -> None:
    app = procrastinate_app(url, 2)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


async def procrastinate_enqueue(url: str, total: int) -> float:
    app = procrastinate_app(url, 2)
    async with app.open_async():
        task = app.tasks["noop"]
        started = time.perf_counter()
        for base in range(0, total, CHUNK):
            await task.batch_defer_async(*({"n": n} for n in range(base, min(total, base + CHUNK))))
        return total / (time.perf_counter() - started)


async def procrastinate_worker(url: str, concurrency: int) -> None:
    app = procrastinate_app(url, concurrency + 5)
    async with app.open_async():
        await app.run_worker_async(concurrency=concurrency, wait=True)


# --- one system, one round --------------------------------------------------------------

def start_peer_worker(system: str, url: str, ns: argparse.Namespace) -> subprocess.Popen[bytes]:
    extra = ["--pgqueuer-uncapped"] if ns.pgqueuer_uncapped else []
    return subprocess.Popen([sys.executable, __file__, "--worker", system, url,
                             "--concurrency", str(ns.concurrency), *extra],
                            stdout=subprocess.DEVNULL)


def install(system: str, url: str, engine: sa.Engine) -> Callable[[int], float]:
    """Create ``system``'s schema; return its bulk enqueue (jobs -> jobs/s)."""
    if system == "chimeway":
        metadata.create_all(engine)
        q = JobQueue(engine)
        return lambda total: queue_bench.bench_enqueue(engine, q, total)
    if system == "pgqueuer":
        asyncio.run(pgqueuer_install(url))
        return lambda total: asyncio.run(pgqueuer_enqueue(url, total))
    asyncio.run(procrastinate_install(url))
    return lambda total: asyncio.run(procrastinate_enqueue(url, total))


def run_round(system: str, ns: argparse.Namespace) -> tuple[float, float]:
    """(bulk enqueue jobs/s, no-op jobs/s with one worker) for ``system`` in a fresh database."""
    probe = PROBES[system]
    with fresh_postgres(prefix=f"chimeway_peers_{system}", server=ns.server) as url:
        engine = create_engine(url)
        try:
            enqueue = install(system, url, engine)
            enqueue_rate = enqueue(ns.enqueue_jobs)
            with engine.begin() as conn:
                conn.execute(sa.text(probe.clear))
            enqueue(ns.jobs)
            if system == "chimeway":
                worker = queue_bench.start_worker(url, "--concurrency", str(ns.concurrency),
                                                  "--poll", "1")
            else:
                worker = start_peer_worker(system, url, ns)
            try:
                queue_bench.wait_until(engine, probe.done, ns.jobs, timeout=ns.timeout)
            finally:
                queue_bench.stop(worker)
            done = queue_bench.scalar(engine, probe.done)
            if done != ns.jobs:
                raise SystemExit(f"{system}: {done:.0f} jobs completed, expected {ns.jobs}")
            span = queue_bench.scalar(engine, probe.span)
            return enqueue_rate, ns.jobs / span
        finally:
            engine.dispose()


# --- main -------------------------------------------------------------------------------

def available(systems: list[str]) -> list[str]:
    present = []
    for system in systems:
        module = PEER_MODULES.get(system)
        if module is not None and importlib.util.find_spec(module) is None:
            print(f"skipping {system}: not installed (pip install -e '.[bench]')")
            continue
        present.append(system)
    return present


def version(system: str) -> str:
    if system == "chimeway":
        return importlib.metadata.version("chimeway")
    return importlib.metadata.version(PEER_MODULES[system])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default=os.environ.get("CHIMEWAY_BENCH_PG",
                                                           "postgresql://postgres@127.0.0.1:5432"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=20_000, help="no-op jobs one worker drains")
    parser.add_argument("--enqueue-jobs", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for one worker to drain its jobs")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--pgqueuer-uncapped", action="store_true",
                        help="run pgqueuer with batch_size = concurrency and no max_concurrent_tasks")
    ns = parser.parse_args()
    wanted = [s.strip() for s in ns.systems.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SYSTEMS))
    if unknown:
        parser.error(f"--systems: unknown {', '.join(unknown)} (choose from {', '.join(SYSTEMS)})")
    systems = available(wanted)
    if "chimeway" not in systems or len(systems) < 2:
        raise SystemExit("nothing to compare: Chimeway and at least one peer are needed "
                         "(pip install -e '.[bench]')")

    load = os.getloadavg()
    print(f"cpus={os.cpu_count()} load average={load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          + " ".join(f"{s}={version(s)}" for s in systems))
    print(f"bulk enqueue: {ns.enqueue_jobs:,} jobs in chunks of {CHUNK:,}; no-op jobs: "
          f"{ns.jobs:,} drained by one worker process at concurrency {ns.concurrency}"
          + ("; pgqueuer uncapped" if ns.pgqueuer_uncapped else ""))
    results: dict[str, list[tuple[float, float]]] = {s: [] for s in systems}
    for round_no in range(1, ns.rounds + 1):
        for system in systems:
            enqueue_rate, process_rate = run_round(system, ns)
            results[system].append((enqueue_rate, process_rate))
            print(f"round {round_no} {system:>13}: bulk enqueue {enqueue_rate:>9,.0f} jobs/s   "
                  f"no-op jobs, one worker {process_rate:>7,.0f} jobs/s", flush=True)

    medians = {s: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
               for s, rs in results.items()}
    print(f"medians of {ns.rounds} rounds:")
    for system, (enqueue_rate, process_rate) in medians.items():
        print(f"  {system:>13}: bulk enqueue {enqueue_rate:>9,.0f} jobs/s   "
              f"no-op jobs, one worker {process_rate:>7,.0f} jobs/s")
    ours = medians["chimeway"]
    for system, (enqueue_rate, process_rate) in medians.items():
        if system != "chimeway":
            print(f"  Chimeway / {system}: bulk enqueue {ours[0] / enqueue_rate:.2f}x   "
                  f"no-op jobs, one worker {ours[1] / process_rate:.2f}x")
    load = os.getloadavg()
    print(f"load average at the end={load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def worker_main(argv: list[str]) -> None:
    """``peers.py --worker SYSTEM URL --concurrency N``: a peer's worker process, until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=sorted(PEER_MODULES), required=True)
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--pgqueuer-uncapped", action="store_true")
    ns = parser.parse_args(argv)
    if ns.worker == "pgqueuer":
        asyncio.run(pgqueuer_worker(ns.url, ns.concurrency, ns.pgqueuer_uncapped))
    else:
        asyncio.run(procrastinate_worker(ns.url, ns.concurrency))


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        worker_main(sys.argv[1:])
    else:
        main()
