"""Enqueueing on PostgreSQL: the caller's transaction, racing unique inserts, NOTIFY at commit."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from chimeway.queue import JobQueue
from chimeway.queue.listener import conninfo

pytestmark = pytest.mark.postgres


def count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM chimeway_jobs")).scalar_one())


def test_rollback_after_enqueue_leaves_no_job(pg_engine: sa.Engine) -> None:
    q = JobQueue(pg_engine)
    ran: list[int] = []
    h = q.register(lambda n: ran.append(n), name="t")
    with Session(pg_engine) as session:
        session.begin()
        assert h.enqueue(session, n=1) is not None
        session.rollback()
    assert count(pg_engine) == 0
    with Session(pg_engine) as session, session.begin():
        h.enqueue(session, n=2)
    assert q.work() == 1
    assert ran == [2]


def test_ten_threads_racing_on_one_unique_key_make_one_job(pg_engine: sa.Engine) -> None:
    q = JobQueue(pg_engine)
    h = q.register(lambda account: None, name="sync", unique=("account",))
    barrier = threading.Barrier(10)
    results: list[int | None] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def racer() -> None:
        try:
            with pg_engine.begin() as conn:
                barrier.wait(10)
                job_id = h.enqueue(conn, account="acme")
                # Hold the transaction open so the others' inserts overlap it.
                time.sleep(0.1)
            with lock:
                results.append(job_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=racer) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(results) == 10
    assert len([r for r in results if r is not None]) == 1
    assert count(pg_engine) == 1


def test_notify_arrives_at_commit_once_per_queue(pg_engine: sa.Engine) -> None:
    q = JobQueue(pg_engine)
    q.declare_queue("mailers")
    with psycopg.connect(conninfo(pg_engine), autocommit=True) as listen:
        listen.execute("LISTEN chimeway_jobs")
        with pg_engine.connect() as conn:
            conn.begin()
            q.enqueue(conn, "a", {})
            q.enqueue(conn, "b", {})
            q.enqueue(conn, "c", {}, queue="mailers")
            assert list(listen.notifies(timeout=0.3)) == [], "nothing before commit"
            statements: list[str] = []
            sa.event.listen(conn, "before_cursor_execute",
                            lambda *a: statements.append(a[2]))
            q.enqueue(conn, "d", {})
            assert not any("pg_notify" in s for s in statements), "already notified this txn"
            conn.commit()
        payloads = [n.payload for n in listen.notifies(timeout=1.0, stop_after=2)]
        assert sorted(payloads) == ["default", "mailers"]


def test_notify_false_sends_nothing(pg_engine: sa.Engine) -> None:
    q = JobQueue(pg_engine, notify=False)
    with psycopg.connect(conninfo(pg_engine), autocommit=True) as listen:
        listen.execute("LISTEN chimeway_jobs")
        with pg_engine.begin() as conn:
            q.enqueue(conn, "a", {})
        assert list(listen.notifies(timeout=0.3)) == []
    assert count(pg_engine) == 1


def test_concurrent_claims_never_share_a_job(pg_engine: sa.Engine) -> None:
    q = JobQueue(pg_engine)
    with pg_engine.begin() as conn:
        q.insert_many(conn, [{"worker": "w", "args": {"n": i}} for i in range(500)])
    claimed: list[list[int]] = [[] for _ in range(8)]
    barrier = threading.Barrier(8)

    def claimer(slot: int) -> None:
        barrier.wait(10)
        while batch := q.claim("default", 7, f"claimer-{slot}"):
            claimed[slot].extend(j.info.id for j in batch)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = [i for ids in claimed for i in ids]
    assert len(every) == 500
    assert len(set(every)) == 500
    assert sum(1 for ids in claimed if ids) > 1


def test_bulk_insert_skips_unique_duplicates_within_and_across_batches(pg_engine: sa.Engine) -> None:
    q = JobQueue(pg_engine)
    h = q.register(lambda day: None, name="digest", unique=("day",))
    with pg_engine.begin() as conn:
        first = h.enqueue_many(conn, [{"day": "mon"}, {"day": "tue"}, {"day": "mon"}])
    with pg_engine.begin() as conn:
        second = h.enqueue_many(conn, [{"day": "tue"}, {"day": "wed"}])
    assert len(first) == 2
    assert len(second) == 1
    assert sorted(q.get(i).args["day"] for i in first + second) == ["mon", "tue", "wed"]
    assert count(pg_engine) == 3


def test_bulk_insert_keeps_every_column(pg_engine: sa.Engine) -> None:
    from datetime import UTC, datetime

    q = JobQueue(pg_engine)
    q.declare_queue("mailers")
    due = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    with pg_engine.begin() as conn:
        ids = q.insert_many(conn, [
            {"worker": "a", "args": {"nested": {"x": [1, 2.5, None, "s"]}}, "queue": "mailers",
             "priority": 3, "max_attempts": 4, "scheduled_at": due},
            {"worker": "b", "args": {}},
        ])
    a, b = (q.get(i) for i in ids)
    assert (a.worker, a.queue, a.state, a.priority, a.max_attempts, a.scheduled_at) == (
        "a", "mailers", "scheduled", 3, 4, due)
    assert a.args == {"nested": {"x": [1, 2.5, None, "s"]}}
    assert (a.meta, a.errors, a.attempt, a.unique_key) == ({}, [], 0, None)
    assert (b.worker, b.queue, b.state, b.max_attempts) == ("b", "default", "available", 20)
