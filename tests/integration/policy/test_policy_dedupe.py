"""Dedupe: the same notifier + recipient + key within the window is suppressed."""

from __future__ import annotations

import threading
from datetime import timedelta

import sqlalchemy as sa
from policy_support import Comment, delivery, fire, summaries
from sqlalchemy.orm import Session

from chimeway import Chimeway
from chimeway.channels.in_app import InApp
from chimeway.models import deliveries_table
from chimeway.policy import Dedupe
from chimeway.testing import FakeClock, RecordingChannel


class Reply(Comment):
    key = "policy_test_reply"
    dedupe_key = Dedupe(key=lambda params: params.get("thread"), window=timedelta(minutes=30))


def test_repeat_within_window_is_suppressed(app: Chimeway, clock: FakeClock, email: RecordingChannel) -> None:
    first = fire(app, Reply, {"thread": "t1", "post": "p", "text": "a"})
    clock.advance(minutes=10)
    again = fire(app, Reply, {"thread": "t1", "post": "p", "text": "b"})
    other = fire(app, Reply, {"thread": "t2", "post": "p", "text": "c"})
    assert delivery(app, first, "email").status == "succeeded"
    for channel in ("email", "in_app"):
        row = delivery(app, again, channel)
        assert (row.status, row.reason) == ("suppressed", "duplicate")
    assert delivery(app, other, "email").status == "succeeded"
    [(event, checkpoint, summary)] = summaries(app, delivery(app, again, "email").id)
    assert (event, checkpoint) == ("suppressed", "planning")
    assert summary.startswith(f"suppressed: duplicate of event {first.event_id} (dedupe key 't1', window 30min")
    assert [m.fields["body"] for m in email.sent] == ["a", "c"]


def test_after_the_window_the_key_is_free_again(app: Chimeway, clock: FakeClock) -> None:
    fire(app, Reply, {"thread": "t1", "post": "p", "text": "a"})
    clock.advance(minutes=30)
    later = fire(app, Reply, {"thread": "t1", "post": "p", "text": "b"})
    assert delivery(app, later, "email").status == "succeeded"
    clock.advance(minutes=29)
    assert delivery(app, fire(app, Reply, {"thread": "t1", "post": "p", "text": "c"}), "email").reason == "duplicate"


def test_dedupe_is_per_recipient_and_skipped_without_a_key(app: Chimeway) -> None:
    fire(app, Reply, {"thread": "t1", "to": "user:1", "post": "p", "text": "a"})
    assert delivery(app, fire(app, Reply, {"thread": "t1", "to": "user:2", "post": "p", "text": "a"}),
                    "email").status == "succeeded"
    fire(app, Reply, {"post": "p", "text": "no thread"})
    assert delivery(app, fire(app, Reply, {"post": "p", "text": "no thread"}), "email").status == "succeeded"


def test_a_bare_function_dedupes_for_a_day(app: Chimeway, clock: FakeClock) -> None:
    class Daily(Comment):
        key = "policy_test_daily"
        dedupe_key = staticmethod(lambda params: "daily")

    fire(app, Daily, {"post": "p", "text": "t"})
    clock.advance(hours=23)
    assert delivery(app, fire(app, Daily, {"post": "p", "text": "t"}), "email").reason == "duplicate"
    clock.advance(hours=1)
    assert delivery(app, fire(app, Daily, {"post": "p", "text": "t"}), "email").status == "succeeded"


def test_racing_duplicates_let_exactly_one_through(pg_engine: sa.Engine) -> None:
    email = RecordingChannel()
    app = Chimeway(engine=pg_engine, clock=FakeClock(), channels={"email": email, "in_app": InApp()}, notify=False)
    barrier = threading.Barrier(10)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with Session(pg_engine) as session, session.begin():
                session.connection()
                barrier.wait(timeout=30)
                app.trigger(session, Reply, {"thread": "same", "post": "p", "text": str(i)},
                            idempotency_key=f"dup-{i}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    d = deliveries_table
    with pg_engine.connect() as conn:
        reasons = conn.execute(sa.select(d.c.reason).where(d.c.channel == "email")).scalars().all()
    assert sorted(reasons, key=str) == [None] + ["duplicate"] * 9
    assert len(email.sent) == 1
    app.close()


class Invite(Comment):
    key = "policy_test_invite"
    dedupe_key = Dedupe(key=lambda params: params["invite_token"], window=timedelta(hours=1))


def test_keys_come_from_the_raw_params_and_are_stored_hashed(app: Chimeway, any_engine: sa.Engine) -> None:
    first = fire(app, Invite, {"invite_token": "tok-AAA", "post": "p", "text": "a"})
    other = fire(app, Invite, {"invite_token": "tok-BBB", "post": "p", "text": "b"})
    again = fire(app, Invite, {"invite_token": "tok-AAA", "post": "p", "text": "c"})
    # Both tokens redact to the same stored value; the key must not.
    assert delivery(app, first, "email").status == "succeeded"
    assert delivery(app, other, "email").status == "succeeded"
    assert delivery(app, again, "email").reason == "duplicate"
    [(_, _, summary)] = summaries(app, delivery(app, again, "email").id)
    assert "dedupe key '[redacted]'" in summary and "tok-AAA" not in summary
    with any_engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(sa.text("SELECT * FROM chimeway_dedupe_marks"))
                          for v in row)
        decisions = " ".join(str(row.detail) for row in conn.execute(
            sa.text("SELECT detail FROM chimeway_delivery_decisions")))
    assert "tok-" not in stored and "tok-" not in decisions
    assert "sha256:" in stored
