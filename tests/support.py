"""Notifiers and helpers shared by the tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from chimeway import Notifier, Recipient
from chimeway.models import metadata


class Welcome(Notifier):
    key = "test_welcome"
    category = "account"
    channels = ["in_app", "rec"]
    templates = {
        "in_app": {"title": "Welcome {{ name }}", "body": "Hello {{ recipient.id }}"},
        "rec": {"body": "Welcome {{ name }}"},
    }

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=uid, email=f"{uid}@example.test") for uid in params.get("users", ["user:1"])]


class OnlyRec(Notifier):
    key = "test_only_rec"
    channels = ["rec"]
    templates = {"rec": {"body": "n={{ n }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=params.get("user", "user:1"))]


def count_rows(engine: sa.Engine) -> dict[str, int]:
    """Row counts of every Chimeway table."""
    with engine.connect() as conn:
        return {
            name: int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
            for name, table in metadata.tables.items()
        }


def total_rows(engine: sa.Engine) -> int:
    return sum(count_rows(engine).values())
