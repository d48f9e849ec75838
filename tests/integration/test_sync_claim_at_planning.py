"""The ``sync`` dispatcher writes what it will send already claimed: no claim statement, same message."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from plans import captured
from sqlalchemy.orm import Session

from chimeway import Chimeway, DeliveryResult, Message, Notifier, Recipient
from chimeway.models import deliveries_table
from chimeway.testing import FakeClock, RecordingChannel


class Shaped(Notifier):
    key = "test_shaped"
    channels = ["rec"]

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id="user:7", email="u7@example.test", data={"tags": ("a", "b"), "n": 1})]

    def build(self, params: Mapping[str, Any], recipient: Recipient, channel: str) -> dict[str, Any]:
        return {"body": "hi", "items": (1, 2), "nested": {"k": (True, None)}}


def test_a_sync_trigger_inserts_its_deliveries_claimed_and_updates_none_before_the_send(
        any_engine: sa.Engine) -> None:
    rec = RecordingChannel()
    app = Chimeway(engine=any_engine, channels={"rec": rec})
    with captured(any_engine) as seen, Session(app.engine) as session, session.begin():
        did = app.trigger(session, Shaped, {}, idempotency_key="claimed-at-planning").delivery_ids[0]
        row = session.execute(sa.select(deliveries_table).where(deliveries_table.c.id == did)).one()
        in_trigger = [" ".join(statement.split()).upper() for statement, _ in seen]
    assert (row.status, row.attempts, row.lease_holder) == ("dispatched", 1, app.executor.leases.holder)
    assert row.dispatched_at is not None and row.lease_expires_at > row.dispatched_at
    updates = [s for s in in_trigger if s.startswith("UPDATE") and "CHIMEWAY_DELIVERIES" in s]
    assert updates == [], updates
    assert app.explain(did).status == "succeeded"
    assert [m.delivery_id for m in rec.sent] == [did]


def test_the_message_sent_from_the_plan_is_the_one_the_stored_row_gives(any_engine: sa.Engine) -> None:
    rec = RecordingChannel()
    app = Chimeway(engine=any_engine, channels={"rec": rec})
    with Session(app.engine) as session, session.begin():
        from_plan = app.trigger(session, Shaped, {}, idempotency_key="from-plan").delivery_ids[0]
    # Inside a savepoint: claimed, and read back, after the commit.
    with Session(app.engine) as session, session.begin(), session.begin_nested():
        from_row = app.trigger(session, Shaped, {}, idempotency_key="from-row").delivery_ids[0]
    (planned, stored) = rec.sent
    assert (planned.delivery_id, stored.delivery_id) == (from_plan, from_row)
    assert planned.fields == stored.fields == {"body": "hi", "items": [1, 2], "nested": {"k": [True, None]}}
    assert planned.recipient == stored.recipient
    assert planned.recipient.data == {"tags": ["a", "b"], "n": 1}
    assert (planned.attempt, planned.tenant, planned.notifier_key) == (stored.attempt, stored.tenant, "test_shaped")
    assert planned.created_at is not None and stored.created_at is not None


def test_a_rolled_back_sync_trigger_leaves_no_claimed_row(any_engine: sa.Engine) -> None:
    rec = RecordingChannel()
    app = Chimeway(engine=any_engine, channels={"rec": rec})
    with Session(app.engine) as session, session.begin():
        app.trigger(session, Shaped, {}, idempotency_key="rolled-back")
        session.rollback()
    with any_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(deliveries_table)).scalar_one() == 0
    assert rec.sent == []


def test_a_transaction_held_open_past_half_a_lease_gets_its_leases_extended_before_the_send(
        any_engine: sa.Engine) -> None:
    clock = FakeClock()
    d = deliveries_table

    def lease_during_send(message: Message) -> DeliveryResult:
        with any_engine.connect() as conn:
            leases.append(conn.execute(sa.select(d.c.lease_expires_at).where(d.c.id == message.delivery_id))
                          .scalar_one())
        return DeliveryResult.ok()

    leases: list[datetime] = []
    rec = RecordingChannel(lease_during_send)
    app = Chimeway(engine=any_engine, clock=clock, channels={"rec": rec}, lease_ttl=timedelta(seconds=60))
    with Session(app.engine) as session, session.begin():
        planned_at = clock.now()
        quick = app.trigger(session, Shaped, {}, idempotency_key="quick").delivery_ids[0]
    with Session(app.engine) as session, session.begin():
        slow = app.trigger(session, Shaped, {}, idempotency_key="slow").delivery_ids[0]
        clock.advance(seconds=45)  # the caller keeps its transaction open for three quarters of the lease
        sent_at = clock.now()
    # Sent at once: the lease taken at planning stands. Sent 45 s later: a
    # lease left as planned would run out 15 s into the send, and another
    # process could send it again; it is pushed out to a whole lease first.
    assert leases == [planned_at + timedelta(seconds=60), sent_at + timedelta(seconds=60)]
    assert [m.delivery_id for m in rec.sent] == [quick, slow]
