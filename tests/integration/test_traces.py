"""app.traces() and app.outcomes() on both backends; their index use on PostgreSQL; tenant-scoped explains."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from chimeway import Chimeway, DeliveryResult, Message, Notifier, Recipient
from chimeway.errors import InvalidInputError, NotFoundError
from chimeway.testing import FakeClock, RecordingChannel
from chimeway.workflow import deliver, wait


def answer(message: Message) -> DeliveryResult:
    # The provider's answer is written into the message by the test.
    kind = message.fields["body"]
    if kind == "bounce":
        return DeliveryResult.bounced("550 no such mailbox")
    if kind == "reject":
        return DeliveryResult.permanent("HTTP 400: bad address")
    if kind == "later":
        return DeliveryResult.temporary("HTTP 503", retry_after=60)
    return DeliveryResult.ok()


class Shipped(Notifier):
    key = "traces_shipped"
    channels = ["in_app", "email"]
    templates = {"in_app": {"title": "Order {{ order }}"}, "email": {"subject": "Order", "body": "{{ kind }}"}}

    def recipients(self, params: Any) -> list[Recipient]:
        return [Recipient(id=u) for u in params["to"]]


class Digest(Notifier):
    key = "traces_digest"
    channels = ["email"]
    templates = {"email": {"subject": "Digest", "body": "ok"}}

    def recipients(self, params: Any) -> list[Recipient]:
        return [Recipient(id=params["to"])]


class Nudge(Notifier):
    key = "traces_nudge"
    templates = {"in_app": {"title": "Nudge"}, "email": {"subject": "Nudge", "body": "ok"}}
    workflow = [deliver("in_app"), wait(minutes=30, unless="notification.read"), deliver("email")]

    def recipients(self, params: Any) -> list[Recipient]:
        return [Recipient(id="user:1")]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(any_url: str, clock: FakeClock) -> Iterator[Chimeway]:
    app = Chimeway(any_url, clock=clock, channels={"email": RecordingChannel(answer)}, max_attempts=2)
    yield app
    app.close()


def shipped(app: Chimeway, key: str, *, to: list[str], kind: str = "ok", tenant: str | None = None,
            correlation_id: str | None = None) -> Any:
    with Session(app.engine) as session, session.begin():
        return app.trigger(session, Shipped, {"to": to, "order": key, "kind": kind}, idempotency_key=key,
                           tenant=tenant, correlation_id=correlation_id)


def test_traces_by_recipient_correlation_notifier_tenant_and_time(app: Chimeway, clock: FakeClock) -> None:
    first = shipped(app, "o1", to=["user:1", "user:2"], correlation_id="req-1", tenant="acme")
    clock.advance(minutes=5)
    second = shipped(app, "o2", to=["user:2"], correlation_id="req-2", tenant="acme")
    clock.advance(minutes=5)
    third = shipped(app, "o3", to=["user:1"], correlation_id="req-1", tenant="globex")
    with Session(app.engine) as session, session.begin():
        digest = app.trigger(session, Digest, {"to": "user:1"}, idempotency_key="d1", tenant="acme")

    page = app.traces(recipient="user:1")
    assert [t.event_id for t in page] == [digest.event_id, third.event_id, first.event_id]
    assert page.next_cursor is None
    # A recipient's trace holds that recipient's part only.
    trace = app.traces(recipient="user:1", tenant="acme", notifier="traces_shipped").traces[0]
    assert trace.event_id == first.event_id
    assert {n["recipient_id"] for n in trace.notifications} == {"user:1"}
    assert {(x.recipient_id, x.channel, x.status) for x in trace.deliveries} == {
        ("user:1", "in_app", "succeeded"), ("user:1", "email", "succeeded")}
    assert trace.correlation_id == "req-1"

    assert [t.event_id for t in app.traces(correlation_id="req-1")] == [third.event_id, first.event_id]
    assert [t.event_id for t in app.traces(correlation_id="req-1", tenant="acme")] == [first.event_id]
    assert len(app.traces(correlation_id="req-1").traces[1].deliveries) == 4, "both recipients' deliveries"
    assert [t.event_id for t in app.traces(notifier="traces_shipped", since=clock.now() - timedelta(minutes=5))] == [
        third.event_id, second.event_id]
    assert [t.event_id for t in app.traces(recipient="user:2", since=clock.now() - timedelta(minutes=5))] == [
        second.event_id]
    assert [t.event_id for t in app.traces(tenant="acme")] == [digest.event_id, second.event_id, first.event_id]
    assert app.traces(recipient="user:9").traces == ()
    assert app.traces(correlation_id="req-1", recipient="user:2").traces[0].event_id == first.event_id


@pytest.mark.parametrize("by", ["recipient", "notifier"])
def test_traces_page_newest_first_without_gaps_or_repeats(app: Chimeway, clock: FakeClock, by: str) -> None:
    made = []
    for i in range(7):
        made.append(shipped(app, f"p{i}", to=["user:1"]).event_id)
        clock.advance(seconds=1)
    seen: list[Any] = []
    cursor = None
    pages = 0
    while True:
        filters: dict[str, Any] = {"recipient": "user:1"} if by == "recipient" else {"notifier": Shipped.key}
        page = app.traces(limit=3, cursor=cursor, **filters)
        seen += [t.event_id for t in page]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == made[::-1]
    assert pages == 3


def test_bad_trace_lookups_name_the_field(app: Chimeway) -> None:
    with pytest.raises(InvalidInputError, match="limit"):
        app.traces(limit=0)
    with pytest.raises(InvalidInputError, match="cursor"):
        app.traces(cursor="not-an-id")
    with pytest.raises(InvalidInputError, match="since"):
        app.traces(since="yesterday")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="recipient"):
        app.traces(recipient="")
    with pytest.raises(InvalidInputError, match="notifier"):
        app.outcomes("")


def test_outcomes_count_deliveries_by_status_and_reason(app: Chimeway, clock: FakeClock) -> None:
    before = clock.now()
    shipped(app, "old", to=["user:1"], kind="bounce")
    clock.advance(hours=1)
    since = clock.now()
    app.preferences("user:3", tenant="acme").set(channel="email", enabled=False)
    shipped(app, "g", to=["user:4"], kind="later", tenant="acme")
    clock.advance(minutes=5)
    app.recover(older_than=timedelta(0))          # g's second attempt fails too: retries exhausted
    for key, kind, to in (("a", "ok", "user:1"), ("b", "ok", "user:2"), ("c", "bounce", "user:1"),
                          ("d", "reject", "user:2"), ("e", "later", "user:1"), ("f", "ok", "user:3")):
        shipped(app, key, to=[to], kind=kind, tenant="acme" if key != "b" else None)

    outcomes = app.outcomes("traces_shipped", since=since)
    counts = {(c.status, c.reason): c.count for c in outcomes.counts}
    assert counts == {
        ("succeeded", None): 9,                   # seven in-app deliveries, two emails
        ("cancelled", "bounced"): 1,
        ("cancelled", "permanent"): 1,
        ("cancelled", "retries_exhausted"): 1,
        ("failed", "temporary"): 1,               # e: waits for its retry
        ("suppressed", "opted_out"): 1,
    }, counts
    assert outcomes.counts[0].count == 9, "largest first"
    assert (outcomes.total, outcomes.in_flight) == (14, 1)
    assert outcomes.by_status == {"succeeded": 9, "cancelled": 3, "failed": 1, "suppressed": 1}
    assert app.outcomes(Shipped, since=since, tenant="acme").total == 12
    everything = app.outcomes("traces_shipped")
    assert everything.total == 16 and everything.since is None
    assert {(c.status, c.reason): c.count for c in app.outcomes("traces_shipped", since=before).counts}[
        ("cancelled", "bounced")] == 2
    assert app.outcomes("nobody").counts == ()
    assert "traces_shipped: 14 deliveries" in str(outcomes)


def test_explains_are_tenant_scoped(app: Chimeway) -> None:
    result = shipped(app, "t1", to=["user:1"], tenant="acme")
    with Session(app.engine) as session, session.begin():
        nudge = app.trigger(session, Nudge, {}, idempotency_key="n1", tenant="acme")
    delivery_id = result.delivery_ids[0]
    assert app.explain(delivery_id, tenant="acme").delivery_id == delivery_id
    assert app.trace(result.event_id, tenant="acme").event_id == result.event_id
    run = app.explain_run(notification_id=nudge.notification_ids[0], tenant="acme")
    assert run.tenant == "acme"
    for other in ("globex", ""):
        with pytest.raises(NotFoundError):
            app.explain(delivery_id, tenant=other)
        with pytest.raises(NotFoundError):
            app.trace(result.event_id, tenant=other)
        with pytest.raises(NotFoundError, match="no workflow run"):
            app.explain_run(run.run_id, tenant=other)


# --- index use on PostgreSQL ---------------------------------------------------------------

FILL = """
INSERT INTO chimeway_events (id, tenant, idempotency_key, notifier_key, notifier_version,
                             correlation_id, params, created_at)
