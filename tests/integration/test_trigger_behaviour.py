"""trigger(), sync delivery, idempotency and rollback: the same on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from support import OnlyRec, Welcome, count_rows, total_rows

from chimeway import Chimeway, DeliveryResult
from chimeway.models import deliveries_table, events_table, notifications_table
from chimeway.testing import RecordingChannel


@pytest.fixture
def rec() -> RecordingChannel:
    return RecordingChannel()


@pytest.fixture
def app(any_engine: sa.Engine, rec: RecordingChannel) -> Iterator[Chimeway]:
    chimeway = Chimeway(engine=any_engine, channels={"rec": rec})
    yield chimeway
    chimeway.close()


def test_trigger_writes_one_event_notifications_and_deliveries(app: Chimeway, rec: RecordingChannel) -> None:
    with Session(app.engine) as session, session.begin():
        result = app.trigger(session, Welcome, {"name": "Ada", "users": ["user:1", "user:2", "user:1"]},
                             idempotency_key="welcome-1", tenant="acme", actor="system")
    assert not result.duplicate
    counts = count_rows(app.engine)
    assert counts["chimeway_events"] == 1
    assert counts["chimeway_notifications"] == 2  # user:1 listed twice is deduplicated
    assert counts["chimeway_deliveries"] == 4
    assert len(result.delivery_ids) == 4
    with app.engine.connect() as conn:
        messages = conn.execute(
            sa.select(deliveries_table.c.channel, deliveries_table.c.message, deliveries_table.c.status)
            .where(deliveries_table.c.recipient_id == "user:2")
            .order_by(deliveries_table.c.channel)
        ).all()
    assert [(m.channel, m.message, m.status) for m in messages] == [
        ("in_app", {"title": "Welcome Ada", "body": "Hello user:2"}, "succeeded"),
        ("rec", {"body": "Welcome Ada"}, "succeeded"),
    ]
    assert sorted(m.recipient.id for m in rec.sent) == ["user:1", "user:2"]
    assert {m.fields["body"] for m in rec.sent} == {"Welcome Ada"}


def test_delivery_happens_only_after_commit(app: Chimeway, rec: RecordingChannel) -> None:
    with Session(app.engine) as session:
        with session.begin():
            app.trigger(session, OnlyRec, {"n": 1}, idempotency_key="after-commit")
            session.flush()
            assert rec.calls == []
        assert len(rec.sent) == 1


def test_same_idempotency_key_is_a_duplicate_and_writes_nothing(app: Chimeway, rec: RecordingChannel) -> None:
    with Session(app.engine) as session, session.begin():
        first = app.trigger(session, OnlyRec, {"n": 1}, idempotency_key="dup", tenant="t1")
    before = count_rows(app.engine)
    with Session(app.engine) as session, session.begin():
        second = app.trigger(session, OnlyRec, {"n": 1}, idempotency_key="dup", tenant="t1")
    assert second.duplicate
    assert second.event_id == first.event_id
    assert second.delivery_ids == first.delivery_ids
    assert count_rows(app.engine) == before
    assert len(rec.sent) == 1
    # The same key in another tenant is another event.
    with Session(app.engine) as session, session.begin():
        other = app.trigger(session, OnlyRec, {"n": 3}, idempotency_key="dup", tenant="t2")
    assert not other.duplicate and other.event_id != first.event_id


def test_a_used_key_with_another_payload_is_refused_and_writes_nothing(app: Chimeway, rec: RecordingChannel,
                                                                       any_engine: sa.Engine) -> None:
    from chimeway.errors import IdempotencyConflictError

    with Session(app.engine) as session, session.begin():
        first = app.trigger(session, OnlyRec, {"n": 1}, idempotency_key="pay-7", tenant="t1")
    before = count_rows(app.engine)
    for params, notifier, user in (({"n": 2}, OnlyRec, "user:1"), ({"n": 1}, Welcome, "user:1"),
                                   ({"n": 1, "user": "user:2"}, OnlyRec, "user:2")):
        with Session(app.engine) as session, session.begin(), \
                pytest.raises(IdempotencyConflictError, match="idempotency_key 'pay-7' \\(tenant 't1'\\)"):
            app.trigger(session, notifier, {**params, "name": "x", "users": [user]}
                        if notifier is Welcome else params, idempotency_key="pay-7", tenant="t1")
    assert count_rows(app.engine) == before and len(rec.sent) == 1
    # In one batch, a conflict takes back the batch's new events too.
    from chimeway.planning import TriggerRequest

    with Session(app.engine) as session, session.begin(), pytest.raises(IdempotencyConflictError):
        app.trigger_many(session, OnlyRec, [TriggerRequest(params={"n": 5}, idempotency_key="new-1"),
                                            TriggerRequest(params={"n": 9}, idempotency_key="pay-7",
                                                           tenant="t1")])
    assert count_rows(app.engine) == before
    # Opting out: the key alone decides.
    lenient = Chimeway(engine=any_engine, channels={"rec": rec}, idempotency="key")
    with Session(lenient.engine) as session, session.begin():
        again = lenient.trigger(session, OnlyRec, {"n": 2}, idempotency_key="pay-7", tenant="t1")
    assert again.duplicate and again.event_id == first.event_id


def test_rollback_leaves_nothing_and_sends_nothing(app: Chimeway, rec: RecordingChannel) -> None:
    with Session(app.engine) as session:
        session.begin()
        app.trigger(session, Welcome, {"name": "x"}, idempotency_key="rolled-back")
        session.rollback()
    assert total_rows(app.engine) == 0
    assert rec.calls == []
    # The key is free again after a rollback.
    with Session(app.engine) as session, session.begin():
        result = app.trigger(session, Welcome, {"name": "x"}, idempotency_key="rolled-back")
    assert not result.duplicate


def test_trigger_with_a_connection_delivers_after_commit(app: Chimeway, rec: RecordingChannel) -> None:
    with app.engine.connect() as conn:
        with conn.begin():
            app.trigger(conn, OnlyRec, {"n": 5}, idempotency_key="conn-1")
            assert rec.calls == []
        assert [m.fields["body"] for m in rec.sent] == ["n=5"]
        with conn.begin() as tx:
            app.trigger(conn, OnlyRec, {"n": 6}, idempotency_key="conn-2")
            tx.rollback()
    assert len(rec.sent) == 1
    with app.engine.connect() as conn:
        keys = conn.execute(sa.select(events_table.c.idempotency_key)).scalars().all()
    assert keys == ["conn-1"]


def test_trigger_inside_the_callers_own_writes_is_atomic(app: Chimeway) -> None:
    table = sa.Table("orders_test", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    table.create(app.engine)
    with Session(app.engine) as session, pytest.raises(RuntimeError), session.begin():
        session.execute(table.insert().values(id=1))
        app.trigger(session, OnlyRec, {"n": 1}, idempotency_key="order-1")
        raise RuntimeError("the caller's own code fails after triggering")
    with app.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 0
    assert total_rows(app.engine) == 0


def test_channel_failures_are_classified_and_recorded(any_engine: sa.Engine) -> None:
    outcomes = {
        "user:temp": DeliveryResult.temporary("HTTP 503", error_class="http_503", retry_after=120),
        "user:perm": DeliveryResult.permanent("HTTP 400: bad", error_class="http_400"),
    }

    def respond(message):  # type: ignore[no-untyped-def]
        if message.recipient.id == "user:boom":
            raise ConnectionResetError("peer reset")
        return outcomes.get(message.recipient.id, DeliveryResult.ok("p-1"))

    app = Chimeway(engine=any_engine, channels={"rec": RecordingChannel(respond)})
    ids = {}
    for user in ("user:temp", "user:perm", "user:boom", "user:ok"):
        with Session(app.engine) as session, session.begin():
            ids[user] = app.trigger(session, OnlyRec, {"n": 1, "user": user}, idempotency_key=user).delivery_ids[0]
    temp = app.explain(ids["user:temp"])
    assert temp.status == "failed" and temp.reason == "temporary: HTTP 503"
    attempt = next(t for t in temp.timeline if t.event == "attempt")
    assert attempt.detail["outcome"] == "temporary" and attempt.detail["error_class"] == "http_503"
    assert attempt.detail["retry_after"] == 120
    failed_entry = temp.timeline[-1]
    assert failed_entry.event == "failed"
    perm = app.explain(ids["user:perm"])
    assert perm.status == "cancelled" and perm.reason == "permanent: HTTP 400: bad"
    boom = app.explain(ids["user:boom"])
    assert boom.status == "failed"
    assert [t.detail["error_class"] for t in boom.timeline if t.event == "attempt"] == ["ConnectionResetError"]
    ok = app.explain(ids["user:ok"])
    assert ok.status == "succeeded" and ok.attempts == 1
    assert [t.event for t in ok.timeline] == ["planned", "rendered", "attempt", "succeeded"]


def test_inbox_item_appears_only_when_in_app_delivery_succeeds(app: Chimeway) -> None:
    with Session(app.engine) as session, session.begin():
        result = app.trigger(session, Welcome, {"name": "Ada"}, idempotency_key="inbox-1", tenant="acme")
    items = app.inbox("user:1", tenant="acme").list().items
    assert [i.title for i in items] == ["Welcome Ada"]
    assert items[0].id == result.notification_ids[0]
    with app.engine.connect() as conn:
        inbox_at = conn.execute(sa.select(notifications_table.c.inbox_at)).scalar_one()
    assert inbox_at is not None


def test_savepoints_deliver_only_at_the_outermost_commit(app: Chimeway, rec: RecordingChannel) -> None:
    with Session(app.engine) as session:
        with session.begin():
            app.trigger(session, OnlyRec, {"n": 1}, idempotency_key="outer")
            with session.begin_nested():
                app.trigger(session, OnlyRec, {"n": 2}, idempotency_key="released")
            assert rec.calls == []  # releasing a savepoint is not a commit
            try:
                with session.begin_nested():
                    app.trigger(session, OnlyRec, {"n": 3}, idempotency_key="rolled-back-savepoint")
                    raise RuntimeError("undo this part only")
            except RuntimeError:
                pass
            assert rec.calls == []
        assert sorted(m.fields["body"] for m in rec.sent) == ["n=1", "n=2"]
    with app.engine.connect() as conn:
        keys = set(conn.execute(sa.select(events_table.c.idempotency_key)).scalars())
    assert keys == {"outer", "released"}


def test_savepoints_on_a_connection_deliver_only_at_the_outermost_commit(
    app: Chimeway, rec: RecordingChannel
) -> None:
    with app.engine.connect() as conn:
        with conn.begin():
            app.trigger(conn, OnlyRec, {"n": 1}, idempotency_key="c-outer")
            with conn.begin_nested():
                app.trigger(conn, OnlyRec, {"n": 2}, idempotency_key="c-released")
            savepoint = conn.begin_nested()
            app.trigger(conn, OnlyRec, {"n": 3}, idempotency_key="c-undone")
            savepoint.rollback()
            assert rec.calls == []
        assert sorted(m.fields["body"] for m in rec.sent) == ["n=1", "n=2"]
