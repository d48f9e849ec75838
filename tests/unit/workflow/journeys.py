"""Notifiers with workflows shared by the workflow tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from chimeway import Chimeway, Notifier, Recipient
from chimeway.testing import FakeClock, RecordingChannel
from chimeway.workflow import deliver, goto, stop, wait


@dataclass
class Harness:
    app: Chimeway
    clock: FakeClock
    email: RecordingChannel
    sms: RecordingChannel
    push: RecordingChannel


def manager_of(params: Mapping[str, Any], recipient: Recipient) -> Recipient:
    return Recipient(id=str(params.get("manager", "user:boss")), phone="+15550100")


class Mention(Notifier):
    key = "wf_mention"
    templates = {
        "in_app": {"title": "{{ who }} mentioned you", "body": "{{ text }}"},
        "email": {"subject": "{{ who }} mentioned you", "body": "{{ text }}"},
        "sms": {"body": "{{ recipient.id }}: {{ who }} is waiting"},
    }
    workflow = [
        deliver("in_app"),
        wait(minutes=30, unless="notification.read"),
        deliver("email"),
        wait(hours=4, unless="notification.read"),
        deliver("sms", to=manager_of),
    ]

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=uid, email=f"{uid}@example.test") for uid in params.get("users", ["user:1"])]


class Fallback(Notifier):
    key = "wf_fallback"
    templates = {"push": {"body": "hi"}, "email": {"body": "hi by mail"}, "in_app": {"body": "hi"}}
    workflow = [
        deliver("push", on_failure="email"),
        deliver("in_app"),
    ]

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=params.get("user", "user:1"))]


class Paid(Notifier):
    key = "wf_paid"
    templates = {"email": {"body": "pay please"}, "in_app": {"body": "thanks"}}
    workflow = [
        wait(until="order.paid", timeout=timedelta(days=1)),
        deliver("in_app"),
        stop(),
        deliver("email"),
    ]

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=params.get("user", "user:1"))]


class Race(Notifier):
    """One wait that a read stops; when it elapses, one email and the run completes."""

    key = "wf_race"
    templates = {"in_app": {"body": "ping"}, "email": {"body": "ping by mail"}}
    workflow = [deliver("in_app"), wait(minutes=30, unless="notification.read"), deliver("email")]

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=params.get("user", "user:1"))]


class Routed(Notifier):
    """Email first; where the run goes next depends on how the email ended."""

    key = "wf_routed"
    templates = {"email": {"body": "e"}, "sms": {"body": "s"}, "push": {"body": "p"}, "in_app": {"body": "i"}}
    workflow = [
        deliver("email", on={
            "succeeded": "done",
            "bounced": stop(),
            "suppressed": "sms_step",
            "retries_exhausted": deliver("push"),
            "permanent": [deliver("push"), goto("done")],
        }),
        deliver("sms", name="sms_step"),
        wait(hours=1, name="done", unless="notification.read"),
        deliver("in_app"),
    ]

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=params.get("user", "user:1"), email="u@example.test", phone="+15550100")]
