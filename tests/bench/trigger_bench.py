"""Trigger throughput and latency against plain SQLAlchemy Core inserts of the same rows.

    python tests/bench/trigger_bench.py [--n 2000] [--rounds 5] [--backends postgres,sqlite]

Each transaction writes one event, one notification and two deliveries
(1 recipient × 2 channels: ``in_app`` and ``webhook``) and commits. What each
row's clock covers, per transaction, from before ``begin`` to after the commit
returns (and, for the sync dispatcher, after the deliveries are recorded):

- ``plain Core inserts``: the same event, notification and delivery rows
  written with ``sa.insert`` (no planning, no rendering, no job).
- ``trigger, queue dispatcher``: ``app.trigger`` with ``dispatcher="queue"``:
  planning, rendering, the policy checkpoint, the rows above and one job
  per delivery. **The headline ratio is this row against plain inserts.**
- ``trigger, no dispatcher``: the same trigger with a dispatcher that does
  nothing, so the rows are written and nothing is executed (no jobs).
- ``trigger + sync delivery`` (one thread): ``dispatcher="sync"``: the trigger
  (its deliveries written already claimed), then after its commit the in-app
  delivery, a signed webhook POST to a local sink (``tests/bench/_sink.py``,
  its own process) and the record of both.
  Its ratio is against ``trigger, no dispatcher`` in the same rounds: what
  delivering in-process adds to a trigger.

The variants run in turn, ``--rounds`` times, each round doing ``n / rounds``
transactions of each; the printed rate is the median over rounds, the ratios
are medians of the per-round ratios (rounds next to each other see the same
machine), and p50/p99 are over every transaction.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
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
from _sink import start_sink

from chimeway import Chimeway, Notifier, Recipient
from chimeway.channels import Webhook
from chimeway.db import create_engine
from chimeway.dispatch import Due
from chimeway.ids import new_id
from chimeway.models import deliveries_table, events_table, metadata, notifications_table

SECRET = "whsec_" + "YmVuY2gtc2VjcmV0LWJlbmNoLXNlY3JldA=="


class BenchShipped(Notifier):
    key = "bench_order_shipped"
    channels = ["in_app", "webhook"]
    templates = {
        "in_app": {"title": "Order {{ order_id }} shipped", "body": "Track it at {{ url }}"},
        "webhook": {"body": "order {{ order_id }}"},
    }

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"user:{params['user_id']}")]


class NoDispatch:
    """Plans are written; nothing is executed (isolates the trigger's own cost)."""

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
                for ch in ("in_app", "webhook")
            ])
    return one


def chimeway_trigger(app: Chimeway) -> Callable[[int], None]:
    def one(i: int) -> None:
        with Session(app.engine) as session, session.begin():
            app.trigger(session, BenchShipped, {"order_id": i, "user_id": i, "url": "https://x.test/t"},
                        idempotency_key=f"bench-{i}-{uuid.uuid4().hex}")
    return one


def run(fn: Callable[[int], None], n: int, threads: int, first: int = 0) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(first, first + n))

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


def rounds(variants: Mapping[str, Callable[[int], None]], n: int, threads: int,
           count: int) -> dict[str, tuple[list[float], list[float]]]:
    """Run the variants in turn ``count`` times; name → (rate of each round, every latency)."""
    out: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in variants}
    per_round = max(1, n // count)
    for r in range(count):
        for name, fn in variants.items():
            rate, lat = run(fn, per_round, threads, first=(r + 1) * 1_000_000)
            out[name][0].append(rate)
            out[name][1].extend(lat)
    return out


def ratio(slow: list[float], fast: list[float]) -> float:
    """Median of the per-round ratios fast rate / slow rate (how many times slower)."""
    return statistics.median(f / s for s, f in zip(slow, fast, strict=True))


def line(label: str, threads: int, measured: tuple[list[float], list[float]], note: str = "") -> None:
    rates, lat = measured
    print(f"  {label:<34}{threads:>8}{statistics.median(rates):>9.0f}{pct(lat, .5):>9.2f}"
          f"{pct(lat, .99):>9.2f}   {note}")


def bench_backend(name: str, url: str, n: int, count: int, sink: str) -> None:
    engine = create_engine(url, pool_size=16, max_overflow=8)
    metadata.create_all(engine)
    webhook = Webhook(url=sink, secret=SECRET)
    plain = plain_core(engine)
    queued = chimeway_trigger(Chimeway(engine=engine, dispatcher="queue", channels={"webhook": webhook}))
    bare = chimeway_trigger(Chimeway(engine=engine, dispatcher=NoDispatch(), channels={"webhook": webhook}))
    sync_app = Chimeway(engine=engine, channels={"webhook": webhook})
    synced = chimeway_trigger(sync_app)
    # Warm up pools, caches, compiled templates and the sink's connection.
    for fn in (plain, queued, bare, synced):
        run(fn, 30, 1)
    print(f"\n{name}: {n} transactions per variant and thread count, {count} interleaved rounds "
          "(1 event + 1 notification + 2 deliveries, commit per transaction)")
    print(f"  {'what':<34}{'threads':>8}{'tx/s':>9}{'p50 ms':>9}{'p99 ms':>9}   ratio (median of rounds)")
    for threads in (1, 8):
        got = rounds({"plain": plain, "queue": queued, "bare": bare}, n, threads, count)
        line("plain Core inserts", threads, got["plain"])
        line("trigger, queue dispatcher", threads, got["queue"],
             f"{ratio(got['queue'][0], got['plain'][0]):.2f}x plain inserts (headline)")
        line("trigger, no dispatcher", threads, got["bare"],
             f"{ratio(got['bare'][0], got['plain'][0]):.2f}x plain inserts")
    got = rounds({"bare": bare, "sync": synced}, n // 2, 1, count)
    line("trigger + sync delivery", 1, got["sync"],
         f"{ratio(got['sync'][0], got['bare'][0]):.2f}x the trigger alone (no dispatcher, same rounds)")
    with engine.connect() as conn:
        d = deliveries_table
        statuses = dict(conn.execute(sa.select(d.c.status, sa.func.count()).where(d.c.channel == "webhook")
                                     .group_by(d.c.status)).all())
    print(f"  webhook deliveries by status: {statuses}")
    webhook.close()
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backends", default="postgres,sqlite")
    args = parser.parse_args()
    backends = args.backends.split(",")
    sink_proc, sink, _ids = start_sink(Path(tempfile.gettempdir()) / f"chimeway-trigger-{os.getpid()}")
    try:
        if "postgres" in backends:
            with fresh_postgres() as url:
                bench_backend("PostgreSQL", url, args.n, args.rounds, sink)
        if "sqlite" in backends:
            with tempfile.TemporaryDirectory() as tmp:
                bench_backend("SQLite (WAL, file)", f"sqlite:///{tmp}/bench.db", args.n, args.rounds, sink)
    finally:
        sink_proc.send_signal(signal.SIGTERM)
        sink_proc.wait(timeout=30)


if __name__ == "__main__":
    main()
