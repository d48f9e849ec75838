"""``prefs.effective(Notifier)`` lists the channels the notifier can use, not every configured one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chimeway import Chimeway, Notifier, Recipient
from chimeway.notifier import possible_channels
from chimeway.testing import RecordingChannel
from chimeway.workflow import deliver, wait


class Shipped(Notifier):
    key = "effective_test_shipped"
    channels = ["in_app", "email"]


class Journey(Notifier):
    key = "effective_test_journey"
    channels = ["webhook"]  # a workflow's steps decide, not this
    templates = {"in_app": {"title": "t"}, "email": {"subject": "s", "text": "t"}, "sms": {"body": "b"}}
    workflow = [deliver("in_app"), wait(minutes=5), deliver("email", on_failure="sms")]


class PerRecipient(Notifier):
    key = "effective_test_per_recipient"
    channels = ["in_app"]

    def channels_for(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        return ["sms"] if recipient.phone else ["in_app"]


def test_only_the_notifiers_own_channels(tmp_path: Path) -> None:
    channels = {name: RecordingChannel() for name in ("email", "sms", "webhook")}
    with Chimeway(f"sqlite:///{tmp_path / 'c.db'}", channels=channels) as app:
        app.migrate()
        prefs = app.preferences("user:1")
        prefs.set(channel="email", enabled=False)
        assert prefs.effective(Shipped) == {
            "in_app": (True, "no preference set; channels are on by default"),
            "email": (False, "opted out of everything × email (via api)"),
        }
        assert list(prefs.effective(Journey)) == ["in_app", "email", "sms"]
        # channels_for may pick any channel for some recipient: every configured one is shown.
        assert sorted(prefs.effective(PerRecipient)) == ["email", "in_app", "sms", "webhook"]
        assert list(prefs.effective(Shipped, channels=["sms"])) == ["sms"]


def test_possible_channels() -> None:
    assert possible_channels(Shipped) == ("in_app", "email")
    assert possible_channels(Journey) == ("in_app", "email", "sms")
    assert possible_channels(PerRecipient) is None
