"""A process for the scheduling integration tests and benchmark.

Run as ``python sched_proc.py MODE URL [options]``:

- ``cron``: wait until ``--go`` (a Unix time), then call ``run_scheduler(now)``
  for ``--minutes`` simulated minutes from ``--start``; print the ticks fired.
- ``scan``: scan the ``reminders`` record trigger once; print the result.
- ``worker``: run a worker (with its scheduler) for ``--seconds`` seconds; an
  every-second cron job records each tick it runs in ``sec_ticks``.
- ``actions``: once ``--together`` such processes are ready, run a worker for the ``proof_process`` action
  trigger (every second, ``lock_for_update``) until no row is left to process
  (at most ``--seconds``; ``--no-isolate``: ``isolate_rows=False``); an
  on-demand trigger on the same rows must never run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from chimeway import Chimeway, Notifier, Recipient
from chimeway.db import create_engine, writer
from chimeway.queue import JobInfo

SEC_TICKS_DDL = "CREATE TABLE IF NOT EXISTS sec_ticks (tick TEXT NOT NULL, pid INTEGER NOT NULL)"


class ProofBase(DeclarativeBase):
    """The application's tables in these proofs."""


class ProofAppointment(ProofBase):
    __tablename__ = "proof_appointments"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient: Mapped[str] = mapped_column(sa.String(50))
    starts_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    cancelled: Mapped[bool] = mapped_column(default=False)


