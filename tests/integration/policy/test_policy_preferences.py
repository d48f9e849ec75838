"""Preferences at planning, their resolution matrix, critical notifiers, and the pre-send checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest
from policy_support import Comment, PasswordReset, delivery, fire, summaries
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from chimeway import Chimeway
from chimeway.channels.in_app import InApp
from chimeway.dispatch.base import Due
from chimeway.testing import FakeClock, RecordingChannel


def test_opt_out_of_one_channel_for_one_notifier(app: Chimeway, email: RecordingChannel) -> None:
    app.preferences("user:1").set(channel="email", enabled=False, notifier=Comment)
    result = fire(app, Comment, {"post": "p1", "text": "hi"})
    row = delivery(app, result, "email")
    assert (row.status, row.reason) == ("suppressed", "opted_out")
    assert delivery(app, result, "in_app").status == "succeeded"
    assert email.sent == []
    [(event, checkpoint, summary)] = summaries(app, row.id)
    assert (event, checkpoint) == ("suppressed", "planning")
    assert summary == f"suppressed: opted out of notifier {Comment.key} × email (via api)"


def test_most_specific_preference_wins(app: Chimeway) -> None:
    prefs = app.preferences("user:1")
    prefs.set(enabled=False)                                    # everything, every channel
    prefs.set(channel="email", enabled=True, category="social")  # but social email is welcome
    matrix = prefs.effective(Comment)
    assert matrix["email"] == (True, "opted in to category social × email (via api)")
    assert matrix["in_app"] == (False, "opted out of everything × every channel (via api)")
    prefs.set(channel="email", enabled=False, notifier=Comment.key)
    assert prefs.effective(Comment)["email"][0] is False
    result = fire(app, Comment, {"post": "p", "text": "t"})
    assert delivery(app, result, "email").reason == "opted_out"
    assert delivery(app, result, "in_app").reason == "opted_out"


def test_preferences_are_per_tenant(app: Chimeway, email: RecordingChannel) -> None:
    app.preferences("user:1", tenant="acme").set(channel="email", enabled=False)
    fire(app, Comment, {"post": "p", "text": "t"}, tenant="acme")
    fire(app, Comment, {"post": "p", "text": "t"}, tenant="globex")
    assert [m.tenant for m in email.sent] == ["globex"]


def test_notifier_default_channels_enabled(app: Chimeway, email: RecordingChannel) -> None:
    class Weekly(Comment):
        key = "policy_test_weekly"
        default_channels_enabled = {"email": False}

    assert app.preferences("user:1").effective(Weekly)["email"] == (
        False, "notifier policy_test_weekly has email off by default")
    result = fire(app, Weekly, {"post": "p", "text": "t"})
    assert delivery(app, result, "email").reason == "opted_out"
    app.preferences("user:1").set(channel="email", enabled=True, notifier=Weekly)
    result = fire(app, Weekly, {"post": "p", "text": "t"})
    assert delivery(app, result, "email").status == "succeeded"


def test_critical_notifier_bypasses_opt_out(app: Chimeway, email: RecordingChannel) -> None:
    app.preferences("user:1").set(enabled=False)
    enabled, why = app.preferences("user:1").effective(PasswordReset)["email"]
    assert enabled is True
    assert why.startswith("critical notifier bypasses opt-outs")
    result = fire(app, PasswordReset, {"code": "123"})
    row = delivery(app, result, "email")
    assert row.status == "succeeded"
    assert [e for e, _, _ in summaries(app, row.id)] == ["allowed"]


def test_get_lists_stored_rows(app: Chimeway) -> None:
    prefs = app.preferences("user:9")
    prefs.set(channel="email", enabled=False, category="social")
    prefs.set(channel="email", enabled=True, category="social")  # last write wins, one row
    [entry] = prefs.get()
    assert (entry.scope, entry.scope_key, entry.channel, entry.enabled) == ("category", "social", "email", True)


class _Holding:
    """A dispatcher that keeps planned deliveries until the test sends them."""

    name = "holding"

    def __init__(self) -> None:
        self.held: list[Due] = []

    def planned(self, target: Session | Connection, conn: Connection, deliveries: Sequence[Due]) -> None:
        self.held.extend(deliveries)

    def redrive(self, deliveries: Sequence[Due]) -> int:
        self.held.extend(deliveries)
        return len(deliveries)


def test_opt_out_after_planning_is_honoured_before_sending(any_engine: object, clock: FakeClock) -> None:
    holding = _Holding()
    email = RecordingChannel()
    app = Chimeway(engine=any_engine, clock=clock, channels={"email": email, "in_app": InApp()},  # type: ignore[arg-type]
                   dispatcher=holding, notify=False)
    result = fire(app, Comment, {"post": "p", "text": "t"})
    assert delivery(app, result, "email").status == "pending"
    app.preferences("user:1").set(channel="email", enabled=False)
    clock.advance(minutes=1)
    outcomes = app.executor.execute([d.id for d in holding.held])
    assert [o.status for o in outcomes] == ["succeeded"]  # in_app only
    row = delivery(app, result, "email")
    assert (row.status, row.reason, row.attempts) == ("suppressed", "opted_out", 0)
    assert email.calls == []
    [(event, checkpoint, summary)] = summaries(app, row.id)
    assert (event, checkpoint) == ("suppressed", "before_send")
    assert "opted out of everything × email" in summary
    app.close()


def test_opt_out_during_quiet_hours_deferral(app: Chimeway, clock: FakeClock, email: RecordingChannel) -> None:
    app.recipient_settings("user:1").set(timezone="Europe/Paris", quiet_hours=("22:00", "07:00"))
    clock.advance(hours=13)  # 22:00 UTC = 23:00 Paris
    result = fire(app, Comment, {"post": "p", "text": "t"})
    row = delivery(app, result, "email")
    assert row.status == "deferred"
    app.preferences("user:1").set(channel="email", enabled=False, category="social")
    clock.set(row.not_before + timedelta(seconds=1))
    app.recover()
    row = delivery(app, result, "email")
    assert (row.status, row.reason) == ("suppressed", "opted_out")
    assert email.calls == []
    assert [(e, c) for e, c, _ in summaries(app, row.id)] == [("deferred", "planning"), ("suppressed", "before_send")]


def test_bad_input_is_refused(app: Chimeway) -> None:
    from chimeway.errors import InvalidInputError, InvalidScheduleError

    with pytest.raises(InvalidInputError):
        app.preferences("user:1").set(channel="email", enabled="no")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        app.preferences("user:1").set(enabled=False, notifier=Comment, category="social")
    with pytest.raises(InvalidScheduleError):
        app.recipient_settings("user:1").set(timezone="Mars/Olympus")
    with pytest.raises(InvalidScheduleError):
        app.recipient_settings("user:1").set(quiet_hours=("25:00", "07:00"))
    assert app.preferences("user:1").get() == []
