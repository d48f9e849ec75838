"""A channel that writes each message to a Python logger (development, audits)."""

from __future__ import annotations

import logging

from chimeway.channels.base import Channel
from chimeway.values import DeliveryResult, Message

__all__ = ["Log"]

_PREVIEW_FIELDS = ("subject", "title", "text", "body")


class Log(Channel):
    """Log a one-line summary of every message and report success.

    The line names the delivery, notifier, recipient and tenant, the field
    names, and a short preview of the first of ``subject``, ``title``,
    ``text`` or ``body``. The whole message is attached to the record as
    ``extra`` attributes (``delivery_id``, ``notifier_key``, ``fields``) for
    structured handlers.

    Args:
        logger: a logger or a logger name.
        level: the level to log at.
        preview: characters of the preview field to include.
    """

    def __init__(
        self,
        logger: str | logging.Logger = "chimeway.deliveries",
        level: int = logging.INFO,
        *,
        preview: int = 80,
    ) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level
        self.preview = preview

    def summary(self, message: Message) -> str:
        """The one-line text logged for ``message``."""
        parts = [
            f"delivery {message.delivery_id}",
            f"notifier={message.notifier_key}",
            f"channel={message.channel}",
            f"recipient={message.recipient.id}",
        ]
        if message.tenant is not None:
            parts.append(f"tenant={message.tenant}")
        parts.append(f"attempt={message.attempt}")
        parts.append(f"fields={','.join(sorted(message.fields))}")
        for name in _PREVIEW_FIELDS:
            value = message.fields.get(name)
            if value:
                # Collapse whitespace so a multi-line body stays one log line.
                text = " ".join(str(value).split())
                if len(text) > self.preview:
                    text = text[: self.preview - 1] + "…"
                parts.append(f"{name}={text!r}")
                break
        return " ".join(parts)

    def send(self, message: Message) -> DeliveryResult:
        """Log ``message`` and report success.

        Args:
            message: the rendered message.
        """
        self.logger.log(
            self.level,
            "%s",
            self.summary(message),
            extra={
                "delivery_id": str(message.delivery_id),
                "notifier_key": message.notifier_key,
                "fields": dict(message.fields),
            },
        )
        return DeliveryResult.ok()

    async def send_async(self, message: Message) -> DeliveryResult:
        """Log ``message`` on the event loop: a log call is too quick to be worth a thread.

        Args:
            message: the rendered message.
        """
        return self.send(message)
