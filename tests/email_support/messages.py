"""Rendered messages as the executor hands them to a channel."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from chimeway.values import Message, Recipient

DEFAULT_FIELDS: Mapping[str, Any] = {
    "subject": "Your order 7 shipped",
    "text": "Track it at https://shop.example/track/7",
    "html": "<p>Track it <a href='https://shop.example/track/7'>here</a></p>",
}


def make_message(
    fields: Mapping[str, Any] | None = None,
    *,
    recipient: Recipient | None = None,
    delivery_id: uuid.UUID | None = None,
    channel: str = "email",
) -> Message:
    """A message for ``recipient`` (default: Ada at ada@example.test)."""
    return Message(
        delivery_id=delivery_id or uuid.uuid4(),
        notification_id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        tenant="acme",
        channel=channel,
        notifier_key="order_shipped",
        recipient=recipient
        or Recipient(id="user:1", email="ada@example.test", name="Ada Lovelace"),
        fields=dict(DEFAULT_FIELDS if fields is None else fields),
    )
