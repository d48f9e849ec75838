"""A misspelled Notifier option fails at class definition instead of being ignored."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest

from chimeway import Dedupe, Notifier, Recipient
from chimeway.errors import InvalidNotifierError
from chimeway.notifier import registered_notifiers


def test_dedupe_for_dedupe_key() -> None:
    with pytest.raises(InvalidNotifierError, match=r"`dedupe` is not a Notifier option; did you mean `dedupe_key`\?"):

        class BuildFailed(Notifier):
            key = "options_test_build_failed"
            channels = ["in_app"]
            dedupe = Dedupe(key=lambda params: params["id"], window=timedelta(minutes=30))

    assert "options_test_build_failed" not in registered_notifiers()


@pytest.mark.parametrize(
    ("name", "value", "meant"),
    [
        ("template", {"in_app": {"title": "t"}}, "templates"),
        ("catgory", "orders", "category"),
        ("critcal", True, "critical"),
        ("sensitiv", {"ssn"}, "sensitive"),
        ("default_channel_enabled", {"email": False}, "default_channels_enabled"),
    ],
)
def test_near_misses_of_attributes(name: str, value: Any, meant: str) -> None:
    with pytest.raises(InvalidNotifierError, match=rf"did you mean `{meant}`\?"):
        type(f"Typo_{name}", (Notifier,), {"key": f"options_test_{name}", name: value})


def test_near_misses_of_methods() -> None:
    with pytest.raises(InvalidNotifierError, match=r"`recipient` is not a Notifier option; did you mean `recipients`\?"):

        class Welcome(Notifier):
            key = "options_test_welcome"

            def recipient(self, params: Mapping[str, Any]) -> list[Recipient]:
                return [Recipient(id="user:1")]


def test_names_of_ones_own_are_left_alone() -> None:
    class Reminder(Notifier):
        key = "options_test_reminder"
        channels = ["in_app"]
        templates = {"in_app": {"title": "{{ title }}"}}
        subject_prefix = "[shop]"
        MAX_ITEMS = 5
        _dedupe = "private"

        def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
            return [Recipient(id="user:1")]

        def build_url(self, params: Mapping[str, Any]) -> str:
            return "https://shop.example"

    assert registered_notifiers()["options_test_reminder"] is Reminder
