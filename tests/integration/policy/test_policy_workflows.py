"""Workflow notifiers: their step deliveries meet the rules at the pre-send checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from policy_support import delivery, fire, summaries

from chimeway import Chimeway, Notifier, Recipient
from chimeway.models import cap_usage_table
from chimeway.policy import Cap
from chimeway.testing import RecordingChannel
from chimeway.workflow import deliver


class Journey(Notifier):
    key = "policy_test_journey"
    channels = ["email"]
    templates = {"email": {"subject": "step", "body": "b"}}
    workflow = [deliver("email")]

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id="user:1", email="u1@example.com")]


def test_opt_out_applies_to_workflow_deliveries(app: Chimeway, email: RecordingChannel) -> None:
    app.preferences("user:1").set(channel="email", enabled=False, notifier=Journey)
    row = delivery(app, fire(app, Journey), "email")
    assert (row.status, row.reason) == ("suppressed", "opted_out")
    assert [(e, c) for e, c, _ in summaries(app, row.id)] == [("suppressed", "before_send")]
    assert email.calls == []


def test_caps_count_each_workflow_delivery_once(app: Chimeway, email: RecordingChannel) -> None:
    app.configure_policy(caps=[Cap(limit=1, window=timedelta(hours=1), channel="email")])
    first = delivery(app, fire(app, Journey), "email")
    second = delivery(app, fire(app, Journey), "email")
    assert (first.status, second.status, second.reason) == ("succeeded", "suppressed", "cap_reached")
    with app.engine.connect() as conn:
        used = conn.execute(sa.select(cap_usage_table.c.delivery_id)).scalars().all()
    assert used == [first.id]
    assert len(email.sent) == 1
