"""Notifiers and helpers shared by the policy tests."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from chimeway import Chimeway, Notifier, Recipient, TriggerResult
from chimeway.digest import Digest
from chimeway.models import deliveries_table, metadata


class Comment(Notifier):
    key = "policy_test_comment"
    category = "social"
    channels = ["in_app", "email"]
    templates = {
        "in_app": {"title": "New comment on {{ post }}"},
        "email": {"subject": "New comment on {{ post }}", "body": "{{ text }}"},
    }

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=str(params.get("to", "user:1")), email="u1@example.com")]


class PasswordReset(Notifier):
    key = "policy_test_password_reset"
    category = "account"
    channels = ["email"]
    critical = True
    templates = {"email": {"subject": "Reset your password", "body": "code {{ code }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id="user:1", email="u1@example.com")]


class Activity(Notifier):
    key = "policy_test_activity"
    channels = ["in_app", "email"]
    templates = {
        "in_app": {"title": "{{ who }} commented"},
        "email": {"subject": "{{ who }} commented", "body": "{{ who }}"},
    }
    digest = Digest(
        window=timedelta(hours=1),
        key=lambda params: params.get("project"),
        templates={"email": {
            "subject": "{{ count }} new comments",
            "body": "{% for e in events %}{{ e.who }};{% endfor %}",
        }},
    )

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id="user:1", email="u1@example.com")]


def fire(app: Chimeway, notifier: type[Notifier], params: Mapping[str, Any] | None = None, *,
         key: str | None = None, tenant: str | None = None) -> TriggerResult:
    """Trigger in a session of our own and commit (the sync dispatcher then delivers)."""
    with Session(app.engine) as session, session.begin():
        return app.trigger(session, notifier, dict(params or {}), idempotency_key=key or uuid.uuid4().hex,
                           tenant=tenant)


def delivery(app: Chimeway, result: TriggerResult, channel: str) -> Any:
    """The event's delivery row on ``channel``."""
    d = deliveries_table
    with app.engine.connect() as conn:
        return conn.execute(sa.select(d).where(d.c.event_id == result.event_id, d.c.channel == channel)).one()


def row_counts(engine: sa.Engine) -> dict[str, int]:
    """Rows in every Chimeway table."""
    with engine.connect() as conn:
        return {name: int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
                for name, table in metadata.tables.items()}


def summaries(app: Chimeway, delivery_id: uuid.UUID) -> list[tuple[str, str | None, str]]:
    """``(event, checkpoint, summary)`` for every policy decision in the timeline."""
    return [(e.event, e.detail.get("checkpoint"), str(e.detail.get("summary")))
            for e in app.explain(delivery_id).timeline if "summary" in e.detail]
