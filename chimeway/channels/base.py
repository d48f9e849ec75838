"""The ``Channel`` base class: the one plug-in point for sending.

A channel turns a rendered :class:`~chimeway.values.Message` into a provider
call and reports a :class:`~chimeway.values.DeliveryResult`. It never touches
the database: the executor records attempts and statuses around it.

Writing a custom channel::

    class Pager(Channel):
        required_fields = ("body",)

        def send(self, message: Message) -> DeliveryResult:
            accepted = pager_api.page(message.fields["body"], key=str(message.delivery_id))
            return DeliveryResult.ok() if accepted else DeliveryResult.temporary("busy")

For an HTTP API, subclass :class:`chimeway.channels.HTTPChannel` instead:
it pools connections and classifies responses and ``Retry-After``.

An exception escaping ``send`` is recorded as a temporary failure with the
exception's class name, so a bug in a channel never loses a delivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, ClassVar

from chimeway.values import DeliveryResult, Feedback, Message, Recipient

__all__ = ["Channel"]


class Channel:
    """Base class for every channel.

    Subclasses implement :meth:`send`. They may override :meth:`send_async`
    when they have a native async client, and :meth:`validate` to cancel a
    delivery at planning time when the message cannot be sent (no phone
    number for SMS, body over the provider's limit).

    Attributes:
        required_fields: rendered fields a message must have for this channel.
        inbox: ``True`` for channels whose delivery is the notification row
            becoming an inbox item (``InApp``); the executor marks the row in
            the same transaction as the delivery's success.
    """

    required_fields: ClassVar[tuple[str, ...]] = ()
    inbox: ClassVar[bool] = False

    def send(self, message: Message) -> DeliveryResult:
        """Send ``message`` once and report what happened.

        Args:
            message: the rendered message, with its stable ``delivery_id``.
        """
        raise NotImplementedError(f"{type(self).__name__}.send is not implemented")

    async def send_async(self, message: Message) -> DeliveryResult:
        """Async variant of :meth:`send`; by default runs ``send`` in a thread."""
        return await asyncio.to_thread(self.send, message)

    def validate(self, fields: Mapping[str, Any], recipient: Recipient) -> str | None:
        """Return why this message can never be sent, or ``None`` if it can.

        Called at planning time; a non-``None`` answer cancels the delivery
        with that reason instead of attempting it.

        Args:
            fields: the rendered fields.
            recipient: the recipient the message is for.
        """
        missing = [name for name in self.required_fields if not fields.get(name)]
        if missing:
            return f"missing required field(s) for this channel: {', '.join(missing)}"
        return None

    def parse_feedback(
        self, headers: Mapping[str, str], body: bytes, *, url: str | None = None
    ) -> list[Feedback]:
        """Verify and parse a provider's inbound status webhook.

        Channels whose provider reports delivery status override this. It must
        raise :class:`~chimeway.errors.SignatureError` when the request is not
        authentic (bad or missing signature) and change nothing.

        Args:
            headers: the request headers (any case).
            body: the raw request body, exactly as received.
            url: the full URL the provider called (some providers sign it).
        """
        from chimeway.errors import ConfigurationError

        raise ConfigurationError(f"channel {type(self).__name__} does not accept provider feedback")

    def close(self) -> None:
        """Release pooled connections; the app calls this on ``close()``."""
