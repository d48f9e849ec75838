"""Quiet hours: deferred (never dropped) until the local window ends, across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from policy_support import Comment, PasswordReset, delivery, fire, summaries

from chimeway import Chimeway
from chimeway.testing import FakeClock, RecordingChannel


@pytest.fixture
def paris(app: Chimeway) -> Chimeway:
    app.recipient_settings("user:1").set(timezone="Europe/Paris", quiet_hours=("22:00", "07:00"))
    return app


def test_deferred_until_window_end_then_sent_by_recover(
    paris: Chimeway, clock: FakeClock, email: RecordingChannel
) -> None:
    clock.set(datetime(2026, 2, 28, 22, 30, tzinfo=UTC))  # 23:30 in Paris (CET, +01:00)
    result = fire(paris, Comment, {"post": "p", "text": "t"})
    row = delivery(paris, result, "email")
    assert (row.status, row.reason) == ("deferred", "quiet_hours")
    assert row.not_before == datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
    assert delivery(paris, result, "in_app").status == "succeeded"  # the inbox is silent
    assert email.sent == []
    [(event, checkpoint, summary)] = summaries(paris, row.id)
    assert (event, checkpoint) == ("deferred", "planning")
    assert summary == "deferred: quiet hours 22:00-07:00 Europe/Paris, until 2026-03-01T07:00+01:00"

    clock.set(datetime(2026, 3, 1, 5, 59, tzinfo=UTC))
    assert paris.recover() == 0
    clock.set(datetime(2026, 3, 1, 6, 0, tzinfo=UTC))
    assert paris.recover() == 1
    assert [m.delivery_id for m in email.sent] == [row.id]
    assert delivery(paris, result, "email").status == "succeeded"


@pytest.mark.parametrize(
    ("planned_at", "until"),
    [
        # Spring forward: 2026-03-29 02:00 CET → 03:00 CEST; 07:00 CEST is 05:00 UTC.
        (datetime(2026, 3, 28, 22, 0, tzinfo=UTC), datetime(2026, 3, 29, 5, 0, tzinfo=UTC)),
        # Fall back: 2026-10-25 03:00 CEST → 02:00 CET; 07:00 CET is 06:00 UTC.
        (datetime(2026, 10, 24, 21, 30, tzinfo=UTC), datetime(2026, 10, 25, 6, 0, tzinfo=UTC)),
        # Planned after the change, before the window ends.
        (datetime(2026, 10, 25, 1, 30, tzinfo=UTC), datetime(2026, 10, 25, 6, 0, tzinfo=UTC)),
    ],
)
def test_window_end_across_dst(paris: Chimeway, clock: FakeClock, planned_at: datetime, until: datetime) -> None:
    clock.set(planned_at)
    row = delivery(paris, fire(paris, Comment, {"post": "p", "text": "t"}), "email")
    assert (row.status, row.not_before) == ("deferred", until)


def test_outside_the_window_is_sent_now(paris: Chimeway, clock: FakeClock, email: RecordingChannel) -> None:
    clock.set(datetime(2026, 3, 29, 5, 0, tzinfo=UTC))  # 07:00 CEST: the window has just ended
    fire(paris, Comment, {"post": "p", "text": "t"})
    assert len(email.sent) == 1


def test_recipient_timezone_is_used_when_settings_have_none(
    app: Chimeway, clock: FakeClock, email: RecordingChannel
) -> None:
    from chimeway import Notifier, Recipient

    class TokyoComment(Comment):
        key = "policy_test_tokyo_comment"

        def recipients(self, params: object) -> list[Recipient]:
            return [Recipient(id="user:1", email="u@example.com", timezone="Asia/Tokyo")]

    assert issubclass(TokyoComment, Notifier)
    app.recipient_settings("user:1").set(quiet_hours=("22:00", "07:00"))
    clock.set(datetime(2026, 3, 1, 14, 0, tzinfo=UTC))  # 23:00 in Tokyo
    row = delivery(app, fire(app, TokyoComment, {"post": "p", "text": "t"}), "email")
    assert row.not_before == datetime(2026, 3, 1, 22, 0, tzinfo=UTC)  # 07:00 JST


def test_critical_is_not_held(paris: Chimeway, clock: FakeClock, email: RecordingChannel) -> None:
    clock.set(datetime(2026, 2, 28, 22, 30, tzinfo=UTC))
    fire(paris, PasswordReset, {"code": "1"})
    assert len(email.sent) == 1


def test_quiet_hours_set_after_planning_defer_at_send_time(
    app: Chimeway, clock: FakeClock, email: RecordingChannel
) -> None:
    # A failed first attempt is retried later; by then the recipient set quiet hours.
    from chimeway import DeliveryResult

    email._respond = lambda m: DeliveryResult.temporary("busy") if m.attempt == 1 else DeliveryResult.ok()
    clock.set(datetime(2026, 2, 28, 20, 0, tzinfo=UTC))  # 21:00 Paris
    result = fire(app, Comment, {"post": "p", "text": "t"})
    assert delivery(app, result, "email").status == "failed"
    app.recipient_settings("user:1").set(timezone="Europe/Paris", quiet_hours=("22:00", "07:00"))
    clock.set(datetime(2026, 2, 28, 22, 0, tzinfo=UTC))  # 23:00 Paris, retry due
    app.recover()
    row = delivery(app, result, "email")
    assert (row.status, row.reason, row.not_before) == (
        "deferred", "quiet_hours", datetime(2026, 3, 1, 6, 0, tzinfo=UTC))
    assert summaries(app, row.id)[-1][:2] == ("deferred", "before_send")
    clock.set(datetime(2026, 3, 1, 6, 0, tzinfo=UTC))
    app.recover()
    assert delivery(app, result, "email").status == "succeeded"
    assert len(email.sent) == 1
