"""Discord: execute a channel webhook and keep the created message's id."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from chimeway.channels._http import HTTPChannel, classify_http, json_object
from chimeway.errors import ConfigurationError
from chimeway.values import DeliveryResult, Message, Recipient

__all__ = ["Discord"]

CONTENT_LIMIT = 2000


def _content(fields: Mapping[str, Any]) -> str:
    return str(fields.get("text") or fields.get("body") or "")


class Discord(HTTPChannel):
    """Post messages through a Discord webhook.

    Requests use ``?wait=true`` so Discord answers with the created message,
    whose ``id`` becomes the provider message id. A 429 carries
    ``retry_after`` seconds in its JSON body, which is honoured.

    Fields read: ``text`` (or ``body``) as the message content, at most
    2000 characters; ``username`` (optional) to override the webhook's name.

    Args:
        webhook_url: ``https://discord.com/api/webhooks/<id>/<token>`` (it
            embeds a secret; it is never put in results).
        username: a default display name overriding the webhook's own.
        timeout: seconds for connect/read/write.
        client: an ``httpx.Client`` to use instead of a pooled one of its own.
    """

    def __init__(
        self,
        webhook_url: str,
        *,
        username: str | None = None,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        if not webhook_url.startswith(("http://", "https://")):
            raise ConfigurationError("Discord webhook_url must start with http:// or https://")
        super().__init__(timeout=timeout, client=client)
        self.webhook_url = webhook_url
        self.username = username

    def __repr__(self) -> str:
        return "Discord(webhook)"

    def validate(self, fields: Mapping[str, Any], recipient: Recipient) -> str | None:
        """Refuse empty or over-long content.

        Args:
            fields: the rendered fields.
            recipient: the recipient.
        """
        content = _content(fields)
        if not content.strip():
            return "Discord message needs a 'text' or 'body' field"
        if len(content) > CONTENT_LIMIT:
            return f"Discord content is {len(content)} characters; the limit is {CONTENT_LIMIT}"
        return None

    def _build(self, message: Message) -> dict[str, Any]:
        body: dict[str, Any] = {
            "content": _content(message.fields),
            # Rendered text must not ping @everyone or roles by accident.
            "allowed_mentions": {"parse": []},
        }
        username = message.fields.get("username") or self.username
        if username:
            body["username"] = str(username)
        return body

    def send(self, message: Message) -> DeliveryResult:
        """Execute the webhook once.

        Args:
            message: the rendered message.
        """
        response = self.request(
            "POST", self.webhook_url, params={"wait": "true"}, json=self._build(message)
        )
        return _classify(response)

    async def send_async(self, message: Message) -> DeliveryResult:
        """Native async variant of :meth:`send`.

        Args:
            message: the rendered message.
        """
        response = await self.request_async(
            "POST", self.webhook_url, params={"wait": "true"}, json=self._build(message)
        )
        return _classify(response)


def _classify(response: httpx.Response | DeliveryResult) -> DeliveryResult:
    if isinstance(response, DeliveryResult):
        return response
    document = json_object(response)
    if not isinstance(document, dict):
        return classify_http(response)
    if 200 <= response.status_code < 300:
        message_id = document.get("id")
        return DeliveryResult.ok(provider_message_id=str(message_id) if message_id else None)
    code = document.get("code")
    vendor_code = str(code) if code is not None else None
    text = str(document.get("message") or "")[:300] or None
    result = classify_http(response, vendor_code=vendor_code, detail=text)
    if response.status_code == 429:
        retry_after = document.get("retry_after")
        if isinstance(retry_after, int | float) and retry_after >= 0:
            # The body's value is more precise than the header's whole seconds.
            return DeliveryResult.temporary(
                result.detail or "rate limited",
                error_class=result.error_class,
                vendor_code=vendor_code,
                retry_after=float(retry_after),
            )
    return result
