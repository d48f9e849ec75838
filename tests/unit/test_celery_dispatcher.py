"""The Celery dispatcher's rules on SQLite, with Celery's in-memory broker and task bodies run in-process.

Real brokers and real worker processes are in tests/integration/test_celery.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from sqlalchemy.orm import Session

from chimeway import Chimeway, DeliveryResult, Notifier, Recipient
from chimeway.dispatch.celery import CeleryDispatcher
from chimeway.errors import ConfigurationError
from chimeway.models import cron_ticks_table, outbox_table
from chimeway.testing import FakeClock, RecordingChannel


class Ping(Notifier):
    key = "celery_unit_ping"
    channels = ["probe"]
    templates = {"probe": {"body": "ping {{ n }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"user:{i}") for i in range(int(params.get("fanout", 2)))]


class Harness:
    def __init__(self, url: str, *, broker: str = "memory://", answer: Any = None, **options: Any) -> None:
        self.queue = f"unit_{uuid.uuid4().hex[:8]}"
        self.celery = Celery("unit", broker=broker)
        self.clock = FakeClock()
        self.channel = RecordingChannel(answer) if answer is not None else RecordingChannel()
        self.dispatcher = CeleryDispatcher(self.celery, queue=self.queue, relay_queue=self.queue + "_relay",
                                           **options)
        self.app = Chimeway(url, dispatcher=self.dispatcher, clock=self.clock, channels={"probe": self.channel})

    def trigger(self, key: str, **params: Any) -> list[uuid.UUID]:
        with Session(self.app.engine) as session, session.begin():
            return list(self.app.trigger(session, Ping, {"n": 1, **params}, idempotency_key=key).delivery_ids)

    def published(self, queue: str | None = None) -> list[dict[str, Any]]:
        """Take every message off a queue: task name, id, args and ETA."""
        out = []
        with self.celery.connection_for_read() as conn:
            simple = conn.SimpleQueue(queue or self.queue)
            while True:
                try:
                    message = simple.get(timeout=0.05)
                except simple.Empty:
                    break
                headers = message.headers
                out.append({"task": headers["task"], "id": headers["id"], "args": message.payload[0],
                            "eta": headers.get("eta")})
                message.ack()
        return out

    def outbox(self) -> list[Any]:
        with self.app.engine.connect() as conn:
            return list(conn.execute(sa.select(outbox_table).order_by(outbox_table.c.due_at)).all())

    def run(self, task_id: str) -> str:
        return self.dispatcher.deliver(task_id, {"task_id": task_id, "worker": "unit@host"})


@pytest.fixture
def h(sqlite_url: str) -> Iterator[Harness]:
    harness = Harness(sqlite_url)
    yield harness
    harness.app.close()


def test_a_commit_publishes_one_task_per_delivery_with_the_delivery_id_as_task_id(h: Harness) -> None:
    ids = h.trigger("k1", fanout=3)
    messages = h.published()
    assert [(m["task"], m["id"], m["args"], m["eta"]) for m in messages] == [
        ("chimeway.deliver", str(i), [str(i)], None) for i in ids
    ]
    assert h.outbox() == []
    published = [t.detail for t in h.app.explain(ids[0]).timeline if t.event == "published"]
    assert published == [{"task_id": str(ids[0]), "by": "after_commit", "reason": "planned", "checkpoint": "celery"}]


def test_a_rollback_writes_no_outbox_row_and_publishes_nothing(h: Harness) -> None:
    with pytest.raises(RuntimeError), Session(h.app.engine) as session, session.begin():
        h.app.trigger(session, Ping, {"n": 1}, idempotency_key="gone")
        raise RuntimeError("rolled back")
    assert h.published() == [] and h.outbox() == []


def test_the_task_sends_once_however_often_it_is_delivered_and_explain_names_it(h: Harness) -> None:
    [first, _] = h.trigger("k1")
    assert h.run(str(first)) == "succeeded"
    assert h.run(str(first)) == "succeeded"          # a redelivered duplicate
    assert [m.delivery_id for m in h.channel.sent] == [first]
    picked = [t.detail for t in h.app.explain(first).timeline if t.event == "celery_task"]
    assert picked == [{"task_id": str(first), "worker": "unit@host", "checkpoint": "celery"}]


def test_a_temporary_failure_waits_in_the_outbox_until_its_retry_is_due(sqlite_url: str) -> None:
    answers = iter([DeliveryResult.temporary("HTTP 503"), DeliveryResult.ok()])
    h = Harness(sqlite_url, answer=lambda message: next(answers))
    [did] = h.trigger("k1", fanout=1)
    h.published()
    assert h.run(str(did)) == "failed"
    [row] = h.outbox()
    assert (row.reason, row.due_at) == ("retry", h.app.explain(did).timeline[-1].at + timedelta(seconds=15))
    assert h.dispatcher.relay_pass(jobs=False) == 0 and h.published() == []   # not due yet
    h.clock.advance(seconds=15)
    assert h.dispatcher.relay_pass(jobs=False) == 1
    [message] = h.published()
    assert message["id"] == str(did)
    assert h.run(str(did)) == "succeeded" and h.outbox() == []
    h.app.close()


def test_a_delivery_in_flight_elsewhere_comes_back_when_its_lease_would_run_out(h: Harness) -> None:
    [did] = h.trigger("k1", fanout=1)
    h.published()
    assert len(h.app.executor.claim([did])) == 1      # another process is sending it
    assert h.run(str(did)) == "in_flight"
    [row] = h.outbox()
    assert row.reason == "in_flight"
    assert row.due_at == h.clock.now() + h.app.executor.leases.ttl + timedelta(seconds=1)
    assert h.channel.sent == []


def test_a_send_whose_holder_died_is_published_again_by_the_rescue(h: Harness) -> None:
    [did] = h.trigger("k1", fanout=1)
    h.published()
    h.app.executor.claim([did])
    h.app.executor.leases.drop([did])                 # the holder dies: nobody extends the lease
    h.clock.advance(seconds=61)
    report = h.dispatcher.rescue_pass(jobs=False)
    assert (report.lease_expired, report.lost) == (1, 0)
    assert [m["id"] for m in h.published()] == [str(did)]
    assert h.run(str(did)) == "succeeded"
    events = [t.event for t in h.app.explain(did).timeline]
    assert events.index("lease_expired") < events.index("celery_task")


def test_a_delivery_whose_task_the_broker_lost_is_published_again_after_stale_after(sqlite_url: str) -> None:
    h = Harness(sqlite_url, stale_after=timedelta(minutes=5))
    [did] = h.trigger("k1", fanout=1)
    h.published()                                     # taken off the broker and never run
    h.clock.advance(minutes=4)
    assert h.dispatcher.rescue_pass(jobs=False).lost == 0
    h.clock.advance(minutes=2)
    assert h.dispatcher.rescue_pass(jobs=False).lost == 1
    assert [m["id"] for m in h.published()] == [str(did)]
    relayed = [t.detail for t in h.app.explain(did).timeline if t.event == "published"][-1]
    assert (relayed["by"], relayed["reason"]) == ("relay", "lost")
    h.app.close()


def test_a_broker_that_is_away_leaves_the_rows_for_the_relay(sqlite_url: str) -> None:
    down = Harness(sqlite_url, broker="redis://127.0.0.1:1/0")
    ids = down.trigger("k1")
    rows = down.outbox()
    assert sorted(r.delivery_id for r in rows) == sorted(ids)
    assert all(r.publish_failures == 1 and "Connection refused" in r.last_error for r in rows)
    up = Harness(sqlite_url)
    up.queue = down.queue
    up.dispatcher.queue = down.queue
    assert up.dispatcher.relay_pass(jobs=False) == 2
    assert sorted(m["id"] for m in up.published()) == sorted(str(i) for i in ids)
    assert up.outbox() == []
    relayed = [t.detail for t in up.app.explain(ids[0]).timeline if t.event == "published"]
    assert relayed == [{"task_id": str(ids[0]), "by": "relay", "reason": "planned", "failed_publishes": 1,
                        "checkpoint": "celery"}]
    down.app.close()
    up.app.close()


def test_quiet_hours_keep_a_delivery_in_the_outbox_not_in_the_broker(h: Harness) -> None:
    h.app.recipient_settings("user:0").set(timezone="UTC", quiet_hours=("00:00", "23:59"))
    [did] = h.trigger("k1", fanout=1)
    assert h.published() == []
    [row] = h.outbox()
    assert row.delivery_id == did and row.due_at > h.clock.now() + timedelta(hours=1)


def test_jobs_wake_run_jobs_tasks_after_commit_and_timers_get_an_eta(h: Harness) -> None:
    ran: list[int] = []

    @h.app.job(queue="mailers")
    def remember(n: int) -> None:
        ran.append(n)

    with Session(h.app.engine) as session, session.begin():
        remember.enqueue(session, n=1)
        remember.enqueue(session, n=2, schedule_in=0.5)
        remember.enqueue(session, n=3, schedule_in=3600)   # beyond the horizon: waits in the database
    wakes = h.published(h.queue + "_relay")
    assert [(w["task"], w["args"]) for w in wakes] == [("chimeway.run_jobs", ["mailers"])] * 2
    assert wakes[0]["eta"] is None and wakes[1]["eta"] is not None
    assert h.dispatcher.run_jobs("mailers") == 1 and ran == [1]
    with pytest.raises(RuntimeError), Session(h.app.engine) as session, session.begin():
        remember.enqueue(session, n=4)
        raise RuntimeError("rolled back")
    assert h.published(h.queue + "_relay") == []


def test_the_relay_fires_cron_ticks_once_per_tick(h: Harness) -> None:
    h.dispatcher.relay_pass()
    h.dispatcher.relay_pass()
    with h.app.engine.connect() as conn:
        ticks = conn.execute(sa.select(cron_ticks_table.c.name, cron_ticks_table.c.tick_at)).all()
    assert [name for name, _ in ticks] == ["chimeway.workflow.sweep"]
    assert any(w["args"] == ["chimeway_workflows"] for w in h.published(h.queue + "_relay"))


def test_beat_gets_the_relay_and_the_rescue(h: Harness) -> None:
    schedule = h.celery.conf.beat_schedule
    assert schedule["chimeway.relay"]["task"] == "chimeway.relay"
    assert schedule["chimeway.relay"]["options"]["queue"] == h.queue + "_relay"
    assert schedule["chimeway.rescue"]["schedule"] == 15.0   # lease_ttl / 4
    assert {"chimeway.deliver", "chimeway.relay", "chimeway.rescue", "chimeway.run_jobs"} <= set(h.celery.tasks)


@pytest.mark.parametrize(("options", "field"), [
    ({"relay_interval": 0}, "relay_interval"),
    ({"eta_horizon": -1}, "eta_horizon"),
    ({"stale_after": 5}, "stale_after"),
    ({"batch_size": 0}, "batch_size"),
    ({"prefix": ""}, "prefix"),
    ({"queue": ""}, "queue"),
])
def test_bad_options_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        CeleryDispatcher(Celery("bad", broker="memory://"), **options)


def test_it_needs_a_celery_app_and_serves_one_chimeway_app(sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError, match="celery_app"):
        CeleryDispatcher("redis://localhost")
    dispatcher = CeleryDispatcher(Celery("one", broker="memory://"))
    first = Chimeway(sqlite_url, dispatcher=dispatcher)
    with pytest.raises(ConfigurationError, match="already serves"):
        Chimeway(sqlite_url, dispatcher=dispatcher)
    first.close()
