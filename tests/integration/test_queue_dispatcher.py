"""dispatcher="queue": jobs inserted in the caller's transaction, outcomes mapped onto jobs."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from support import OnlyRec, Welcome

from chimeway import Chimeway, DeliveryResult, Message
from chimeway.models import jobs_table
from chimeway.testing import FakeClock, RecordingChannel, all_enqueued, drain, refute_enqueued


def _jobs(engine: sa.Engine) -> list[tuple[str, str, int]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            sa.select(jobs_table.c.worker, jobs_table.c.state, jobs_table.c.attempt).order_by(jobs_table.c.id))]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_rollback_means_no_job_and_commit_means_delivered(any_engine: sa.Engine, clock: FakeClock) -> None:
    rec = RecordingChannel()
    app = Chimeway(engine=any_engine, dispatcher="queue", channels={"rec": rec}, clock=clock)
    with Session(any_engine) as session:
        session.begin()
        app.trigger(session, Welcome, {"name": "x"}, idempotency_key="rolled")
        session.rollback()
    refute_enqueued(app)
    with Session(any_engine) as session, session.begin():
        result = app.trigger(session, Welcome, {"name": "x"}, idempotency_key="kept")
    assert rec.calls == []  # nothing is sent until a worker runs
    assert sorted(job.args["delivery_id"] for job in all_enqueued(app, worker="chimeway.deliver")) == sorted(
        str(d) for d in result.delivery_ids)
    assert app.work() == 2
    assert [m.fields["body"] for m in rec.sent] == ["Welcome x"]
    assert {app.explain(d).status for d in result.delivery_ids} == {"succeeded"}
    assert app.inbox("user:1").unread_count() == 1
    assert [j[1] for j in _jobs(any_engine)] == ["completed", "completed"]
    # A second job for a delivery that is already final does nothing.
    with any_engine.begin() as conn:
        app.queue.enqueue(conn, "chimeway.deliver", {"delivery_id": str(result.delivery_ids[1])})
    assert drain(app, "chimeway_delivery").completed == 1
    assert len(rec.calls) == 1


def test_temporary_failures_retry_honouring_retry_after_then_exhaust(any_engine: sa.Engine, clock: FakeClock) -> None:
    def respond(message: Message) -> DeliveryResult:
        return DeliveryResult.temporary("HTTP 429", error_class="http_429", retry_after=600)

    rec = RecordingChannel(respond)
    app = Chimeway(engine=any_engine, dispatcher="queue", channels={"rec": rec}, clock=clock, max_attempts=3)
    with Session(any_engine) as session, session.begin():
        delivery_id = app.trigger(session, OnlyRec, {"n": 1}, idempotency_key="k").delivery_ids[0]
    assert app.work() == 1
    assert app.explain(delivery_id).status == "failed"
    assert _jobs(any_engine)[0][1] == "retryable"
    clock.advance(seconds=599)
    assert app.work() == 0  # Retry-After of 600 s is honoured
    clock.advance(seconds=2)
    assert app.work() == 1
    clock.advance(hours=1)
    assert app.work() == 1
    explanation = app.explain(delivery_id)
    assert explanation.status == "cancelled"
    assert explanation.reason == "retries_exhausted: HTTP 429"
    assert explanation.attempts == 3
    assert _jobs(any_engine)[0][1:] == ("completed", 3)


def test_permanent_failure_cancels_delivery_and_completes_job(sqlite_engine: sa.Engine, clock: FakeClock) -> None:
    rec = RecordingChannel(lambda m: DeliveryResult.permanent("HTTP 410: gone", error_class="http_410"))
    app = Chimeway(engine=sqlite_engine, dispatcher="queue", channels={"rec": rec}, clock=clock)
    with Session(sqlite_engine) as session, session.begin():
        delivery_id = app.trigger(session, OnlyRec, {"n": 1}, idempotency_key="k").delivery_ids[0]
    app.work()
    assert app.explain(delivery_id).status == "cancelled"
    assert app.explain(delivery_id).reason == "permanent: HTTP 410: gone"
    assert _jobs(sqlite_engine)[0][1] == "completed"


def test_recover_enqueues_jobs_for_left_behind_deliveries(sqlite_engine: sa.Engine, clock: FakeClock) -> None:
    rec = RecordingChannel()
    app = Chimeway(engine=sqlite_engine, dispatcher="queue", channels={"rec": rec}, clock=clock)
    with Session(sqlite_engine) as session, session.begin():
        app.trigger(session, OnlyRec, {"n": 1}, idempotency_key="left")
    with sqlite_engine.begin() as conn:
        conn.execute(sa.delete(jobs_table))  # the job is lost (e.g. deleted by hand)
    clock.advance(minutes=10)
    assert app.recover(older_than=timedelta(minutes=5)) == 1
    assert app.work() == 1
    assert len(rec.sent) == 1


def test_user_jobs_run_in_the_same_queue(sqlite_engine: sa.Engine, clock: FakeClock) -> None:
    app = Chimeway(engine=sqlite_engine, clock=clock)
    done: list[int] = []

    @app.job(queue="mailers", max_attempts=2)
    def send_receipt(order_id: int) -> None:
        done.append(order_id)

    with Session(sqlite_engine) as session, session.begin():
        send_receipt.enqueue(session, order_id=7)
        send_receipt.enqueue(session, order_id=8, schedule_in=60)
    assert app.work() == 1 and done == [7]
    clock.advance(seconds=61)
    assert app.work() == 1 and done == [7, 8]
