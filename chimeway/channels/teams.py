"""Microsoft Teams: post an Adaptive Card to a Workflows (Power Automate) webhook."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from chimeway.channels._http import HTTPChannel, classify_http, json_object
from chimeway.errors import ConfigurationError
from chimeway.values import DeliveryResult, Message

__all__ = ["Teams", "adaptive_card"]

CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"


def adaptive_card(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Build the Workflows message payload for rendered ``fields``.

    ``title`` becomes a bold heading, ``body`` a wrapped text block, and
    ``url`` (with optional ``url_title``) an "open URL" action.

    Args:
        fields: the rendered fields.
    """
    blocks: list[dict[str, Any]] = []
    if fields.get("title"):
        blocks.append(
            {
                "type": "TextBlock",
                "text": str(fields["title"]),
                "weight": "Bolder",
                "size": "Medium",
                "wrap": True,
            }
        )
    if fields.get("body"):
        blocks.append({"type": "TextBlock", "text": str(fields["body"]), "wrap": True})
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": blocks,
    }
    if fields.get("url"):
        card["actions"] = [
            {
                "type": "Action.OpenUrl",
                "title": str(fields.get("url_title") or "Open"),
                "url": str(fields["url"]),
            }
        ]
    return {
        "type": "message",
        "attachments": [{"contentType": CARD_CONTENT_TYPE, "contentUrl": None, "content": card}],
    }


class Teams(HTTPChannel):
    """Post an Adaptive Card to a Teams channel through a Workflows webhook.

    The Workflows trigger answers ``202 Accepted`` with no body and no
    message id. Errors come back as ``{"error": {"code": ..., "message": ...}}``;
    the code is kept as the vendor code.

    Fields read: ``title`` (optional heading), ``body`` (required text),
    ``url`` and ``url_title`` (optional button).

    Args:
        webhook_url: the workflow's HTTP trigger URL (it carries a ``sig``
            secret; it is never put in results).
        timeout: seconds for connect/read/write.
        client: an ``httpx.Client`` to use instead of a pooled one of its own.
    """

    required_fields = ("body",)

    def __init__(
        self, webhook_url: str, *, timeout: float = 10.0, client: httpx.Client | None = None
    ) -> None:
        if not webhook_url.startswith(("http://", "https://")):
            raise ConfigurationError("Teams webhook_url must start with http:// or https://")
        super().__init__(timeout=timeout, client=client)
        self.webhook_url = webhook_url

    def __repr__(self) -> str:
        return "Teams(webhook)"

    def send(self, message: Message) -> DeliveryResult:
        """Post the card once.

        Args:
            message: the rendered message.
        """
        return _classify(self.request("POST", self.webhook_url, json=adaptive_card(message.fields)))

    async def send_async(self, message: Message) -> DeliveryResult:
        """Native async variant of :meth:`send`.

        Args:
            message: the rendered message.
        """
        return _classify(
            await self.request_async("POST", self.webhook_url, json=adaptive_card(message.fields))
        )


def _classify(response: httpx.Response | DeliveryResult) -> DeliveryResult:
    if isinstance(response, DeliveryResult):
        return response
    if 200 <= response.status_code < 300:
        return DeliveryResult.ok()
    document = json_object(response)
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or "") or None
        text = str(error.get("message") or "")[:300]
        detail = f"{code}: {text}" if code and text else (code or text or None)
        return classify_http(response, vendor_code=code, detail=detail)
    return classify_http(response)
