"""A worker's claims and the outcomes it records, on PostgreSQL: what the hot path must keep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from chimeway.queue import JobQueue, NewJob, Snooze
from chimeway.testing import FakeClock

pytestmark = pytest.mark.postgres


def test_insert_many_returns_ids_in_the_order_of_its_jobs(pg_engine: sa.Engine) -> None:
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    q = JobQueue(pg_engine, clock=clock)
    h = q.register(lambda n, **_: None, name="each", unique=("n",))
    past, future = clock.now() - timedelta(hours=1), clock.now() + timedelta(hours=1)
    jobs = [
        NewJob(worker="each", args={"n": 1, "text": "zürich ☃", "big": 2**62}),
        NewJob(worker="each", args={"n": 2}, scheduled_at=past),
        NewJob(worker="each", args={"n": 1}),  # a unique duplicate of the first: skipped
        NewJob(worker="each", args={"n": 3, "nested": {"x": [1.5, None, True]}}, scheduled_at=future),
        NewJob(worker="other", args={"n": 4}, schedule_in=0),
    ]
    with pg_engine.begin() as conn:
        ids = q.insert_many(conn, jobs)
    rows = [q.get(i) for i in ids]
    assert [r.args["n"] for r in rows] == [1, 2, 3, 4]
    assert rows[0].args == {"n": 1, "text": "zürich ☃", "big": 2**62}
    assert rows[2].args["nested"] == {"x": [1.5, None, True]}
    assert [(r.state, r.scheduled_at) for r in rows] == [
        ("available", clock.now()), ("available", past), ("scheduled", future), ("available", clock.now())]
    assert all(r.inserted_at == clock.now() for r in rows)
    assert rows[0].unique_key is not None and rows[3].unique_key is None
    with pg_engine.begin() as conn:
        (added,) = h.enqueue_many(conn, [{"n": 2}, {"n": 5}])
    assert q.get(added).args == {"n": 5}


def test_failures_and_snoozes_extend_errors_and_meta_where_they_are(pg_engine: sa.Engine) -> None:
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    q = JobQueue(pg_engine, clock=clock, backoff=lambda attempt: 1.0)
    snoozes: list[int] = []

    def flaky(mode: str) -> None:
        if mode == "snooze" and len(snoozes) < 2:
            snoozes.append(1)
            # Someone else writes meta while the job runs: its outcome must not undo that.
            with pg_engine.begin() as conn:
                conn.execute(sa.text("UPDATE chimeway_jobs SET meta = meta || CAST(:m AS jsonb)"
                                     " WHERE id = :i"), {"m": f'{{"seen{len(snoozes)}": true}}', "i": snoozing})
            raise Snooze(1)
        raise ValueError(f"attempt failed ({mode})")

    q.register(flaky, name="flaky", max_attempts=3)
    with pg_engine.begin() as conn:
        failing, snoozing = q.insert_many(conn, [NewJob(worker="flaky", args={"mode": "fail"}),
                                                 NewJob(worker="flaky", args={"mode": "snooze"})])
        # Written by someone else while the job waits: a run must keep it.
        conn.execute(sa.text("UPDATE chimeway_jobs SET meta = '{\"owner\": \"ops\"}' WHERE id = :i"),
                     {"i": snoozing})
    for _ in range(6):
        q.work()
        clock.advance(timedelta(seconds=2))
    fail, snooze = q.get(failing), q.get(snoozing)
    assert (fail.state, fail.attempt) == ("discarded", 3)
    assert [(e["attempt"], e["error"]) for e in fail.errors] == [
        (n, "ValueError: attempt failed (fail)") for n in (1, 2, 3)]
    assert "flaky" in fail.errors[0]["traceback"]
    assert snooze.meta == {"owner": "ops", "seen1": True, "seen2": True, "snoozed": 2}
    assert (snooze.state, snooze.attempt) == ("discarded", 3)
    assert [e["attempt"] for e in snooze.errors] == [1, 2, 3]


def test_a_claimer_keeps_one_connection_and_replaces_a_broken_one(pg_engine: sa.Engine) -> None:
    q = JobQueue(pg_engine)
    with pg_engine.begin() as conn:
        q.insert_many(conn, [NewJob(worker="noop", args={"n": n}) for n in range(6)])
    by = q.new_worker_id()
    claims = q.claimer(by)
    backend = ("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
               " AND query LIKE 'WITH acked AS%'")
    try:
        first = claims.claim("default", 2)
        with pg_engine.connect() as conn:
            pids = set(conn.execute(sa.text(backend)).scalars())
        second = claims.claim("default", 2, acks=[j.info.id for j in first])
        with pg_engine.connect() as conn:
            assert set(conn.execute(sa.text(backend)).scalars()) == pids and len(pids) == 1
            conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pids.pop()})
        with pytest.raises(sa.exc.DBAPIError):
            claims.claim("default", 2, acks=[j.info.id for j in second])
        # The acks of the failed round trip were not written; the next one carries them.
        third = claims.claim("default", 2, acks=[j.info.id for j in second])
    finally:
        claims.close()
    assert len(third) == 2
    with pg_engine.connect() as conn:
        states = dict(conn.execute(sa.text("SELECT state, count(*) FROM chimeway_jobs GROUP BY state")).all())
    assert states == {"completed": 4, "executing": 2}
