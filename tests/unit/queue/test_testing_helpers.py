"""chimeway.testing's job helpers: Oban's assert_enqueued, perform_job, drain and inline mode."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from chimeway import Chimeway, Notifier, Recipient
from chimeway.errors import ConfigurationError, ParamsNotJSONError
from chimeway.queue import Cancel, JobEvent, JobInfo, Retry, Snooze
from chimeway.testing import (
    FakeClock,
    RecordingChannel,
    all_enqueued,
    assert_enqueued,
    drain,
    inline_jobs,
    perform_job,
    refute_enqueued,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(tmp_path: Path, clock: FakeClock) -> Iterator[Chimeway]:
    app = Chimeway(f"sqlite:///{tmp_path / 'jobs.db'}", clock=clock, dispatcher="queue",
                   channels={"email": RecordingChannel()})
    app.migrate()
    # A linear backoff keeps the schedules these tests assert on exact.
    app.queue.backoff = lambda attempt: 10.0 * attempt
    yield app
    app.close()


def job_states(app: Chimeway) -> list[tuple[str, str]]:
    with app.engine.connect() as conn:
        return [(r.worker, r.state) for r in conn.execute(sa.text(
            "SELECT worker, state FROM chimeway_jobs ORDER BY id"))]


# --- returning an outcome works like raising it ----------------------------------------


def test_a_returned_cancel_snooze_retry_or_error_works_like_raising_it(app: Chimeway) -> None:
    @app.job(name="outcome", max_attempts=3)
    def outcome(kind: str) -> Any:
        return {"cancel": Cancel("gone"), "snooze": Snooze(60), "retry": Retry("busy", after=300),
                "error": ValueError("bad row"), "value": {"sent": 2}}[kind]

    with Session(app.engine) as session, session.begin():
        ids = {kind: outcome.enqueue(session, kind=kind)
               for kind in ("cancel", "snooze", "retry", "error", "value")}
    start = app.clock.now()
    app.work()
    rows = {kind: app.queue.get(job_id) for kind, job_id in ids.items()}
    assert {kind: (row.state, row.attempt) for kind, row in rows.items()} == {
        "cancel": ("cancelled", 1), "snooze": ("scheduled", 0), "retry": ("retryable", 1),
        "error": ("retryable", 1), "value": ("completed", 1)}
    assert rows["cancel"].errors[-1]["error"] == "cancelled: gone"
    assert rows["snooze"].scheduled_at == start + timedelta(seconds=60)
    assert rows["retry"].scheduled_at == start + timedelta(seconds=300)
    assert rows["retry"].errors[-1]["error"] == "Retry: busy"
    assert rows["error"].errors[-1]["error"] == "ValueError: bad row"
    assert rows["error"].scheduled_at == start + timedelta(seconds=10)


# --- perform_job ------------------------------------------------------------------------


def test_perform_job_runs_the_function_as_a_worker_would_and_writes_nothing(app: Chimeway) -> None:
    seen: list[tuple[Any, JobInfo]] = []
    events: list[JobEvent] = []
    app.queue.on_event(events.append)

    @app.job(queue="default", max_attempts=4)
    def export(rows: Any, job: JobInfo) -> dict[str, int]:
        seen.append((rows, job))
        return {"exported": len(rows)}

    done = perform_job(app, export, {"rows": (1, 2, 3)})
    assert (done.state, done.value, done.error, done.exception) == ("completed", {"exported": 3}, None, None)
    rows, info = seen[0]
    assert rows == [1, 2, 3], "args travel through JSON, as from the table"
    assert (info.worker, info.queue, info.attempt, info.max_attempts) == (export.name, "default", 1, 4)
    assert [(e.kind, e.state) for e in events] == [("start", "executing"), ("stop", "completed")]
    assert job_states(app) == []


def test_perform_job_reports_each_outcome(app: Chimeway, clock: FakeClock) -> None:
    @app.job(name="flaky", max_attempts=3)
    def flaky(mode: str) -> Any:
        if mode == "raise":
            raise RuntimeError("provider down")
        if mode == "snooze":
            raise Snooze(30)
        return Cancel("customer left") if mode == "cancel" else Retry("later", after=120)

    failed = perform_job(app, "flaky", {"mode": "raise"})
    assert failed.state == "retryable" and failed.error == "RuntimeError: provider down"
    assert isinstance(failed.exception, RuntimeError)
    assert failed.scheduled_at == clock.now() + timedelta(seconds=10)
    last = perform_job(app, flaky, {"mode": "raise"}, attempt=3)
    assert last.state == "discarded"
    snoozed = perform_job(app, flaky, {"mode": "snooze"})
    assert (snoozed.state, snoozed.scheduled_at) == ("scheduled", clock.now() + timedelta(seconds=30))
    cancelled = perform_job(app, flaky, {"mode": "cancel"})
    assert (cancelled.state, cancelled.error) == ("cancelled", "customer left")
    retried = perform_job(app, flaky, {"mode": "retry"})
    assert (retried.state, retried.scheduled_at) == ("retryable", clock.now() + timedelta(seconds=120))


def test_perform_job_refuses_what_a_worker_could_not_run(app: Chimeway) -> None:
    def stranger() -> None: ...

    @app.job()
    def task(when: Any) -> None: ...

    with pytest.raises(ConfigurationError, match="not a job registered"):
        perform_job(app, stranger)
    with pytest.raises(ParamsNotJSONError, match=r"args\.when"):
        perform_job(app, task, {"when": app.clock.now()})


# --- assert_enqueued, refute_enqueued, all_enqueued -----------------------------------------


def test_assert_enqueued_matches_worker_args_queue_and_schedule(app: Chimeway) -> None:
    app.queue.declare_queue("mailers")

    @app.job(queue="mailers")
    def send_receipt(order_id: int, lines: Any = None) -> None: ...

    @app.job()
    def rebuild() -> None: ...

    with Session(app.engine) as session, session.begin():
        send_receipt.enqueue(session, order_id=7, lines={"count": 2, "sku": "A"})
        send_receipt.enqueue(session, order_id=8, schedule_in=timedelta(hours=1))

    job = assert_enqueued(app, worker=send_receipt, args={"order_id": 7})
    assert job.args == {"order_id": 7, "lines": {"count": 2, "sku": "A"}}
    assert_enqueued(app, worker=send_receipt.fn, args={"lines": {"sku": "A"}}, queue="mailers")
    assert_enqueued(app, worker=send_receipt.name, args={"order_id": 8}, scheduled_in=3600)
    assert_enqueued(app.queue, args={"order_id": 8}, scheduled_in=timedelta(minutes=60, seconds=0.5))
    refute_enqueued(app, worker=send_receipt, args={"order_id": 8}, scheduled_in=60)
    refute_enqueued(app, worker=send_receipt, args={"order_id": 9})
    refute_enqueued(app, worker=send_receipt, queue="default")
    refute_enqueued(app, worker=rebuild)
    assert [j.args["order_id"] for j in all_enqueued(app, worker=send_receipt)] == [7, 8]

    with pytest.raises(AssertionError) as missing:
        assert_enqueued(app, worker=send_receipt, args={"order_id": 9})
    assert "'args': {'order_id': 9}" in str(missing.value)
    assert "args={'order_id': 8}" in str(missing.value), "the message lists what is enqueued"
    with pytest.raises(AssertionError, match="expected no job"):
        refute_enqueued(app, worker=send_receipt)


def test_only_jobs_waiting_to_run_count_as_enqueued(app: Chimeway) -> None:
    @app.job()
    def once(n: int) -> None: ...

    with Session(app.engine) as session, session.begin():
        once.enqueue(session, n=1)
    assert_enqueued(app, worker=once)
    app.work()
    refute_enqueued(app, worker=once)
    assert all_enqueued(app) == []


def test_a_rolled_back_enqueue_leaves_nothing_to_assert(app: Chimeway) -> None:
    @app.job()
    def once(n: int) -> None: ...

    with Session(app.engine) as session:
        session.begin()
        once.enqueue(session, n=1)
        session.rollback()
    refute_enqueued(app, worker=once)


# --- drain ------------------------------------------------------------------------------


def test_drain_runs_scheduled_jobs_and_the_jobs_they_enqueue(app: Chimeway) -> None:
    ran: list[str] = []

    @app.job(name="child")
    def child(n: int) -> None:
        ran.append(f"child {n}")

    @app.job(name="parent")
    def parent() -> None:
        ran.append("parent")
        with Session(app.engine) as session, session.begin():
            child.enqueue(session, n=1, schedule_in=3600)

    with Session(app.engine) as session, session.begin():
        parent.enqueue(session, schedule_in=timedelta(days=1))

    assert drain(app, with_scheduled=False).ran == 0
    assert ran == []
    result = drain(app, "default")
    assert (result.completed, result.ran) == (2, 2)
    assert ran == ["parent", "child 1"]
    assert job_states(app) == [("parent", "completed"), ("child", "completed")]


def test_drain_runs_a_failing_or_snoozing_job_once_and_counts_it(app: Chimeway, clock: FakeClock) -> None:
    calls: list[str] = []

    @app.job(name="flaky", max_attempts=2)
    def flaky(mode: str) -> None:
        calls.append(mode)
        if mode == "fail":
            raise RuntimeError("down")
        raise Snooze(5)

    with Session(app.engine) as session, session.begin():
        flaky.enqueue(session, mode="fail")
        flaky.enqueue(session, mode="snooze")
    result = drain(app)
    assert (result.retryable, result.snoozed, result.ran) == (1, 1, 2)
    assert calls == ["fail", "snooze"]
    result = drain(app)                                  # the retry is the last attempt
    assert (result.discarded, result.snoozed) == (1, 1)
    assert job_states(app) == [("flaky", "discarded"), ("flaky", "scheduled")]


def test_drain_with_scheduled_up_to_a_time(app: Chimeway, clock: FakeClock) -> None:
    @app.job(name="later")
    def later(n: int) -> None: ...

    with Session(app.engine) as session, session.begin():
        for minutes in (10, 30):
            later.enqueue(session, n=minutes, schedule_in=timedelta(minutes=minutes))
    assert drain(app, with_scheduled=clock.now() + timedelta(minutes=15)).completed == 1
    assert [j.args for j in all_enqueued(app, worker=later)] == [{"n": 30}]


# --- inline mode --------------------------------------------------------------------------


class Welcome(Notifier):
    key = "testing_helpers.welcome"
    channels = ["email"]
    templates = {"email": {"subject": "Hi", "body": "Welcome"}}

    def recipients(self, params: Any) -> list[Recipient]:
        return [Recipient(id="user:1", email="one@example.com")]


def test_inline_jobs_run_the_users_jobs_right_after_commit(app: Chimeway) -> None:
    ran: list[int] = []

    @app.job(name="note")
    def note(n: int) -> None:
        ran.append(n)

    with inline_jobs(app):
        with Session(app.engine) as session, session.begin():
            note.enqueue(session, n=1)
            app.trigger(session, Welcome, {}, idempotency_key="welcome-1")
            assert ran == [], "nothing runs before the commit"
        assert ran == [1]
        with app.engine.begin() as conn:
            note.enqueue_many(conn, [{"n": 2}, {"n": 3}])
        assert ran == [1, 2, 3]
        with Session(app.engine) as session:
            session.begin()
            note.enqueue(session, n=4)
            session.rollback()
        with Session(app.engine) as session, session.begin():
            note.enqueue(session, n=5, schedule_in=60)
    assert ran == [1, 2, 3]
    assert job_states(app).count(("note", "completed")) == 3
    # The delivery's job is Chimeway's own: it waits for a worker.
    assert_enqueued(app, worker="chimeway.deliver")
    assert_enqueued(app, worker=note, args={"n": 5}, scheduled_in=60)

    with Session(app.engine) as session, session.begin():
        note.enqueue(session, n=6)
    assert ran == [1, 2, 3], "outside the block jobs wait again"


def test_an_inline_job_that_fails_is_left_as_a_worker_leaves_it(app: Chimeway) -> None:
    @app.job(name="boom", max_attempts=2)
    def boom() -> None:
        raise RuntimeError("no")

    with inline_jobs(app), Session(app.engine) as session, session.begin():
        job_id = boom.enqueue(session)
    assert job_id is not None
    row = app.queue.get(job_id)
    assert (row.state, row.attempt, row.errors[-1]["error"]) == ("retryable", 1, "RuntimeError: no")
    assert drain(app).discarded == 1
