"""Many callers on one idempotency key, on a real PostgreSQL."""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from support import Welcome, count_rows

from chimeway import Chimeway
from chimeway.testing import RecordingChannel


def test_ten_threads_triggering_one_key_make_one_event(pg_engine: sa.Engine) -> None:
    rec = RecordingChannel()
    app = Chimeway(engine=pg_engine, channels={"rec": rec})
    barrier = threading.Barrier(10)
    results = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with Session(pg_engine) as session, session.begin():
                session.connection()  # open the transaction before racing
                barrier.wait()
                results.append(app.trigger(session, Welcome, {"name": "t", "users": ["user:1", "user:2"]},
                                           idempotency_key="same-key", tenant="acme"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 10
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.event_id for r in results}) == 1
    assert len({r.delivery_ids for r in results}) == 1
    counts = count_rows(pg_engine)
    assert counts["chimeway_events"] == 1
    assert counts["chimeway_notifications"] == 2
    assert counts["chimeway_deliveries"] == 4
    assert len(rec.sent) == 2  # one rec delivery per recipient, sent once


def test_ten_threads_racing_one_key_with_different_payloads_make_one_event_and_nine_conflicts(
        pg_engine: sa.Engine) -> None:
    from chimeway.errors import IdempotencyConflictError

    app = Chimeway(engine=pg_engine, channels={"rec": RecordingChannel()})
    barrier = threading.Barrier(10)
    results: list[Any] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with Session(pg_engine) as session, session.begin():
                session.connection()
                barrier.wait()
                results.append(app.trigger(session, Welcome, {"name": f"t{i}", "users": ["user:1"]},
                                           idempotency_key="raced-key", tenant="acme"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1 and not results[0].duplicate
    assert len(errors) == 9 and all(isinstance(e, IdempotencyConflictError) for e in errors)
    assert count_rows(pg_engine)["chimeway_events"] == 1
