"""Triggers per second: the async API (50 tasks) against the sync API (50 threads).

Creates its own database on the local PostgreSQL (``postgresql://postgres@127.0.0.1:5432``
or ``$CHIMEWAY_BENCH_PG``), drops it at the end, and prints one line per run.
Async runs use psycopg's and asyncpg's async modes. Each trigger is one transaction (one event, one notification, one delivery)
committed by its caller; with the ``sync`` dispatcher the in-app delivery
follows the commit, with ``queue`` a delivery job is written instead.

    .venv/bin/python tests/bench/async_bench.py [--triggers 2000] [--concurrency 50]

Not a test: figures depend on the machine and are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from chimeway import Chimeway, Notifier, Recipient
from chimeway.aio import create_async_engine
from chimeway.models import deliveries_table, events_table, metadata

SERVER = os.environ.get("CHIMEWAY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")


class BenchPing(Notifier):
    key = "bench_async_ping"
    channels = ["in_app"]
    templates = {"in_app": {"title": "Ping {{ n }}", "body": "from {{ who }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"user:{params['n'] % 100}")]


def _reset(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        names = ", ".join(t.name for t in metadata.sorted_tables)
        conn.exec_driver_sql(f"TRUNCATE {names} CASCADE")
    engine.dispose()


def _check(url: str, triggers: int, dispatcher: str) -> str:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        events = conn.execute(sa.select(sa.func.count()).select_from(events_table)).scalar_one()
        done = conn.execute(
            sa.select(sa.func.count()).select_from(deliveries_table).where(deliveries_table.c.status == "succeeded")
        ).scalar_one()
    engine.dispose()
    assert events == triggers, f"{events} events for {triggers} triggers"
    if dispatcher == "sync":
        assert done == triggers, f"{done} of {triggers} deliveries succeeded"
    return f"events={events} delivered={done}"


async def run_async(url: str, triggers: int, concurrency: int, dispatcher: str, driver: str) -> float:
    engine = create_async_engine(url.replace("postgresql://", f"postgresql+{driver}://"),
                                 pool_size=concurrency, max_overflow=0)
    app = Chimeway.from_async_engine(engine, dispatcher=dispatcher)
    counter = iter(range(triggers))

    async def worker() -> None:
        for n in counter:
            async with AsyncSession(engine) as session, session.begin():
                await app.trigger_async(session, BenchPing, {"n": n, "who": "task"},
                                        idempotency_key=f"a-{n}")

    # Warm the pools and the planner outside the timed part.
    async with AsyncSession(engine) as session, session.begin():
        await app.trigger_async(session, BenchPing, {"n": -1, "who": "warm"}, idempotency_key="warm")
    _reset(url)
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    app.close()
    await engine.dispose()
    return elapsed


def run_sync(url: str, triggers: int, concurrency: int, dispatcher: str) -> float:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"),
                              pool_size=concurrency + 10, max_overflow=0)
    app = Chimeway(engine=engine, dispatcher=dispatcher)
    counter = iter(range(triggers))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            with Session(engine) as session, session.begin():
                app.trigger(session, BenchPing, {"n": n, "who": "thread"}, idempotency_key=f"s-{n}")

    with Session(engine) as session, session.begin():
        app.trigger(session, BenchPing, {"n": -1, "who": "warm"}, idempotency_key="warm")
    _reset(url)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    elapsed = time.perf_counter() - start
    app.close()
    engine.dispose()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--triggers", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()

    name = f"chimeway_async_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(SERVER + "/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{SERVER}/{name}"
    try:
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        metadata.create_all(engine)
        engine.dispose()
        print(f"{args.triggers} triggers, concurrency {args.concurrency}, PostgreSQL {name}")
        for dispatcher in ("sync", "queue"):
            for driver in ("psycopg", "asyncpg"):
                elapsed = asyncio.run(run_async(url, args.triggers, args.concurrency, dispatcher, driver))
                note = _check(url, args.triggers, dispatcher)
                print(f"  async  {args.concurrency} tasks   dispatcher={dispatcher:5} {driver:8} "
                      f"{args.triggers / elapsed:8.0f} triggers/s  ({elapsed:.2f} s, {note})")
                _reset(url)
            elapsed = run_sync(url, args.triggers, args.concurrency, dispatcher)
            note = _check(url, args.triggers, dispatcher)
            print(f"  sync   {args.concurrency} threads dispatcher={dispatcher:5} psycopg  "
                  f"{args.triggers / elapsed:8.0f} triggers/s  ({elapsed:.2f} s, {note})")
            _reset(url)
    finally:
        with psycopg.connect(SERVER + "/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
