"""``InApp``: the notification row itself is the inbox item."""

from __future__ import annotations

from typing import ClassVar

from chimeway.channels.base import Channel
from chimeway.values import DeliveryResult, Message

__all__ = ["InApp"]


class InApp(Channel):
    """Makes the notification visible in the recipient's inbox.

    Nothing leaves the database: on success the executor stamps the
    notification's ``inbox_at`` and stores the rendered fields (e.g. ``title``,
    ``body``, ``url``) as the item's content, in the same transaction that
    marks the delivery ``succeeded``.
    """

    inbox: ClassVar[bool] = True

    def send(self, message: Message) -> DeliveryResult:
        return DeliveryResult.ok(provider_message_id=str(message.notification_id))