class ProofReminder(Notifier):
    key = "proof_reminder"
    channels = ["in_app"]
    templates = {"in_app": {"title": "Reminder", "body": "Appointment {{ appointment }} at {{ starts_at }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"patient:{params['patient']}")]


class ProofOrder(ProofBase):
    __tablename__ = "proof_orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    processed: Mapped[bool] = mapped_column(default=False)
    runs: Mapped[int] = mapped_column(default=0)
    pid: Mapped[int | None] = mapped_column(default=None)


class ProofGate(ProofBase):
    """Worker processes sign in here and start once all of them have."""

    __tablename__ = "proof_gate"

    pid: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)


def process_order(order: ProofOrder) -> None:
    order.runs += 1
    order.processed = True
    order.pid = os.getpid()


def never(order: ProofOrder) -> None:
    raise AssertionError("an on-demand trigger ran by itself")


def build_action_app(url: str, *, isolate_rows: bool = True) -> Chimeway:
    """The AshOban-style proof: an action per unprocessed order, and an on-demand trigger."""
    engine = create_engine(url, pool_size=12, max_overflow=4, pool_pre_ping=True)
    app = Chimeway(engine=engine, dispatcher="queue")
    app.scheduler.remove("chimeway.workflow.sweep")
    app.record_trigger("proof_process", model=ProofOrder, where=ProofOrder.processed.is_(False),
                       action=process_order, lock_for_update=True, cron="* * * * * *", batch_size=500,
                       isolate_rows=isolate_rows)
    app.record_trigger("proof_on_demand", model=ProofOrder, action=never, cron=None)
    return app


def build_app(url: str, *, dispatcher: str = "queue", batch_size: int = 500, slow: float = 0.0,
              concurrency: int = 1) -> Chimeway:
    """The proofs' app: a 24-hour reminder trigger over ``proof_appointments``."""
    engine = create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
    app = Chimeway(engine=engine, dispatcher=dispatcher)
    app.scheduler.remove("chimeway.workflow.sweep")

    def where(now: datetime) -> Any:
        return sa.and_(
            ProofAppointment.cancelled.is_(False),
            ProofAppointment.starts_at > now,
            ProofAppointment.starts_at <= now + timedelta(hours=24),
        )

    def params(a: ProofAppointment) -> dict[str, Any]:
        if slow:
            time.sleep(slow)
        return {"patient": a.patient, "appointment": a.id, "starts_at": a.starts_at.isoformat()}

    app.record_trigger("reminders", model=ProofAppointment, where=where, notifier=ProofReminder,
                       params=params, idempotency_key=lambda a: f"reminder:{a.id}", batch_size=batch_size,
                       concurrency=concurrency)
    return app


def run_cron(ns: argparse.Namespace) -> None:
    app = build_app(ns.url)
    app.cron("* * * * *", "test.tick", name="proof")
    start = datetime.fromisoformat(ns.start)
    while time.time() < ns.go:
        time.sleep(0.001)
    fired = []
    for _ in range(ns.rounds):
        for minute in range(ns.minutes):
            fired += [t.at.isoformat() for t in app.run_scheduler(start + timedelta(minutes=minute))
                      if t.name == "proof"]
    print(json.dumps(fired), flush=True)


def run_scan(ns: argparse.Namespace) -> None:
    app = build_app(ns.url, batch_size=ns.batch, slow=ns.slow, concurrency=ns.concurrency)
    started = time.perf_counter()
    result = app.scan_record_trigger("reminders")
    elapsed = time.perf_counter() - started
    print(json.dumps({"triggered": result.triggered, "already": result.already, "matched": result.matched,
                      "failed": result.failed, "seconds": elapsed}), flush=True)


def run_worker(ns: argparse.Namespace) -> None:
    app = build_app(ns.url)
    side = writer(app.engine)
    pid = os.getpid()

    def second(job: JobInfo) -> None:
        with side.begin() as conn:
            conn.execute(sa.text("INSERT INTO sec_ticks (tick, pid) VALUES (:t, :p)"),
                         {"t": job.scheduled_at.isoformat(), "p": pid})

    handle = app.queue.register(second, name="test.second")
    app.cron("* * * * * *", handle, name="every-second")
    stop = threading.Event()
    threading.Timer(ns.seconds, stop.set).start()
    app.queue.run_worker(queues={"default": 4}, poll_interval=0.2, stop_event=stop)


def run_actions(ns: argparse.Namespace) -> None:
    app = build_action_app(ns.url, isolate_rows=not ns.no_isolate)
    stop = threading.Event()
    pending = sa.text(
        "SELECT (SELECT count(*) FROM proof_orders WHERE NOT processed)"
        " + (SELECT count(*) FROM chimeway_jobs WHERE state IN ('available', 'scheduled', 'executing', 'retryable')"
        " AND queue = 'proof_process')")

    def watch() -> None:
        deadline = time.monotonic() + ns.seconds
        time.sleep(1.0)
        while not stop.is_set() and time.monotonic() < deadline:
            with app.engine.connect() as conn:
                if conn.execute(pending).scalar() == 0:
                    break
            time.sleep(0.1)
        stop.set()

    # Start together with the others: each signs in, then waits for all of them.
    with app.engine.begin() as conn:
        conn.execute(sa.insert(ProofGate).values(pid=os.getpid()))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with app.engine.connect() as conn:
            if conn.execute(sa.text("SELECT count(*) FROM proof_gate")).scalar_one() >= ns.together:
                break
        time.sleep(0.01)
    threading.Thread(target=watch, daemon=True).start()
    ran = app.queue.run_worker(queues={"proof_process": 8}, poll_interval=0.1, stop_event=stop)
    print(json.dumps({"ran": ran}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["cron", "scan", "worker", "actions"])
    parser.add_argument("url")
    parser.add_argument("--start", default="2030-01-01T00:00:00+00:00")
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--go", type=float, default=0.0)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--together", type=int, default=1, help="actions: start once this many are ready")
    parser.add_argument("--no-isolate", action="store_true",
                        help="actions: isolate_rows=False (no savepoint per row)")
    ns = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format=f"[{ns.mode} {os.getpid()}] %(message)s")
    {"cron": run_cron, "scan": run_scan, "worker": run_worker, "actions": run_actions}[ns.mode](ns)


if __name__ == "__main__":
    main()
