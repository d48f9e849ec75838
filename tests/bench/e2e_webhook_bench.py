"""10,000 webhook deliveries through the queue to a local HTTP sink.

    python tests/bench/e2e_webhook_bench.py [--deliveries 10000] [--workers 1] [--concurrency 50]

Triggers notifiers (10 recipients each, webhook channel) with the queue
dispatcher, then starts worker processes and measures deliveries/s from the
first claim until every delivery row is ``succeeded``. Checks that the sink
received every delivery id (``webhook-id``) and reports duplicates.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _db import fresh_postgres

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


def run_sink(port_file: Path, ids_file: Path) -> None:
    received: list[str] = []

    class Sink(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            received.append(self.headers["webhook-id"])
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        # 50+ connections open at once; the default backlog of 5 overflows
        # and costs SYN retries of 1-3 s.
        request_queue_size = 512
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Sink)

    def stop(*_: Any) -> None:
        ids_file.write_text("\n".join(received))
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    port_file.write_text(str(server.server_port))
    server.serve_forever()


def run_worker(url: str, sink: str, concurrency: int) -> None:
    app = make_app(url, sink)
    app.queue.run_worker(queues={"chimeway_delivery": concurrency}, poll_interval=0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deliveries", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--role", choices=["main", "sink", "worker"], default="main")
    parser.add_argument("--url")
    parser.add_argument("--sink")
    parser.add_argument("--files", nargs=2)
    args = parser.parse_args()
    if args.role == "sink":
        run_sink(Path(args.files[0]), Path(args.files[1]))
        return
    if args.role == "worker":
        run_worker(args.url, args.sink, args.concurrency)
        return

    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"chimeway-e2e-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    port_file, ids_file = tmp / "port", tmp / "ids"
    me = [sys.executable, __file__]
    sink_proc = subprocess.Popen([*me, "--role", "sink", "--files", str(port_file), str(ids_file)])
    while not port_file.exists() or not port_file.read_text():
        time.sleep(0.05)
    sink = f"http://127.0.0.1:{port_file.read_text()}/hook"
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
                                     "--concurrency", str(args.concurrency)]) for _ in range(args.workers)]
        t0 = time.perf_counter()
        done = 0
        with engine.connect() as conn:
            while done < total:
                time.sleep(0.25)
                done = conn.execute(sa.select(sa.func.count()).select_from(deliveries_table)
                                    .where(deliveries_table.c.status == "succeeded")).scalar_one()
                conn.rollback()
                if time.perf_counter() - t0 > 600:
                    print("gave up after 600 s")
                    break
        elapsed = time.perf_counter() - t0
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(timeout=60)
        sink_proc.send_signal(signal.SIGTERM)
        sink_proc.wait(timeout=30)
        received = ids_file.read_text().split("\n") if ids_file.exists() else []
        with engine.connect() as conn:
            ids = {f"msg_{i}" for i in conn.execute(sa.select(deliveries_table.c.id)).scalars()}
            statuses = dict(conn.execute(sa.select(deliveries_table.c.status, sa.func.count())
                                         .group_by(deliveries_table.c.status)).all())
        engine.dispose()
        print(f"{args.workers} worker process(es) × concurrency {args.concurrency}: {done} deliveries in "
              f"{elapsed:.1f}s = {done / elapsed:.0f} deliveries/s")
        print(f"delivery rows by status: {statuses}")
        print(f"sink received {len(received)} requests, {len(set(received))} distinct ids; "
              f"missing {len(ids - set(received))}; duplicates {len(received) - len(set(received))}")


if __name__ == "__main__":
    main()
