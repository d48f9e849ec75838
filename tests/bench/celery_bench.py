"""Webhook deliveries/s end to end: two Celery worker processes against two built-in queue workers.

    python tests/bench/celery_bench.py [--deliveries 5000] [--concurrency 20] [--brokers redis,rabbitmq]

One receiver on 127.0.0.1 for every run. For each dispatcher, two worker
processes are started and warmed up (a few deliveries sent and received);
then the clock starts, deliveries are committed 200 per transaction (the
queue dispatcher inserts their jobs in that transaction; the Celery one
writes outbox rows and publishes the tasks after each commit), and it stops
when every delivery row is ``succeeded``. Figures: deliveries/s over that
whole span, the time spent committing (and publishing), and what the
receiver saw (every id, duplicates).

Celery workers use the threads pool with ``--concurrency`` threads each; the
queue workers run ``chimeway_delivery`` with the same number of threads.
RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379) must be running.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _db import fresh_postgres
from celery_support import (
    RABBITMQ,
    REDIS,
    CeleryHook,
    delete_queues,
    settings,
    start_celery_worker,
    stop,
)
from celery_support import make_app as make_celery_app
from faults import FaultHook, Receiver, start_worker, wait_for
from faults import make_app as make_queue_app

from chimeway import Chimeway, Notifier
from chimeway.db import create_engine
from chimeway.models import deliveries_table, metadata
from chimeway.planning import TriggerRequest

FANOUT = 10
PER_TRANSACTION = 20  # triggers: 200 deliveries per commit


def _succeeded(app: Chimeway) -> int:
    d = deliveries_table
    with app.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).where(d.c.status == "succeeded")).scalar() or 0)


def _commit(app: Chimeway, notifier: type[Notifier], tag: str, events: int) -> list[str]:
    ids: list[str] = []
    requests = [TriggerRequest(params={"n": f"{tag}-{n}"}, idempotency_key=f"{tag}-{n}") for n in range(events)]
    for first in range(0, len(requests), PER_TRANSACTION):
        with Session(app.engine) as session, session.begin():
            for result in app.trigger_many(session, notifier, requests[first:first + PER_TRANSACTION]):
                ids += [str(i) for i in result.delivery_ids]
    return ids


def measure(name: str, app: Chimeway, notifier: type[Notifier], receiver: Receiver, deliveries: int,
            start: Callable[[], list[subprocess.Popen[bytes]]]) -> str:
    procs = start()
    try:
        warm = _commit(app, notifier, f"{name}-warm", 2)
        wait_for(lambda: all(receiver.counts[i] for i in warm), 120, f"{name}: the warm-up deliveries")
        before = _succeeded(app)
        t0 = time.perf_counter()
        ids = _commit(app, notifier, name, deliveries // FANOUT)
        committed = time.perf_counter() - t0
        wait_for(lambda: _succeeded(app) - before >= len(ids), 600, f"{name}: every delivery")
        elapsed = time.perf_counter() - t0
    finally:
        for proc in procs:
            stop(proc)
    seen = receiver.snapshot()
    missing = sum(1 for i in ids if seen[i] == 0)
    duplicated = sum(seen[i] - 1 for i in ids if seen[i] > 1)
    return (f"{name:<18} {len(ids) / elapsed:8.0f} deliveries/s   ({len(ids)} in {elapsed:5.1f} s; "
            f"commits{' + publishing' if 'celery' in name else ''} {committed:4.1f} s; "
            f"missing {missing}, duplicated {duplicated})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=20, help="threads per worker process")
    parser.add_argument("--brokers", default="redis,rabbitmq")
    options = parser.parse_args()
    brokers = {"redis": REDIS, "rabbitmq": RABBITMQ}
    receiver = Receiver()
    lines: list[str] = []
    load_before = os.getloadavg()[0]
    try:
        with fresh_postgres("chimeway_celery_bench") as server_url:
            url = server_url.replace("postgresql://", "postgresql+psycopg://", 1)
            engine = create_engine(url)
            metadata.create_all(engine)
            engine.dispose()

            queue_app = make_queue_app(url, receiver.url, lease=60, pool=10)
            lines.append(measure(
                "queue (2 workers)", queue_app, FaultHook, receiver, options.deliveries,
                lambda: [start_worker(url, receiver.url, lease=60, concurrency=options.concurrency)
                         for _ in range(2)]))
            queue_app.close()

            for broker in options.brokers.split(","):
                env = settings(url=url, broker=brokers[broker], receiver=receiver.url, lease=60.0)
                celery_app, _ = make_celery_app(env)
                try:
                    lines.append(measure(
                        f"celery {broker}", celery_app, CeleryHook, receiver, options.deliveries,
                        lambda env=env: [start_celery_worker(env, name=f"bench{k}", concurrency=options.concurrency)
                                         for k in range(2)]))
                finally:
                    celery_app.close()
                    delete_queues(env["CW_BROKER"], env["CW_QUEUE"], env["CW_RELAY_QUEUE"])
    finally:
        receiver.close()
    print(f"webhook deliveries end to end, 2 worker processes x {options.concurrency} threads each, "
          f"{options.deliveries} deliveries, one receiver (load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after):")
    for line in lines:
        print("  " + line)


if __name__ == "__main__":
    main()
