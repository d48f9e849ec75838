"""Caps: at most N per recipient × channel per sliding window, exact under concurrency."""

from __future__ import annotations

import threading
from datetime import timedelta

import sqlalchemy as sa
from policy_support import Comment, PasswordReset, delivery, fire, summaries
from sqlalchemy.orm import Session

from chimeway import Chimeway
from chimeway.channels.in_app import InApp
from chimeway.db import create_engine
from chimeway.models import deliveries_table
from chimeway.policy import Cap
from chimeway.testing import FakeClock, RecordingChannel


def test_app_cap_suppresses_beyond_the_limit(app: Chimeway, clock: FakeClock, email: RecordingChannel) -> None:
    app.configure_policy(caps=[Cap(limit=3, window=timedelta(hours=1), channel="email")])
    results = []
    for _ in range(5):
        results.append(fire(app, Comment, {"post": "p", "text": "t"}))
        clock.advance(minutes=1)
    statuses = [delivery(app, r, "email").status for r in results]
    assert statuses == ["succeeded"] * 3 + ["suppressed"] * 2
    assert len(email.sent) == 3
    assert all(delivery(app, r, "in_app").status == "succeeded" for r in results)  # cap is per channel
    row = delivery(app, results[3], "email")
    assert row.reason == "cap_reached"
    [(event, checkpoint, summary)] = summaries(app, row.id)
    assert (event, checkpoint) == ("suppressed", "planning")
    assert summary == "suppressed: app cap of 3 per 1h on email reached (3 in the window)"

    # The window slides: the first send leaves it one hour after it was made.
    clock.set(clock.now() - timedelta(minutes=5) + timedelta(hours=1))
    assert delivery(app, fire(app, Comment, {"post": "p", "text": "t"}), "email").status == "succeeded"
    assert delivery(app, fire(app, Comment, {"post": "p", "text": "t"}), "email").status == "suppressed"


def test_cap_is_per_recipient(app: Chimeway, email: RecordingChannel) -> None:
    app.configure_policy(caps=[Cap(limit=1, window=timedelta(days=1))])
    fire(app, Comment, {"to": "user:1", "post": "p", "text": "t"})
    fire(app, Comment, {"to": "user:2", "post": "p", "text": "t"})
    fire(app, Comment, {"to": "user:1", "post": "p", "text": "t"})
    assert sorted(m.recipient.id for m in email.sent) == ["user:1", "user:2"]


def test_notifier_cap_counts_only_that_notifier(app: Chimeway, email: RecordingChannel) -> None:
    class Capped(Comment):
        key = "policy_test_capped"
        caps = [Cap(limit=1, window=timedelta(hours=6), channel="email")]

    first = fire(app, Capped, {"post": "p", "text": "t"})
    other = fire(app, Comment, {"post": "p", "text": "t"})
    second = fire(app, Capped, {"post": "p", "text": "t"})
    assert delivery(app, first, "email").status == "succeeded"
    assert delivery(app, other, "email").status == "succeeded"
    row = delivery(app, second, "email")
    assert row.reason == "cap_reached"
    assert summaries(app, row.id)[0][2] == (
        "suppressed: notifier policy_test_capped cap of 1 per 6h on email reached (1 in the window)")


def test_critical_is_not_capped(app: Chimeway, email: RecordingChannel) -> None:
    app.configure_policy(caps=[Cap(limit=0, window=timedelta(hours=1))])
    fire(app, PasswordReset, {"code": "1"})
    fire(app, Comment, {"post": "p", "text": "t"})
    assert [m.notifier_key for m in email.sent] == [PasswordReset.key]


def test_deferred_delivery_is_counted_when_sent(app: Chimeway, clock: FakeClock, email: RecordingChannel) -> None:
    from datetime import UTC, datetime

    app.configure_policy(caps=[Cap(limit=1, window=timedelta(hours=2), channel="email")])
    app.recipient_settings("user:1").set(timezone="UTC", quiet_hours=("22:00", "07:00"))
    clock.set(datetime(2026, 1, 1, 23, 0, tzinfo=UTC))
    held = fire(app, Comment, {"post": "night", "text": "t"})
    assert delivery(app, held, "email").status == "deferred"
    clock.set(datetime(2026, 1, 2, 7, 0, tzinfo=UTC))
    morning = fire(app, Comment, {"post": "morning", "text": "t"})  # takes the only slot
    assert delivery(app, morning, "email").status == "succeeded"
    app.recover()
    row = delivery(app, held, "email")
    assert (row.status, row.reason) == ("suppressed", "cap_reached")
    assert summaries(app, row.id)[-1][:2] == ("suppressed", "before_send")


def test_twenty_racing_transactions_cap_five(any_url: str) -> None:
    # PostgreSQL queues the racers on the recipient × channel lock row;
    # SQLite serializes the writing transactions.
    engine = create_engine(any_url, pool_size=25, max_overflow=5)
    clock = FakeClock()
    email = RecordingChannel()
    app = Chimeway(engine=engine, clock=clock, channels={"email": email, "in_app": InApp()}, notify=False)
    app.configure_policy(caps=[Cap(limit=5, window=timedelta(hours=1), channel="email")])
    barrier = threading.Barrier(20)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with Session(engine) as session, session.begin():
                session.connection()  # open the transaction before the race starts
                barrier.wait(timeout=30)
                app.trigger(session, Comment, {"post": f"p{i}", "text": "t"}, idempotency_key=f"race-{i}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    d = deliveries_table
    with engine.connect() as conn:
        rows = conn.execute(sa.select(d.c.status, d.c.reason).where(d.c.channel == "email")).all()
    assert sorted(r.status for r in rows) == ["succeeded"] * 5 + ["suppressed"] * 15
    assert {r.reason for r in rows if r.status == "suppressed"} == {"cap_reached"}
    assert len(email.sent) == 5
    app.close()
    engine.dispose()


def test_prune_keeps_what_the_windows_still_need(app: Chimeway, clock: FakeClock) -> None:
    from chimeway.db import writer
    from chimeway.models import cap_usage_table
    from chimeway.policy import prune

    app.configure_policy(caps=[Cap(limit=2, window=timedelta(hours=1), channel="email")])
    fire(app, Comment, {"post": "p", "text": "t"})
    clock.advance(minutes=50)
    fire(app, Comment, {"post": "p", "text": "t"})
    clock.advance(minutes=20)
    with writer(app.engine).begin() as conn:
        deleted = prune(conn, clock.now(), keep=timedelta(hours=1))
    assert deleted["chimeway_cap_usage"] == 1
    with app.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(cap_usage_table)).scalar_one() == 1
    # The remaining usage still counts: one more fits, the next does not.
    assert delivery(app, fire(app, Comment, {"post": "p", "text": "t"}), "email").status == "succeeded"
    assert delivery(app, fire(app, Comment, {"post": "p", "text": "t"}), "email").reason == "cap_reached"
