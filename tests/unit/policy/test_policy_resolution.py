"""Preference resolution order and the policy value objects."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chimeway import Notifier, Recipient
from chimeway.digest import Digest
from chimeway.errors import ConfigurationError, InvalidNotifierError
from chimeway.policy import Cap, Dedupe, caps_of, dedupe_of
from chimeway.preferences import PreferenceEntry, resolve

AT = datetime(2026, 1, 1, tzinfo=UTC)


class Mention(Notifier):
    key = "policy_unit_mention"
    category = "social"
    channels = ["email", "sms"]
    templates = {"email": {"subject": "x"}, "sms": {"body": "x"}}
    default_channels_enabled = {"sms": False}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return []


class Alarm(Mention):
    key = "policy_unit_alarm"
    critical = True


def pref(scope: str, key: str, channel: str, enabled: bool) -> PreferenceEntry:
    return PreferenceEntry(scope=scope, scope_key=key, channel=channel, enabled=enabled, source="api",
                           updated_at=AT)


LADDER = [
    pref("all", "", "*", False),
    pref("all", "", "email", True),
    pref("category", "social", "*", False),
    pref("category", "social", "email", True),
    pref("notifier", Mention.key, "*", False),
    pref("notifier", Mention.key, "email", True),
]


@pytest.mark.parametrize("depth", range(1, len(LADDER) + 1))
def test_more_specific_rows_win(depth: int) -> None:
    rows = LADDER[:depth]
    resolution = resolve(list(reversed(rows)), Mention, "email")
    assert resolution.enabled is rows[-1].enabled
    assert resolution.entry == rows[-1]


def test_defaults() -> None:
    assert resolve([], Mention, "email").rule == "default"
    sms = resolve([], Mention, "sms")
    assert (sms.enabled, sms.rule) == (False, "notifier_default")
    assert resolve([pref("all", "", "sms", True)], Mention, "sms").enabled is True


def test_other_notifiers_and_categories_do_not_apply() -> None:
    rows = [pref("notifier", "something_else", "*", False), pref("category", "billing", "*", False)]
    assert resolve(rows, Mention, "email").enabled is True


def test_critical_overrides_an_opt_out_and_says_so() -> None:
    resolution = resolve([pref("all", "", "*", False)], Alarm, "email")
    assert (resolution.enabled, resolution.rule) == (True, "critical")
    assert resolution.why == "critical notifier bypasses opt-outs (opted out of everything × every channel (via api))"


def test_value_objects_refuse_nonsense() -> None:
    with pytest.raises(ConfigurationError):
        Cap(limit=-1, window=timedelta(hours=1))
    with pytest.raises(ConfigurationError):
        Cap(limit=1, window=timedelta(0))
    with pytest.raises(InvalidNotifierError):
        Dedupe(key="thread", window=timedelta(hours=1))  # type: ignore[arg-type]
    with pytest.raises(InvalidNotifierError):
        Digest(window=timedelta(hours=-1))
    with pytest.raises(InvalidNotifierError):
        Digest(window=timedelta(hours=1), max_items=0)


def test_notifier_attributes_are_checked() -> None:
    class BadCaps(Mention):
        key = "policy_unit_bad_caps"
        caps = [5]

    class BadDedupe(Mention):
        key = "policy_unit_bad_dedupe"
        dedupe_key = "thread"

    with pytest.raises(InvalidNotifierError):
        caps_of(BadCaps)
    with pytest.raises(InvalidNotifierError):
        dedupe_of(BadDedupe)


def test_digest_channels_and_keys() -> None:
    default = Digest(window=timedelta(hours=1))
    assert (default.applies_to("email"), default.applies_to("in_app")) == (True, False)
    only_sms = Digest(window=timedelta(hours=1), channels=["sms"], key=lambda p: p["project"])
    assert (only_sms.applies_to("email"), only_sms.applies_to("sms")) == (False, True)
    assert only_sms.key_for({"project": 7}) == "7"
    assert default.key_for({"project": 7}) == ""
