"""Webhook deliveries through the queue dispatcher to a local HTTP sink, end to end.

    python tests/bench/e2e_webhook_bench.py [--deliveries 10000] [--workers 1] [--concurrency 50] [--poll-interval 1]
                                            [--latency-ms 0]

Triggers notifiers (10 recipients each, webhook channel) with the queue
dispatcher, so every delivery and its job are committed before any worker
runs. Then starts the worker processes and waits until every delivery row is
``succeeded``.

What the clock covers: from the first claim of a delivery (the earliest
``dispatched_at``) to the last recorded outcome (the latest
``completed_at``), both written by the workers; worker start-up, imports and
the planning phase are outside it. It includes the job claims, the delivery
claims with the pre-send policy checkpoint, the signed HTTP POSTs, the
recording of attempts and statuses, and the job acknowledgements.

Also printed: the workers' CPU time per delivery (user + system, read from
``/proc``, start-up excluded), which moves much less than the rate when other
work shares the machine.

The sink is a small asyncio HTTP/1.1 server in its own process (keep-alive,
``204`` to every POST, after ``--latency-ms`` to stand in for a remote
provider; with latency L and concurrency C no worker can exceed C / L) so that receiving costs little of the machine's two
cores; it checks that every delivery id (``webhook-id``) arrived and counts
duplicates.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _db import fresh_postgres
from _sink import start_sink

from chimeway import Chimeway, Notifier, Recipient
from chimeway.channels import Webhook
from chimeway.db import create_engine
from chimeway.models import deliveries_table, metadata

SECRET = "whsec_" + "YmVuY2gtc2VjcmV0LWJlbmNoLXNlY3JldA=="
FANOUT = 10


class BenchHook(Notifier):
    key = "bench_e2e_hook"
    channels = ["webhook"]
    templates = {"webhook": {"body": "event {{ n }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"user:{params['n']}:{i}") for i in range(FANOUT)]


def make_app(url: str, sink: str) -> Chimeway:
    return Chimeway(engine=create_engine(url, pool_size=60, max_overflow=10), dispatcher="queue",
                    channels={"webhook": Webhook(url=sink, secret=SECRET)})


def run_worker(url: str, sink: str, concurrency: int, poll_interval: float) -> None:
    app = make_app(url, sink)
    app.queue.run_worker(queues={"chimeway_delivery": concurrency}, poll_interval=poll_interval)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deliveries", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--poll-interval", type=float, default=1.0,
                        help="the worker's poll interval (the library's default; NOTIFY wakes it sooner)")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="the sink answers each request after this long (a remote provider)")
    parser.add_argument("--role", choices=["main", "worker"], default="main")
    parser.add_argument("--url")
    parser.add_argument("--sink")
    args = parser.parse_args()
    if args.role == "worker":
        run_worker(args.url, args.sink, args.concurrency, args.poll_interval)
        return

    me = [sys.executable, __file__]
    sink_proc, sink, ids_file = start_sink(Path(os.environ.get("TMPDIR", "/tmp")) / f"chimeway-e2e-{os.getpid()}",
                                           delay=args.latency_ms / 1000)
    d = deliveries_table
    with fresh_postgres("chimeway_e2e") as url:
        engine = create_engine(url)
        metadata.create_all(engine)
        app = make_app(url, sink)
        events = args.deliveries // FANOUT
        t0 = time.perf_counter()
        for start in range(0, events, 100):
            with Session(app.engine) as session, session.begin():
                for n in range(start, min(events, start + 100)):
                    app.trigger(session, BenchHook, {"n": n}, idempotency_key=f"e2e-{n}")
        planned = time.perf_counter() - t0
        total = events * FANOUT
        print(f"planned {total} deliveries ({events} triggers × {FANOUT} recipients) in {planned:.1f}s "
              f"({total / planned:.0f} deliveries/s written with their jobs)")
        workers = [subprocess.Popen([*me, "--role", "worker", "--url", url, "--sink", sink,
                                     "--concurrency", str(args.concurrency), "--poll-interval", str(args.poll_interval)]) for _ in range(args.workers)]
        done = 0
        cpu_at_first_claim: float | None = None
        deadline = time.monotonic() + 600
        with engine.connect() as conn:
            while done < total:
                time.sleep(0.02 if cpu_at_first_claim is None else 0.25)
                if cpu_at_first_claim is None:
                    started = conn.execute(sa.select(sa.func.count()).select_from(d)
                                           .where(d.c.dispatched_at.is_not(None))).scalar_one()
                    if started:
                        cpu_at_first_claim = sum(cpu_seconds(w.pid) for w in workers)
                done = conn.execute(sa.select(sa.func.count()).select_from(d)
                                    .where(d.c.status == "succeeded")).scalar_one()
                conn.rollback()
                if time.monotonic() > deadline:
                    print("gave up after 600 s")
                    break
        cpu = sum(cpu_seconds(w.pid) for w in workers) - (cpu_at_first_claim or 0.0)
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(timeout=60)
        sink_proc.send_signal(signal.SIGTERM)
        sink_proc.wait(timeout=30)
        received = ids_file.read_text().split("\n") if ids_file.exists() else []
        with engine.connect() as conn:
            ids = {f"msg_{i}" for i in conn.execute(sa.select(d.c.id)).scalars()}
            statuses = dict(conn.execute(sa.select(d.c.status, sa.func.count()).group_by(d.c.status)).all())
            first, last = conn.execute(sa.select(sa.func.min(d.c.dispatched_at),
                                                 sa.func.max(d.c.completed_at))).one()
            attempts = conn.execute(sa.select(sa.func.sum(d.c.attempts))).scalar_one()
        engine.dispose()
        elapsed = (last - first).total_seconds()
        print(f"{args.workers} worker process(es) × concurrency {args.concurrency}, sink latency {args.latency_ms:g} ms: "
              f"{done} deliveries in "
              f"{elapsed:.2f}s from the first claim to the last outcome = {done / elapsed:.0f} deliveries/s; "
              f"worker CPU {cpu / max(done, 1) * 1e6:.0f} us/delivery")
        print(f"delivery rows by status: {statuses}; attempts made: {attempts}")
        print(f"sink received {len(received)} requests, {len(set(received))} distinct ids; "
              f"missing {len(ids - set(received))}; duplicates {len(received) - len(set(received))}")


if __name__ == "__main__":
    main()
