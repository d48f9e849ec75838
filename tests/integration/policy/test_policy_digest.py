"""Digests: one delivery per recipient × key × window, flushed at window end or when full."""

from __future__ import annotations

import threading
from datetime import timedelta

import sqlalchemy as sa
from policy_support import Activity, delivery, fire, summaries
from sqlalchemy.orm import Session

from chimeway import Chimeway
from chimeway.channels.in_app import InApp
from chimeway.digest import Digest
from chimeway.dispatch import Due
from chimeway.models import deliveries_table
from chimeway.testing import FakeClock, RecordingChannel


class SmallBatch(Activity):
    key = "policy_test_small_batch"
    digest = Digest(window=timedelta(hours=1), max_items=3)
    # Without digest templates, the notifier's own template gets `events` and `count`.
    templates = {
        "in_app": {"title": "{{ who }}"},
        "email": {"subject": "{{ count | default(1) }} from {{ who }}", "body": "{{ who }}"},
    }


def test_events_in_one_window_become_one_email(app: Chimeway, clock: FakeClock, email: RecordingChannel) -> None:
    opened = clock.now()
    first = fire(app, Activity, {"project": "x", "who": "ann"})
    clock.advance(minutes=10)
    second = fire(app, Activity, {"project": "x", "who": "bob"})
    clock.advance(minutes=10)
    third = fire(app, Activity, {"project": "x", "who": "cat"})
    carrier = delivery(app, first, "email")
    assert (carrier.status, carrier.reason) == ("deferred", "digest")
    assert carrier.not_before == opened + timedelta(hours=1)
    for result in (second, third):
        row = delivery(app, result, "email")
        assert (row.status, row.reason) == ("suppressed", "digested")
        assert delivery(app, result, "in_app").status == "succeeded"  # the inbox gets every event
    assert email.sent == []

    # bob's comment was read in the inbox: it is left out of the email.
    app.inbox("user:1").mark_read(second.notification_ids[0])
    clock.advance(minutes=39)
    assert app.flush_digests() == 0
    clock.advance(minutes=1)
    assert app.flush_digests() == 1
    [sent] = email.sent
    assert sent.delivery_id == carrier.id
    assert (sent.fields["subject"], sent.fields["body"]) == ("2 new comments", "ann;cat;")
    timeline = summaries(app, carrier.id)
    assert [(e, c) for e, c, _ in timeline] == [("deferred", "planning"), ("digest_flushed", "digest_flush")]
    assert timeline[1][2] == "digest of 2 events rendered at window end (1 already read left out)"
    assert app.explain(carrier.id).status == "succeeded"


def test_keys_make_separate_batches(app: Chimeway, clock: FakeClock, email: RecordingChannel) -> None:
    fire(app, Activity, {"project": "x", "who": "ann"})
    fire(app, Activity, {"project": "y", "who": "bob"})
    fire(app, Activity, {"project": "x", "who": "cat"})
    clock.advance(hours=1)
    assert app.flush_digests() == 2
    assert sorted(m.fields["subject"] for m in email.sent) == ["1 new comments", "2 new comments"]


def test_an_event_after_the_window_starts_a_new_batch(
    app: Chimeway, clock: FakeClock, email: RecordingChannel
) -> None:
    first = fire(app, Activity, {"project": "x", "who": "ann"})
    clock.advance(minutes=30)
    fire(app, Activity, {"project": "x", "who": "bob"})
    clock.advance(minutes=35)  # past the first window; no sweep has run
    late = fire(app, Activity, {"project": "x", "who": "cat"})
    late_row = delivery(app, late, "email")
    assert (late_row.status, late_row.reason) == ("deferred", "digest")
    assert late_row.not_before == clock.now() + timedelta(hours=1)
    # Planning the late event closed the old batch; recover() sends it.
    assert app.recover() == 1
    assert [(m.delivery_id, m.fields["body"]) for m in email.sent] == [(delivery(app, first, "email").id, "ann;bob;")]

    # The second batch comes due: recover() flushes due digests first, so it
    # goes out in the same pass.
    clock.advance(hours=1)
    app.recover()
    assert [m.fields["body"] for m in email.sent] == ["ann;bob;", "cat;"]
    assert delivery(app, late, "email").status == "succeeded"
    assert next((e, c) for e, c, _ in summaries(app, late_row.id)) == ("deferred", "planning")


