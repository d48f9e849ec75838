"""Enqueueing: transactions, bad input (nothing written), unique jobs, bulk inserts."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from queue_unit_helpers import job_count
from sqlalchemy.orm import Session

from chimeway.errors import InvalidInputError, ParamsNotJSONError, UnknownQueueError
from chimeway.queue import JobQueue, NewJob
from chimeway.testing import assert_enqueued, refute_enqueued


def noop(**_: Any) -> None:
    pass


def test_enqueue_in_a_session_commits_with_it(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    h = q.register(noop, name="noop")
    with Session(sqlite_engine) as session, session.begin():
        job_id = h.enqueue(session, user_id=1)
    assert job_id is not None
    job = assert_enqueued(q, worker=h, args={"user_id": 1}, queue="default", scheduled_in=0)
    assert (job.id, job.state, job.args) == (job_id, "available", {"user_id": 1})


def test_rollback_leaves_no_job(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    h = q.register(noop, name="noop")
    with Session(sqlite_engine) as session:
        session.begin()
        h.enqueue(session, user_id=1)
        session.rollback()
    assert job_count(sqlite_engine) == 0
    refute_enqueued(q, worker=h)
    assert q.work() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"when": datetime(2030, 1, 1, tzinfo=UTC)}, "job args.when is a datetime"),
        ({"user": object()}, "job args.user is a object"),
        ({"nested": {"ids": [1, {2, 3}]}}, "job args.nested.ids[1] is a set"),
        ({"nested": {1: "x"}}, "job args.nested has key 1 of type int"),
        ({"ratio": math.nan}, "job args.ratio is nan"),
        ({"raw": b"bytes"}, "job args.raw is a bytes"),
    ],
)
def test_non_json_args_name_the_field_and_write_nothing(
    q: JobQueue, sqlite_engine: sa.Engine, args: dict[str, Any], message: str
) -> None:
    q.register(noop, name="noop")
    with sqlite_engine.begin() as conn, pytest.raises(ParamsNotJSONError, match=re.escape(message)):
        q.enqueue(conn, "noop", args)
    assert job_count(sqlite_engine) == 0


def test_bad_row_in_a_batch_writes_nothing(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    h = q.register(noop, name="noop")
    with sqlite_engine.begin() as conn, pytest.raises(ParamsNotJSONError, match=r"args.x"):
        h.enqueue_many(conn, [{"x": 1}, {"x": 2}, {"x": {3}}])
    assert job_count(sqlite_engine) == 0


def test_unknown_queue_is_refused(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    with sqlite_engine.begin() as conn, pytest.raises(UnknownQueueError, match="'mailers'"):
        q.enqueue(conn, "noop", {}, queue="mailers")
    with pytest.raises(UnknownQueueError):
        q.register(noop, name="noop", queue="mailers")
    assert job_count(sqlite_engine) == 0
    q.declare_queue("mailers")
    with sqlite_engine.begin() as conn:
        assert q.enqueue(conn, "noop", {}, queue="mailers") is not None


@pytest.mark.parametrize("bad", [0, -1])
def test_max_attempts_below_one_is_refused_at_register(q: JobQueue, bad: int) -> None:
    with pytest.raises(InvalidInputError, match="max_attempts"):
        q.register(noop, name="noop", max_attempts=bad)
    assert "noop" not in q.handles


def test_schedule_options_are_checked(q: JobQueue, sqlite_engine: sa.Engine, clock: Any) -> None:
    h = q.register(noop, name="noop")
    with sqlite_engine.begin() as conn:
        with pytest.raises(InvalidInputError, match="not both"):
            h.enqueue(conn, schedule_in=5, scheduled_at=clock.now())
        with pytest.raises(InvalidInputError, match="schedule_in"):
            h.enqueue(conn, schedule_in="soon")
    assert job_count(sqlite_engine) == 0


def test_schedule_in_makes_a_scheduled_job(q: JobQueue, sqlite_engine: sa.Engine, clock: Any) -> None:
    h = q.register(noop, name="noop")
    with sqlite_engine.begin() as conn:
        job_id = h.enqueue(conn, schedule_in=timedelta(minutes=5))
    assert job_id is not None
    row = q.get(job_id)
    assert row.state == "scheduled"
    assert row.scheduled_at == clock.now() + timedelta(minutes=5)
    assert q.work() == 0
    clock.advance(minutes=5)
    assert q.work() == 1


def test_a_job_parameter_cannot_be_shadowed_by_args(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    def task(job: Any) -> None:
        pass

    q.register(task, name="task")
    with sqlite_engine.begin() as conn, pytest.raises(InvalidInputError, match="'job'"):
        q.enqueue(conn, "task", {"job": 1})
    assert job_count(sqlite_engine) == 0


def test_unique_by_arg_names(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    h = q.register(noop, name="noop", unique=("user_id",))
    with sqlite_engine.begin() as conn:
        first = h.enqueue(conn, user_id=1, note="a")
        assert h.enqueue(conn, user_id=1, note="b") is None
        assert h.enqueue(conn, user_id=2, note="a") is not None
    assert first is not None
    assert job_count(sqlite_engine) == 2
    q.work()
    with sqlite_engine.begin() as conn:
        assert h.enqueue(conn, user_id=1, note="c") is not None, "unique only while active"


def test_unique_true_and_callable(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    every = q.register(noop, name="every", unique=True)
    by_day = q.register(noop, name="by_day",
                        unique=lambda a: None if a.get("force") else f"day:{a['day']}")
    with sqlite_engine.begin() as conn:
        assert every.enqueue(conn, a=1, b=2) is not None
        assert every.enqueue(conn, b=2, a=1) is None
        assert every.enqueue(conn, a=1, b=3) is not None
        assert by_day.enqueue(conn, day="mon", n=1) is not None
        assert by_day.enqueue(conn, day="mon", n=2) is None
        assert by_day.enqueue(conn, day="mon", force=True) is not None
        assert by_day.enqueue(conn, day="mon", force=True) is not None
        ids = by_day.enqueue_many(conn, [{"day": "tue"}, {"day": "tue"}, {"day": "mon"}])
    assert len(ids) == 1
    assert job_count(sqlite_engine) == 6


def test_unique_keys_differ_per_worker(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    a = q.register(noop, name="a", unique=True)
    b = q.register(noop, name="b", unique=True)
    with sqlite_engine.begin() as conn:
        assert a.enqueue(conn, x=1) is not None
        assert b.enqueue(conn, x=1) is not None


def test_enqueue_many_returns_ids_in_order(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    seen: list[int] = []
    h = q.register(lambda n: seen.append(n), name="t")
    with sqlite_engine.begin() as conn:
        ids = h.enqueue_many(conn, [{"n": i} for i in range(50)])
        assert h.enqueue_many(conn, []) == []
    assert len(ids) == 50
    assert [q.get(i).args["n"] for i in ids[:3]] == [0, 1, 2]
    assert q.work() == 50
    assert seen == list(range(50))


def test_insert_many_low_level(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    q.declare_queue("mailers")
    with sqlite_engine.begin() as conn:
        ids = q.insert_many(conn, [
            NewJob(worker="chimeway.deliver", args={"delivery_id": "d1"}, queue="chimeway_delivery"),
            {"worker": "send", "args": {"to": "x"}, "queue": "mailers", "priority": 3,
             "max_attempts": 5},
        ])
    rows = [q.get(i) for i in ids]
    assert [(r.queue, r.priority, r.max_attempts) for r in rows] == [
        ("chimeway_delivery", 0, 20), ("mailers", 3, 5)]


def test_register_rejects_a_different_function_under_a_taken_name(q: JobQueue) -> None:
    def a() -> None: ...
    def b() -> None: ...

    q.register(a, name="same")
    q.register(a, name="same")
    with pytest.raises(Exception, match="already registered"):
        q.register(b, name="same")


def test_default_name_is_module_and_qualname(q: JobQueue) -> None:
    h = q.register(noop)
    assert h.name == f"{__name__}.noop"
    assert q.job(queue="chimeway_signals")(noop).queue == "chimeway_signals"
