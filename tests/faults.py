"""Fault proofs for deliveries: real worker processes, a real receiver, real faults.

Shared by ``tests/integration/test_durability.py`` and
``tests/bench/durability_bench.py``. A run plans N webhook deliveries with the
queue dispatcher, starts worker processes (``tests/fault_worker.py``) that
send them to a :class:`Receiver` on 127.0.0.1, injects one fault mid-run —

- ``sigkill``: ``kill -9`` a worker while it is sending;
- ``db_restart``: ``pg_ctl restart -m immediate`` of the (throwaway) cluster;
- ``sigterm_slow``: SIGTERM while sends outlast the shutdown grace, then
  ``kill -9`` (what a supervisor does once its stop timeout passes);

— and waits until every delivery is final. The :class:`Report` counts what
was lost (planned but never received, or not ``succeeded``) and what the
receiver saw twice (at-least-once: the same ``webhook-id`` both times).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from spooled import Spooled
from sqlalchemy.orm import Session

from chimeway import Chimeway, Notifier, Recipient
from chimeway.channels import Webhook
from chimeway.db import create_engine
from chimeway.models import deliveries_table, metadata
from chimeway.planning import TriggerRequest

SECRET = "whsec_" + "ZmF1bHQtcHJvb2YtZmF1bHQtcHJvb2Y="
FANOUT = 10
WORKER = Path(__file__).with_name("fault_worker.py")


class FaultHook(Notifier):
    key = "fault_proof_hook"
    channels = ["webhook"]
    templates = {"webhook": {"body": "event {{ n }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"user:{params['n']}:{i}") for i in range(FANOUT)]


def make_app(url: str, receiver: str, *, lease: float, pool: int = 10) -> Chimeway:
    """The app every process of a run builds: webhook to ``receiver``, queue dispatcher."""
    engine = create_engine(url, pool_size=pool, max_overflow=20, pool_pre_ping=True)
    return Chimeway(engine=engine, dispatcher="queue", lease_ttl=_seconds(lease),
                    channels={"webhook": Webhook(url=receiver, secret=SECRET, timeout=30.0)})


def _seconds(value: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=value)


# --- the receiver ----------------------------------------------------------------------------


class Receiver:
    """A webhook sink on 127.0.0.1 counting each ``webhook-id`` it receives.

    Args:
        delay: seconds each request takes to answer (sends stay in flight).
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                message_id = self.headers.get("webhook-id", "")
                with receiver._lock:
                    receiver.counts[message_id.removeprefix("msg_")] += 1
                if receiver.delay:
                    time.sleep(receiver.delay)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False
            request_queue_size = 512

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a killed worker resets its connections: expected here

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    def received(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- a throwaway PostgreSQL cluster we may restart -----------------------------------------------


class Cluster:
    """A PostgreSQL cluster of its own, started from the installed binaries.

    Raises ``RuntimeError`` when no binaries (or, as root, no ``postgres``
    user to run them as) are available.
    """

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        pg_ctl = str(bins[-1]) if bins else shutil.which("pg_ctl")
        if not pg_ctl:
            raise RuntimeError("no pg_ctl found: PostgreSQL binaries are not installed")
        self.pg_ctl = pg_ctl
        self.bindir = os.path.dirname(pg_ctl)
        self.datadir = tempfile.mkdtemp(prefix="chimeway-fault-pg-")
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            if not shutil.which("runuser"):
                raise RuntimeError("running as root without runuser: cannot start PostgreSQL")
            shutil.chown(self.datadir, "postgres")
            self.run_as = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        subprocess.run([*self.run_as, os.path.join(self.bindir, "initdb"), "-D", self.datadir, "-U", "postgres",
                        "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
        self._ctl("start")
        self.server = f"postgresql://postgres@127.0.0.1:{self.port}"
        with psycopg.connect(self.server + "/postgres", autocommit=True) as admin:
            admin.execute("CREATE DATABASE faults")
        self.url = self.server + "/faults"

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.datadir} -c fsync=off -c max_connections=200"
        subprocess.run([*self.run_as, self.pg_ctl, "-D", self.datadir, "-o", options, "-w", *extra, action,
                        "-l", os.path.join(self.datadir, "log")], check=True, capture_output=True)

    def restart_immediate(self) -> None:
        """Crash-restart the server: every connection dies, nothing shuts down cleanly."""
        self._ctl("restart", "-m", "immediate")

    def stop(self) -> None:
        subprocess.run([*self.run_as, self.pg_ctl, "-D", self.datadir, "-m", "immediate", "stop"],
                       capture_output=True, check=False)
        shutil.rmtree(self.datadir, ignore_errors=True)


# --- a run ---------------------------------------------------------------------------------------


@dataclass
class Report:
    """What a fault run ended with."""

    fault: str
    planned: int
    lost: int
    duplicated: int
    recovered_s: float
    in_flight_at_fault: int
    statuses: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return (f"{self.fault}: lost {self.lost}, duplicated {self.duplicated}, recovered in "
                f"{self.recovered_s:.1f} s ({self.planned} deliveries, {self.in_flight_at_fault} in flight "
                "at the fault)")


def plan(url: str, receiver: str, deliveries: int) -> list[str]:
    """Create the schema and commit ``deliveries`` webhook deliveries; returns their ids."""
    engine = create_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    app = make_app(url, receiver, lease=60)
    ids: list[str] = []
    requests = [TriggerRequest(params={"n": n}, idempotency_key=f"fault-{n}")
                for n in range(deliveries // FANOUT)]
    for start in range(0, len(requests), 200):
        with Session(app.engine) as session, session.begin():
            for result in app.trigger_many(session, FaultHook, requests[start:start + 200]):
                ids += [str(i) for i in result.delivery_ids]
    app.close()
    return ids


def start_worker(url: str, receiver: str, *, lease: float, concurrency: int = 50, grace: float = 15.0,
                 stale_after: float = 3.0) -> Spooled:
    # Spooled, not a pipe: after a database restart every retried job logs a
    # traceback, and a full pipe nobody reads would stall the worker.
    return Spooled(
        [sys.executable, str(WORKER), url, receiver, "--lease", str(lease), "--concurrency", str(concurrency),
         "--grace", str(grace), "--stale-after", str(stale_after)],
    )


def statuses(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            d = deliveries_table
            return {str(s): int(n) for s, n in conn.execute(
                sa.select(d.c.status, sa.func.count()).group_by(d.c.status))}
    finally:
        engine.dispose()


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def run(fault: str, url: str, *, deliveries: int = 1000, lease: float = 2.0, cluster: Cluster | None = None,
        workers: int = 1, concurrency: int = 50, delay: float = 0.02, timeout: float = 180.0) -> Report:
    """Plan, start workers, inject ``fault`` a third of the way in, and wait until every delivery is final.

    With one worker, a killed worker is replaced by a fresh one; with more,
    the survivors must finish the work by themselves.
    """
    slow = fault == "sigterm_slow"
    receiver = Receiver(delay=3.0 if slow else delay)
    procs: list[Spooled] = []
    try:
        ids = plan(url, receiver.url, deliveries)
        first = start_worker(url, receiver.url, lease=lease, grace=1.0 if slow else 15.0, concurrency=concurrency)
        procs.append(first)
        procs += [start_worker(url, receiver.url, lease=lease, concurrency=concurrency) for _ in range(workers - 1)]
        wait_for(lambda: receiver.received() >= (20 if slow else deliveries // 3), 120, "the first sends")
        in_flight = statuses(url).get("dispatched", 0)
        started = time.monotonic()
        if fault == "sigkill":
            first.kill()
            first.wait(30)
            if workers == 1:
                procs.append(start_worker(url, receiver.url, lease=lease, concurrency=concurrency))
        elif fault == "db_restart":
            assert cluster is not None, "db_restart needs a cluster of its own"
            cluster.restart_immediate()
        elif fault == "sigterm_slow":
            first.send_signal(signal.SIGTERM)
            time.sleep(1.5)  # past the 1 s grace, while the 3 s sends are still in flight
            first.kill()
            first.wait(30)
            receiver.delay = delay
            if workers == 1:
                procs.append(start_worker(url, receiver.url, lease=lease, concurrency=concurrency))
        else:
            raise ValueError(f"unknown fault {fault!r}")
        try:
            wait_for(lambda: set(statuses(url)) <= {"succeeded", "cancelled", "suppressed"}, timeout,
                     "every delivery to be final")
        except TimeoutError as exc:
            logs = "\n".join(f"--- worker {p.pid} (exit {p.poll()}) stderr, last 3000 characters:\n"
                             f"{p.stderr_text()[-3000:]}" for p in procs)
            raise TimeoutError(f"{exc}; statuses {statuses(url)}\n{logs}") from None
        recovered = time.monotonic() - started
        final = statuses(url)
        seen = receiver.snapshot()
        lost = sum(1 for i in ids if seen[i] == 0) + sum(n for s, n in final.items() if s != "succeeded")
        duplicated = sum(n - 1 for i, n in seen.items() if n > 1)
        return Report(fault=fault, planned=len(ids), lost=lost, duplicated=duplicated, recovered_s=recovered,
                      in_flight_at_fault=in_flight, statuses=final)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        receiver.close()
