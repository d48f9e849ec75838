"""Listing jobs with filters, and retry, cancel and delete of many jobs at once."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from chimeway.errors import InvalidInputError
from chimeway.queue import JobFilter, JobQueue


def _fail(**_: Any) -> None:
    raise RuntimeError("nope")


def test_list_filters_by_queue_state_worker_args_and_pages_by_id(
    q: JobQueue, sqlite_engine: sa.Engine, clock: Any
) -> None:
    q.declare_queue("mailers")
    q.register(_fail, name="fails", queue="mailers", max_attempts=1)
    q.register(lambda **_: None, name="ok")
    with sqlite_engine.begin() as conn:
        ids = [q.enqueue(conn, "ok", {"order": f"order-{n}"}) for n in range(5)]
        failing = q.enqueue(conn, "fails", {"order": "order-99"})
    q.work()
    assert [j.id for j in q.list_jobs()] == [failing, *reversed(ids)]
    discarded = q.list_jobs(JobFilter(state="discarded"))
    assert [(j.id, j.queue, j.last_error) for j in discarded] == [(failing, "mailers", "RuntimeError: nope")]
    assert [j.id for j in q.list_jobs(JobFilter(queue="mailers", state="completed"))] == []
    assert [j.id for j in q.list_jobs(JobFilter(worker="ok"), limit=2)] == [ids[4], ids[3]]
    assert [j.id for j in q.list_jobs(JobFilter(worker="ok"), limit=2, before_id=ids[3])] == [ids[2], ids[1]]
    assert [j.id for j in q.list_jobs(JobFilter(args_text="order-3"))] == [ids[3]]
    assert q.list_jobs(JobFilter(args_text="100%_")) == []
    details = q.details(failing)
    assert details.errors[0]["error"] == "RuntimeError: nope" and "Traceback" in details.errors[0]["traceback"]
    with pytest.raises(InvalidInputError, match="state must be one of"):
        JobFilter(state="done")


def test_retry_cancel_and_delete_many(q: JobQueue, sqlite_engine: sa.Engine, clock: Any) -> None:
    q.register(_fail, name="fails", max_attempts=1)
    with sqlite_engine.begin() as conn:
        first = q.enqueue(conn, "fails", {}, unique_key="k")
    q.work()
    with sqlite_engine.begin() as conn:
        second = q.enqueue(conn, "fails", {}, unique_key="k")
        third = q.enqueue(conn, "fails", {"n": 3})
    q.work()
    assert {j.id for j in q.list_jobs(JobFilter(state="discarded"))} == {first, second, third}
    # Both holders of key "k" are discarded: only the newest comes back.
    assert q.retry_many(JobFilter(state="discarded")) == 2
    assert {j.id for j in q.list_jobs(JobFilter(state="available"))} == {second, third}
    with sqlite_engine.begin() as conn:
        conn.execute(sa.text("UPDATE chimeway_jobs SET state='executing' WHERE id=:id"), {"id": third})
    assert q.delete_many(JobFilter(ids=(second, third))) == 1  # not the executing one
    assert q.cancel_many(JobFilter(ids=(first, third))) == 1  # not the discarded one
    assert [(j.id, j.state) for j in q.list_jobs()] == [(third, "cancelled"), (first, "discarded")]