SELECT ('01900000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 't' || mod(i, 20), 'k' || i,
       CASE WHEN mod(i, 1000) = 0 THEN 'notifier_rare' ELSE 'notifier_' || mod(i, 40) END, 1, 'req-' || i, '{}',
       timestamptz '2026-01-01' + i * interval '1 minute'
FROM generate_series(1, 40000) AS i;
INSERT INTO chimeway_notifications (id, event_id, tenant, recipient_id, recipient, notifier_key, created_at)
SELECT ('01900000-0000-7000-9000-' || lpad(to_hex(i), 12, '0'))::uuid,
       ('01900000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 't' || mod(i, 20), 'user:' || mod(i, 5000),
       '{}', CASE WHEN mod(i, 1000) = 0 THEN 'notifier_rare' ELSE 'notifier_' || mod(i, 40) END,
       timestamptz '2026-01-01' + i * interval '1 minute'
FROM generate_series(1, 40000) AS i;
INSERT INTO chimeway_deliveries (id, notification_id, event_id, tenant, recipient_id, channel, status, reason,
                                 message, attempts, created_at, updated_at)
SELECT ('01900000-0000-7000-a000-' || lpad(to_hex(i), 12, '0'))::uuid,
       ('01900000-0000-7000-9000-' || lpad(to_hex(i), 12, '0'))::uuid,
       ('01900000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 't' || mod(i, 20), 'user:' || mod(i, 5000),
       'email', CASE WHEN mod(i, 7) = 0 THEN 'cancelled' ELSE 'succeeded' END,
       CASE WHEN mod(i, 7) = 0 THEN 'bounced: 550' END, '{}', 1,
       timestamptz '2026-01-01' + i * interval '1 minute', timestamptz '2026-01-01' + i * interval '1 minute'
FROM generate_series(1, 40000) AS i;
ANALYZE chimeway_events; ANALYZE chimeway_notifications; ANALYZE chimeway_deliveries;
"""


@pytest.mark.postgres
def test_trace_lookups_use_their_indexes_on_postgresql(pg_url: str) -> None:
    from datetime import UTC, datetime

    app = Chimeway(pg_url)
    with app.engine.begin() as conn:
        conn.exec_driver_sql(FILL)
    statements: list[tuple[str, Any]] = []

    def keep(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        statements.append((statement, parameters))

    lookups = {
        "recipient": lambda: app.traces(recipient="user:42", tenant="t2"),
        "recipient_any_tenant": lambda: app.traces(recipient="user:42"),
        "correlation": lambda: app.traces(correlation_id="req-777"),
        "notifier": lambda: app.traces(notifier="notifier_rare", limit=5),
        "outcomes": lambda: app.outcomes("notifier_7", since=datetime(2026, 1, 28, tzinfo=UTC)),
    }
    expected = {
        "recipient": "ix_chimeway_notifications_trace",
        "recipient_any_tenant": "ix_chimeway_notifications_trace",
        "correlation": "ix_chimeway_events_correlation",
        "notifier": "ix_chimeway_events_notifier",
        # By notifier and time, or by time alone when the window is short and
        # the rows lie in time order (the planner's choice; both are bounded).
        "outcomes": ("ix_chimeway_events_notifier_time", "ix_chimeway_events_created"),
    }
    found = {}
    for name, lookup in lookups.items():
        statements.clear()
        sa.event.listen(app.engine, "before_cursor_execute", keep)
        try:
            found[name] = lookup()
        finally:
            sa.event.remove(app.engine, "before_cursor_execute", keep)
        # The first statement finds the page (or counts); the rest load rows by key.
        with app.engine.connect() as conn:
            for i, (statement, parameters) in enumerate(statements):
                plan = "\n".join(conn.exec_driver_sql("EXPLAIN " + statement, parameters).scalars())
                # (attempts and decisions are empty here: scanning them is the right plan)
                for table in ("events", "notifications", "deliveries"):
                    assert f"Seq Scan on chimeway_{table}" not in plan, f"{name} statement {i}:\n{statement}\n{plan}"
                if i == 0:
                    wanted = expected[name]
                    assert any(index in plan for index in ((wanted,) if isinstance(wanted, str) else wanted)), \
                        f"{name}:\n{plan}"
    assert [t.correlation_id for t in found["correlation"]] == ["req-777"]
    assert len(found["notifier"]) == 5 and found["notifier"].next_cursor is not None
    assert {t.deliveries[0].recipient_id for t in found["recipient"]} == {"user:42"}
    window = [i for i in range(27 * 24 * 60, 40001) if i % 40 == 7]
    bounced = sum(1 for i in window if i % 7 == 0)
    assert found["outcomes"].by_status == {"succeeded": len(window) - bounced, "cancelled": bounced}
    app.close()
