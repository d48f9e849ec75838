"""Preview: the rendered message and the decision per recipient × channel, writing nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from policy_support import Comment, fire, row_counts
from sqlalchemy.orm import Session

from chimeway import Chimeway
from chimeway.policy import Cap, Dedupe
from chimeway.testing import RecordingChannel


class Thread(Comment):
    key = "policy_test_thread"
    dedupe_key = Dedupe(key=lambda params: params.get("thread"), window=timedelta(hours=1))


def test_preview_explains_without_writing_or_sending(app: Chimeway, email: RecordingChannel) -> None:
    app.recipient_settings("user:1").set(timezone="Europe/Paris", quiet_hours=("22:00", "07:00"))
    app.preferences("user:2").set(channel="email", enabled=False)
    before = row_counts(app.engine)
    with Session(app.engine) as session:
        night = app.preview(session, Comment, {"post": "p", "text": "hello"},
                            at=datetime(2026, 3, 1, 22, 30, tzinfo=UTC))
        opted = app.preview(session, Comment, {"to": "user:2", "post": "p", "text": "hello"})
    assert row_counts(app.engine) == before
    assert email.calls == []

    by_channel = {item.channel: item for item in night}
    assert by_channel["in_app"].status == "pending"
    assert by_channel["in_app"].fields == {"title": "New comment on p"}
    mail = by_channel["email"]
    assert (mail.status, mail.reason) == ("deferred", "quiet_hours")
    assert mail.not_before == datetime(2026, 3, 1, 6, 0, tzinfo=UTC) + timedelta(days=1)
    assert mail.why == ("deferred: quiet hours 22:00-07:00 Europe/Paris, until 2026-03-02T07:00+01:00",)
    assert mail.fields["body"] == "hello"
    assert {i.channel: (i.status, i.reason) for i in opted} == {
        "in_app": ("pending", None), "email": ("suppressed", "opted_out")}


def test_preview_sees_caps_and_dedupe_state(app: Chimeway) -> None:
    app.configure_policy(caps=[Cap(limit=1, window=timedelta(hours=1), channel="email")])
    fire(app, Thread, {"thread": "a", "post": "p", "text": "t"})
    before = row_counts(app.engine)
    with Session(app.engine) as session:
        same = app.preview(session, Thread, {"thread": "a", "post": "p", "text": "t"})
        other = app.preview(session, Thread, {"thread": "b", "post": "p", "text": "t"})
        later = app.preview(session, Thread, {"thread": "b", "post": "p", "text": "t"},
                            at=app.clock.now() + timedelta(hours=2))
    assert row_counts(app.engine) == before
    assert {i.channel: i.reason for i in same} == {"in_app": "duplicate", "email": "duplicate"}
    assert {i.channel: i.reason for i in other} == {"in_app": None, "email": "cap_reached"}
    assert {i.channel: i.status for i in later} == {"in_app": "pending", "email": "pending"}
