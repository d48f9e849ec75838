"""Trigger throughput and latency vs plain SQLAlchemy Core inserts of the same rows.

    python tests/bench/trigger_bench.py [--n 2000] [--backends postgres,sqlite]

Each transaction writes one event, one notification and two deliveries
(1 recipient × 2 channels) and commits. Chimeway's trigger is measured with a
dispatcher that does nothing after commit, so the figures are the cost of
planning and writing; the sync dispatcher's delivery work is measured on its
own afterwards. Prints transactions/s, p50/p99 latency and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _db import fresh_postgres

from chimeway import Chimeway, Notifier, Recipient
from chimeway.db import create_engine
from chimeway.dispatch import Due
from chimeway.ids import new_id
from chimeway.models import deliveries_table, events_table, metadata, notifications_table
from chimeway.testing import RecordingChannel


class BenchShipped(Notifier):
    key = "bench_order_shipped"
    channels = ["in_app", "rec"]
    templates = {
        "in_app": {"title": "Order {{ order_id }} shipped", "body": "Track it at {{ url }}"},
        "rec": {"body": "order {{ order_id }}"},
    }

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"user:{params['user_id']}")]


class NoDispatch:
    """Plans are written; nothing is executed (isolates trigger cost)."""

    name = "none"

    def planned(self, target: Any, conn: Connection, deliveries: Sequence[Due]) -> None:
        pass

    def redrive(self, deliveries: Sequence[Due]) -> int:
        return 0


def plain_core(engine: sa.Engine) -> Callable[[int], None]:
    def one(i: int) -> None:
        ts = datetime.now(UTC)
        eid, nid = new_id(), new_id()
        with engine.begin() as conn:
            conn.execute(sa.insert(events_table).values(
                id=eid, tenant="", idempotency_key=f"plain-{i}-{uuid.uuid4().hex}", notifier_key="k",
                notifier_version=1, params={"order_id": i, "user_id": i, "url": "https://x.test/t"},
                created_at=ts))
            conn.execute(sa.insert(notifications_table).values(
                id=nid, event_id=eid, tenant="", recipient_id=f"user:{i}", recipient={"id": f"user:{i}"},
                notifier_key="k", created_at=ts))
            conn.execute(sa.insert(deliveries_table), [
                {"id": new_id(), "notification_id": nid, "event_id": eid, "tenant": "", "recipient_id": f"user:{i}",
                 "channel": ch, "status": "pending", "message": {"body": f"order {i}"}, "attempts": 0,
                 "created_at": ts, "updated_at": ts}
                for ch in ("in_app", "rec")
            ])
    return one


def chimeway_trigger(app: Chimeway) -> Callable[[int], None]:
    def one(i: int) -> None:
        with Session(app.engine) as session, session.begin():
            app.trigger(session, BenchShipped, {"order_id": i, "user_id": i, "url": "https://x.test/t"},
                        idempotency_key=f"bench-{i}-{uuid.uuid4().hex}")
    return one


def run(fn: Callable[[int], None], n: int, threads: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(n))

    def worker() -> None:
        local: list[float] = []
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t0 = time.perf_counter()
            fn(i)
            local.append((time.perf_counter() - t0) * 1000)
        with lock:
            latencies.extend(local)

    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    return n / elapsed, latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_backend(name: str, url: str, n: int) -> None:
    engine = create_engine(url, pool_size=16, max_overflow=8)
    metadata.create_all(engine)
    app = Chimeway(engine=engine, dispatcher=NoDispatch(), channels={"rec": RecordingChannel()})
    # Warm up pools, caches and compiled templates.
    run(plain_core(engine), 50, 1)
    run(chimeway_trigger(app), 50, 1)
    print(f"\n{name}: {n} transactions each (1 event + 1 notification + 2 deliveries, commit per transaction)")
    print(f"  {'what':<28}{'threads':>8}{'tx/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>8}")
    for threads in (1, 8):
        plain_rate, plain_lat = run(plain_core(engine), n, threads)
        rate, lat = run(chimeway_trigger(app), n, threads)
        print(f"  {'plain Core inserts':<28}{threads:>8}{plain_rate:>10.0f}{pct(plain_lat, .5):>9.2f}{pct(plain_lat, .99):>9.2f}{'':>8}")
        print(f"  {'chimeway trigger':<28}{threads:>8}{rate:>10.0f}{pct(lat, .5):>9.2f}{pct(lat, .99):>9.2f}"
              f"{plain_rate / rate:>7.2f}x")
    # Delivery work of the sync dispatcher, measured on its own.
    rec = RecordingChannel()
    sync_app = Chimeway(engine=engine, channels={"rec": rec})
    rate, lat = run(chimeway_trigger(sync_app), n // 2, 1)
    print(f"  {'trigger + sync delivery':<28}{1:>8}{rate:>10.0f}{pct(lat, .5):>9.2f}{pct(lat, .99):>9.2f}"
          f"   (in_app + recording channel, claim + record after commit)")
    assert len(rec.sent) == n // 2
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--backends", default="postgres,sqlite")
    args = parser.parse_args()
    backends = args.backends.split(",")
    if "postgres" in backends:
        with fresh_postgres() as url:
            bench_backend("PostgreSQL", url, args.n)
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as tmp:
            bench_backend("SQLite (WAL, file)", f"sqlite:///{tmp}/bench.db", args.n)


if __name__ == "__main__":
    main()