def test_a_due_batch_is_rendered_at_the_pre_send_checkpoint_without_a_flush(
    app: Chimeway, clock: FakeClock, email: RecordingChannel
) -> None:
    first = fire(app, Activity, {"project": "x", "who": "ann"})
    row = delivery(app, first, "email")
    clock.advance(hours=1, seconds=1)
    # Executing the carrier directly (as a queue job due at the window's end
    # does) renders the batch at the checkpoint, then sends on the next pass.
    app.dispatcher.redrive([Due(row.id)])
    assert (delivery(app, first, "email").status, delivery(app, first, "email").reason) == (
        "deferred", "digest_ready")
    clock.advance(seconds=1)
    app.dispatcher.redrive([Due(row.id)])
    assert [m.fields["body"] for m in email.sent] == ["ann;"]
    assert [(e, c) for e, c, _ in summaries(app, row.id)] == [
        ("deferred", "planning"), ("digest_flushed", "before_send"), ("deferred", "before_send")]


def test_a_full_batch_is_sent_at_once(app: Chimeway, clock: FakeClock, email: RecordingChannel) -> None:
    first = fire(app, SmallBatch, {"who": "ann"})
    fire(app, SmallBatch, {"who": "bob"})
    clock.advance(minutes=5)
    third = fire(app, SmallBatch, {"who": "cat"})
    [sent] = email.sent
    assert sent.delivery_id == delivery(app, third, "email").id
    assert sent.fields["subject"] == "3 from cat"
    held = delivery(app, first, "email")
    assert (held.status, held.reason) == ("suppressed", "digested")
    assert summaries(app, held.id)[-1][:2] == ("suppressed", "planning")
    fourth = fire(app, SmallBatch, {"who": "dan"})
    assert delivery(app, fourth, "email").reason == "digest"


def test_every_event_read_suppresses_the_digest(app: Chimeway, clock: FakeClock, email: RecordingChannel) -> None:
    first = fire(app, Activity, {"project": "x", "who": "ann"})
    second = fire(app, Activity, {"project": "x", "who": "bob"})
    inbox = app.inbox("user:1")
    inbox.mark_read(first.notification_ids[0])
    inbox.mark_read(second.notification_ids[0])
    clock.advance(hours=1)
    assert app.flush_digests() == 0
    row = delivery(app, first, "email")
    assert (row.status, row.reason) == ("suppressed", "digest_all_read")
    assert email.sent == []


def test_racing_events_share_one_batch(pg_engine: sa.Engine) -> None:
    email = RecordingChannel()
    clock = FakeClock()
    app = Chimeway(engine=pg_engine, clock=clock, channels={"email": email, "in_app": InApp()}, notify=False)
    barrier = threading.Barrier(10)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with Session(pg_engine) as session, session.begin():
                session.connection()
                barrier.wait(timeout=30)
                app.trigger(session, Activity, {"project": "x", "who": f"w{i}"}, idempotency_key=f"d-{i}")
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
    assert sorted(reasons) == ["digest"] + ["digested"] * 9
    clock.advance(hours=1)
    assert app.flush_digests() == 1
    [sent] = email.sent
    assert sent.fields["subject"] == "10 new comments"
    app.close()


def test_prune_drops_flushed_batches_and_expired_marks(app: Chimeway, clock: FakeClock) -> None:
    from chimeway.db import writer
    from chimeway.policy import prune

    fire(app, Activity, {"project": "x", "who": "ann"})
    fire(app, Activity, {"project": "x", "who": "bob"})
    clock.advance(hours=1)
    app.flush_digests()
    fire(app, Activity, {"project": "x", "who": "cat"})  # an open batch is kept
    clock.advance(days=2)
    with writer(app.engine).begin() as conn:
        deleted = prune(conn, clock.now(), keep=timedelta(days=1))
    assert (deleted["chimeway_digests"], deleted["chimeway_digest_items"]) == (1, 2)
    assert app.flush_digests() == 1


class PerRoom(Activity):
    key = "policy_test_per_room"
    # A key derived from a secret-looking param: each secret its own batch.
    digest = Digest(window=timedelta(hours=1), key=lambda params: params["room_token"])


def test_digest_keys_come_from_the_raw_params_and_are_stored_hashed(app: Chimeway, any_engine: sa.Engine) -> None:
    a = fire(app, PerRoom, {"room_token": "room-AAA", "who": "ann"})
    b = fire(app, PerRoom, {"room_token": "room-BBB", "who": "bob"})
    a2 = fire(app, PerRoom, {"room_token": "room-AAA", "who": "cat"})
    assert (delivery(app, a, "email").status, delivery(app, b, "email").status) == ("deferred", "deferred")
    assert (delivery(app, a2, "email").status, delivery(app, a2, "email").reason) == ("suppressed", "digested")
    with any_engine.connect() as conn:
        keys = list(conn.execute(sa.text("SELECT digest_key FROM chimeway_digests")).scalars())
    assert len(set(keys)) == 2 and all(k.startswith("sha256:") and "room-" not in k for k in keys)
