"""trigger_many(): the same rows and guarantees as many trigger() calls, in one pass."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from support import OnlyRec, Welcome, count_rows, total_rows

from chimeway import Chimeway, TriggerRequest
from chimeway.errors import ParamsNotJSONError
from chimeway.testing import RecordingChannel


def test_batch_writes_every_trigger_and_reports_duplicates(any_engine: sa.Engine) -> None:
    rec = RecordingChannel()
    app = Chimeway(engine=any_engine, channels={"rec": rec})
    with Session(any_engine) as session, session.begin():
        earlier = app.trigger(session, OnlyRec, {"n": 0, "user": "user:0"}, idempotency_key="k-0")
    requests = [TriggerRequest(params={"n": i, "user": f"user:{i}"}, idempotency_key=f"k-{i}") for i in range(5)]
    requests.append(TriggerRequest(params={"n": 3, "user": "user:3"}, idempotency_key="k-3"))  # repeated in batch
    requests.append(TriggerRequest(params={"n": 1, "user": "user:1"}, idempotency_key="k-1", tenant="other"))
    with Session(any_engine) as session, session.begin():
        results = app.trigger_many(session, OnlyRec, requests)
    assert [r.duplicate for r in results] == [True, False, False, False, False, True, False]
    assert results[0].event_id == earlier.event_id and results[0].delivery_ids == earlier.delivery_ids
    assert results[5].event_id == results[3].event_id
    counts = count_rows(any_engine)
    assert counts["chimeway_events"] == 6  # k-0 .. k-4, plus k-1 in tenant "other"
    assert counts["chimeway_deliveries"] == 6
    assert sorted(m.fields["body"] for m in rec.sent) == ["n=0", "n=1", "n=1", "n=2", "n=3", "n=4"]


def test_a_bad_request_writes_nothing(any_engine: sa.Engine) -> None:
    app = Chimeway(engine=any_engine, channels={"rec": RecordingChannel()})
    requests = [TriggerRequest(params={"n": i}, idempotency_key=f"b-{i}") for i in range(3)]
    requests.append(TriggerRequest(params={"n": {1, 2}}, idempotency_key="b-bad"))
    with pytest.raises(ParamsNotJSONError, match=r"params\['n'\] is a set"), \
            Session(any_engine) as session, session.begin():
        app.trigger_many(session, OnlyRec, requests)
    assert total_rows(any_engine) == 0


def test_rollback_of_a_batch_leaves_nothing(any_engine: sa.Engine) -> None:
    rec = RecordingChannel()
    app = Chimeway(engine=any_engine, channels={"rec": rec})
    with Session(any_engine) as session:
        session.begin()
        app.trigger_many(session, Welcome, [TriggerRequest(params={"name": str(i), "users": [f"u:{i}"]},
                                                          idempotency_key=f"r-{i}") for i in range(20)])
        session.rollback()
    assert total_rows(any_engine) == 0 and rec.calls == []


def test_large_batches_are_chunked(sqlite_engine: sa.Engine) -> None:
    app = Chimeway(engine=sqlite_engine, dispatcher="queue", channels={"rec": RecordingChannel()})
    requests = [TriggerRequest(params={"n": i, "user": f"user:{i}"}, idempotency_key=f"c-{i}") for i in range(1200)]
    with Session(sqlite_engine) as session, session.begin():
        results = app.trigger_many(session, OnlyRec, requests)
    assert len(results) == 1200 and not any(r.duplicate for r in results)
    counts = count_rows(sqlite_engine)
    assert counts["chimeway_events"] == counts["chimeway_deliveries"] == counts["chimeway_jobs"] == 1200
