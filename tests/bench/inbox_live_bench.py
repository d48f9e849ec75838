"""Live inbox latency: from a read being made to the change arriving at an open iterator.

Creates its own database on the local PostgreSQL (``$CHIMEWAY_TEST_PG`` or
``postgresql://postgres@127.0.0.1:5432``), drops it at the end. One
recipient's inbox holds ``--items`` unread items; an iterator listens while
another thread marks them read one by one (one transaction each), with
``--listeners`` other recipients' iterators open on the same ``LISTEN``
connection. The latency runs from the call to ``mark_read`` (its transaction
included) to the iterator yielding the change. Prints the median, 95th
percentile and worst latency, then the
same with polling (``notify=False``, 1 s interval) for comparison.

    .venv/bin/python tests/bench/inbox_live_bench.py [--items 200] [--listeners 50]

Not a test: figures depend on the machine and are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).parent))

from _db import fresh_postgres

from chimeway import Chimeway, Notifier, Recipient
from chimeway.models import metadata


class BenchMention(Notifier):
    key = "bench_live_mention"
    channels = ["in_app"]
    templates = {"in_app": {"title": "n{{ n }}"}}

    def recipients(self, params: Any) -> list[Recipient]:
        return [Recipient(id=params["to"])]


async def measure(app: Chimeway, ids: list[uuid.UUID], listeners: int) -> tuple[list[float], list[float]]:
    started: dict[uuid.UUID, float] = {}
    writes: list[float] = []
    others = [app.inbox_changes(f"user:other{i}") for i in range(listeners)]
    for other in others:
        await anext(other)
    changes = app.inbox_changes("user:1")
    await anext(changes)                     # the snapshot: listening from here on

    def read_all() -> None:
        inbox = app.inbox("user:1")
        for nid in ids:
            started[nid] = time.perf_counter()
            inbox.mark_read(nid)
            writes.append((time.perf_counter() - started[nid]) * 1000)
            time.sleep(0.005)

    reader = asyncio.create_task(asyncio.to_thread(read_all))
    latencies = []
    while len(latencies) < len(ids):
        change = await asyncio.wait_for(anext(changes), 30)
        arrived = time.perf_counter()
        assert change.kind == "read" and change.notification_id is not None
        latencies.append((arrived - started[change.notification_id]) * 1000)
    await reader
    for iterator in [changes, *others]:
        await iterator.aclose()
    return latencies, writes


def run(url: str, items: int, listeners: int, *, notify: bool) -> None:
    app = Chimeway(url, notify=notify)
    with Session(app.engine) as session, session.begin():
        ids = [app.trigger(session, BenchMention, {"to": "user:1", "n": n},
                           idempotency_key=f"{notify}-{n}").notification_ids[0] for n in range(items)]
    latencies, writes = asyncio.run(measure(app, ids, listeners))
    latencies.sort()
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    mode = "LISTEN/NOTIFY" if notify else "polling (1 s)"
    print(f"{mode:<15} {items} reads, {listeners} other listeners: median {statistics.median(latencies):7.2f} ms"
          f"  p95 {p95:7.2f} ms  worst {latencies[-1]:7.2f} ms  (mark_read alone: median "
          f"{statistics.median(writes):.2f} ms)")
    app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--listeners", type=int, default=50)
    options = parser.parse_args()
    for notify in (True, False):
        with fresh_postgres("chimeway_bench_live") as server_url:
            url = "postgresql+psycopg://" + server_url.split("://", 1)[1]
            from chimeway.db import create_engine

            engine = create_engine(url)
            metadata.create_all(engine)
            engine.dispose()
            run(url, options.items if notify else min(options.items, 20), options.listeners, notify=notify)


if __name__ == "__main__":
    main()
