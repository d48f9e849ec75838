"""Scheduling proofs on PostgreSQL with several processes: no leader, nothing twice, nothing lost."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sched_helpers import Procs
from sched_proc import SEC_TICKS_DDL, ProofAppointment, ProofBase, ProofOrder, build_app

from chimeway import Chimeway
from chimeway.db import create_engine

pytestmark = pytest.mark.postgres

ROWS = 10_000


def scalar(engine: sa.Engine, query: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(query)).scalar_one())


def finish(proc: subprocess.Popen[str], timeout: float = 1000) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


@pytest.fixture
def engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(pg_url, pool_size=10)
    ProofBase.metadata.create_all(engine)
    yield engine
    engine.dispose()


def add_due_appointments(engine: sa.Engine, count: int, *, cancelled: set[int] = frozenset()) -> None:  # type: ignore[assignment]
    soon = datetime.now(UTC) + timedelta(hours=2)
    with engine.begin() as conn:
        conn.execute(sa.insert(ProofAppointment), [
            {"id": i, "patient": f"p{i}", "starts_at": soon + timedelta(seconds=i), "cancelled": i in cancelled}
            for i in range(1, count + 1)
        ])


def test_two_processes_fire_each_of_ten_minutes_once(engine: sa.Engine, procs: Procs) -> None:
    go = time.time() + 3  # both processes start scheduling at the same instant
    runners = [procs.start("cron", "--go", str(go), "--minutes", "10", "--rounds", "3") for _ in range(2)]
    fired = [json.loads(finish(p)) for p in runners]
    start = datetime(2030, 1, 1, tzinfo=UTC)
    assert sorted(fired[0] + fired[1]) == [(start + timedelta(minutes=m)).isoformat() for m in range(10)]
    assert scalar(engine, "SELECT count(*) FROM chimeway_cron_ticks WHERE name = 'proof'") == 10
    assert scalar(engine, "SELECT count(*) FROM chimeway_jobs WHERE worker = 'test.tick'") == 10
    assert scalar(engine, "SELECT count(DISTINCT scheduled_at) FROM chimeway_jobs WHERE worker = 'test.tick'") == 10


def test_two_worker_processes_run_an_every_second_cron_once_per_tick(engine: sa.Engine, procs: Procs) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(SEC_TICKS_DDL))
    workers = [procs.start("worker", "--seconds", "6") for _ in range(2)]
    for proc in workers:
        finish(proc, timeout=60)
    ticks = scalar(engine, "SELECT count(*) FROM chimeway_cron_ticks WHERE name = 'every-second'")
    assert ticks >= 4
    assert scalar(engine, "SELECT count(*) FROM sec_ticks") == ticks
    assert scalar(engine, "SELECT count(DISTINCT tick) FROM sec_ticks") == ticks
    assert scalar(engine, "SELECT count(*) FROM chimeway_jobs WHERE worker = 'test.second'") == ticks


def assert_exactly_one_reminder_each(engine: sa.Engine, count: int) -> None:
    assert scalar(engine, "SELECT count(*) FROM chimeway_events") == count
    assert scalar(engine, "SELECT count(DISTINCT idempotency_key) FROM chimeway_events") == count
    assert scalar(engine, "SELECT count(*) FROM chimeway_notifications") == count
    assert scalar(engine, "SELECT count(*) FROM chimeway_deliveries") == count
    assert scalar(engine, "SELECT count(*) FROM chimeway_jobs WHERE worker = 'chimeway.deliver'") == count


@pytest.mark.timeout(1200)
def test_ten_thousand_due_rows_get_ten_thousand_reminders(engine: sa.Engine, procs: Procs) -> None:
    add_due_appointments(engine, ROWS)
    # Two scanners at once: every row is seen twice, notified once.
    scanners = [procs.start("scan", "--batch", "500") for _ in range(2)]
    results = [json.loads(finish(p)) for p in scanners]
    assert sum(r["triggered"] for r in results) == ROWS
    assert all(r["matched"] == ROWS and r["failed"] == 0 for r in results)
    assert_exactly_one_reminder_each(engine, ROWS)


@pytest.mark.timeout(1200)
def test_a_scanner_killed_halfway_and_restarted_sends_each_reminder_once(engine: sa.Engine, procs: Procs) -> None:
    add_due_appointments(engine, ROWS)
    first = procs.start("scan", "--batch", "200")
    deadline = time.monotonic() + 600
    while scalar(engine, "SELECT count(*) FROM chimeway_events") < ROWS // 2:
        assert first.poll() is None, first.communicate()[1]
        assert time.monotonic() < deadline, "the scanner made no progress"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    done_before = scalar(engine, "SELECT count(*) FROM chimeway_events")
    assert ROWS // 2 <= done_before < ROWS
    second = json.loads(finish(procs.start("scan", "--batch", "200")))
    assert second["triggered"] == ROWS - done_before
    assert second["already"] == done_before
    assert_exactly_one_reminder_each(engine, ROWS)


def test_rows_that_stop_matching_before_the_scan_get_nothing(engine: sa.Engine, pg_url: str) -> None:
    add_due_appointments(engine, 100, cancelled={10, 20})
    with engine.begin() as conn:
        conn.execute(sa.update(ProofAppointment).where(ProofAppointment.id.in_([30, 40]))
                     .values(cancelled=True))
    app: Chimeway = build_app(pg_url)
    try:
        result = app.scan_record_trigger("reminders")
        assert (result.matched, result.triggered) == (96, 96)
        with engine.connect() as conn:
            keys = set(conn.execute(sa.text("SELECT idempotency_key FROM chimeway_events")).scalars())
        assert not keys & {f"reminder:{i}" for i in (10, 20, 30, 40)}
        [status] = app.record_triggers_status()
        assert (status["matching"], status["pending"]) == (96, 0)
    finally:
        app.close()


@pytest.mark.timeout(300)
def test_an_action_trigger_runs_once_per_row_across_two_worker_processes(engine: sa.Engine, procs: Procs) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(ProofOrder), [{"id": i} for i in range(1, ROWS + 1)])
    # Two workers that start together; actions that only write to the
    # database, so one transaction per batch.
    workers = [procs.start("actions", "--together", "2", "--seconds", "120", "--no-isolate") for _ in range(2)]
    # The application holds the first 50 orders until their batch has passed
    # over them (SKIP LOCKED) and handed them to row jobs that look again later.
    handed = "SELECT count(*) FROM chimeway_jobs WHERE worker = 'chimeway.record_trigger.row'"
    with engine.begin() as conn:
        conn.execute(sa.select(ProofOrder.id).where(ProofOrder.id <= 50).with_for_update()).all()
        deadline = time.monotonic() + 60
        while scalar(engine, handed) == 0:
            assert time.monotonic() < deadline, "no batch reached the held rows"
            time.sleep(0.05)
    ran = [json.loads(finish(p, timeout=200))["ran"] for p in workers]
    assert scalar(engine, "SELECT count(*) FROM proof_orders WHERE processed AND runs = 1") == ROWS
    assert scalar(engine, "SELECT sum(runs) FROM proof_orders") == ROWS
    assert scalar(engine, "SELECT count(DISTINCT pid) FROM proof_orders") == 2  # both did their share
    assert scalar(engine, "SELECT count(*) FROM chimeway_jobs WHERE state <> 'completed'"
                          " AND queue = 'proof_process'") == 0
    # Pages of 500 rows went to batch jobs that both workers took from the queue;
    # rows held by the application when their batch ran were handed to row jobs.
    batches = "FROM chimeway_jobs WHERE worker = 'chimeway.record_trigger.rows'"
    assert scalar(engine, f"SELECT count(*) {batches}") == ROWS // 500
    assert scalar(engine, f"SELECT count(DISTINCT attempted_by) {batches}") == 2
    held = scalar(engine, handed)
    assert 0 < held <= 50
    # The on-demand trigger over the same rows never ran, nor was scanned.
    assert scalar(engine, "SELECT count(*) FROM chimeway_jobs WHERE args->>'trigger' = 'proof_on_demand'") == 0
    assert sum(ran) >= ROWS // 500 + held
