"""Values the guides tell users to print read well: no dataclass dumps, no ``object at 0x``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy.orm import Session
from support import Welcome

from chimeway import Chimeway, JobInfo
from chimeway.testing import FakeClock, RecordingChannel

NOISE = re.compile(r"object at 0x|datetime\.datetime\(|UUID\(|Explanation\(|TimelineEntry\(")


@pytest.fixture
def app(tmp_path: Path) -> Chimeway:
    app = Chimeway(f"sqlite:///{tmp_path / 'c.db'}", channels={"rec": RecordingChannel()},
                   clock=FakeClock(), dispatcher="queue")
    app.migrate()
    return app


def test_trace_prints_the_event_and_each_explanation(app: Chimeway) -> None:
    with Session(app.engine) as session, session.begin():
        result = app.trigger(session, Welcome, {"name": "Ada", "users": ["user:1", "user:2"]},
                             idempotency_key="welcome-1", tenant="acme")
    app.work()
    trace = app.trace(result.event_id)
    text = str(trace)
    assert text.splitlines()[0] == f"event {result.event_id}  test_welcome  key=welcome-1  tenant=acme"
    assert len(trace.deliveries) == 4
    for delivery in trace.deliveries:
        assert str(delivery) in text
    assert not NOISE.search(text), text
    # No line ends in spaces (an entry without detail used to).
    assert all(line == line.rstrip() for line in text.splitlines())
    app.close()


def test_a_job_row_and_job_info_read_well(app: Chimeway) -> None:
    failing = app.job(lambda: 1 / 0, name="shop.divide")
    with Session(app.engine) as session, session.begin():
        job_id = failing.enqueue(session)
    app.queue.work(queues=["default"])
    job = app.queue.get(job_id)
    text = repr(job)
    assert not NOISE.search(text), text
    assert text.startswith(f"Job(id={job_id}, state='retryable', queue='default', worker='shop.divide'")
    assert "attempt=1/20" in text and "scheduled_at=2026-01-01T09:00:" in text
    assert "last_error='ZeroDivisionError: division by zero'" in text

    info = JobInfo(id=job.id, worker=job.worker, queue=job.queue, args={"n": 1}, attempt=1,
                   max_attempts=3, inserted_at=job.inserted_at, scheduled_at=job.scheduled_at)
    assert not NOISE.search(repr(info))
    assert "attempt=1/3" in repr(info) and "inserted_at=2026-01-01T09:00:00+00:00" in repr(info)
    app.close()


def test_inbox_items_read_well(app: Chimeway) -> None:
    with Session(app.engine) as session, session.begin():
        app.trigger(session, Welcome, {"name": "Ada"}, idempotency_key="welcome-2")
    app.work()
    [item] = app.inbox("user:1").list().items
    text = repr(item)
    assert not NOISE.search(text), text
    assert "title='Welcome Ada'" in text and "unread" in text
    assert "created_at=2026-01-01T09:00:00+00:00" in text
    app.close()
