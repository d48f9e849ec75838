"""Slack: an incoming webhook, or a bot token calling ``chat.postMessage``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from chimeway.channels._http import HTTPChannel, classify_http, json_object, parse_retry_after
from chimeway.errors import ConfigurationError
from chimeway.values import DeliveryResult, Message, Recipient

__all__ = ["Slack"]

# chat.postMessage reports errors with HTTP 200 and {"ok": false, "error": code}.
TEMPORARY_ERRORS = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "team_added_to_org",
    }
)
PERMANENT_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "channel_not_found",
        "is_archived",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "missing_scope",
        "not_in_channel",
        "msg_too_long",
        "no_text",
        "invalid_blocks",
        "restricted_action",
    }
)


def parse_blocks(raw: Any) -> list[Any]:
    """Read the ``blocks`` field: a JSON array, or an object with a ``blocks`` array.

    Templates render strings, so blocks usually arrive as JSON text; an
    already-parsed list is accepted as well.

    Raises:
        ValueError: the value is not valid JSON or not a list of blocks.
    """
    value = json.loads(raw) if isinstance(raw, str | bytes) else raw
    if isinstance(value, dict) and "blocks" in value:
        value = value["blocks"]
    if not isinstance(value, list) or not all(isinstance(block, dict) for block in value):
        raise ValueError("blocks must be a JSON array of block objects")
    return value


class Slack(HTTPChannel):
    """Post to Slack through an incoming webhook or ``chat.postMessage``.

    Give either ``webhook_url`` (incoming webhook: the answer is the text
    ``ok`` or an error word such as ``invalid_payload`` or ``no_service``)
    or ``token`` (a bot token; the Web API answers JSON with ``ok`` and, on
    success, the message ``ts`` recorded as the provider message id).

    Fields read: ``text`` (the message, and the notification fallback when
    blocks are given), ``blocks`` (optional, a JSON array of Block Kit
    blocks), ``channel`` (optional, overrides the configured channel in bot
    mode). The recipient's ``data["slack_channel"]`` is used when neither is set.

    Args:
        webhook_url: an incoming webhook URL (it embeds a secret; it is never
            put in results).
        token: a bot token (``xoxb-...``) for ``chat.postMessage``.
        channel: the default channel id or name for bot mode.
        base_url: the Web API root.
        timeout: seconds for connect/read/write.
        client: an ``httpx.Client`` to use instead of a pooled one of its own.
    """

    def __init__(
        self,
        webhook_url: str | None = None,
        *,
        token: str | None = None,
        channel: str | None = None,
        base_url: str = "https://slack.com/api",
        timeout: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        if (webhook_url is None) == (token is None):
            raise ConfigurationError("Slack needs exactly one of webhook_url= or token=")
        super().__init__(base_url=base_url, timeout=timeout, client=client)
        self.webhook_url = webhook_url
        self._token = token
        self.channel = channel

    def __repr__(self) -> str:
        mode = "webhook" if self.webhook_url else f"bot channel={self.channel!r}"
        return f"Slack({mode})"

    def _target_channel(self, fields: Mapping[str, Any], recipient: Recipient) -> str | None:
        value = fields.get("channel") or self.channel or recipient.data.get("slack_channel")
        return str(value) if value else None

    def validate(self, fields: Mapping[str, Any], recipient: Recipient) -> str | None:
        """Refuse messages Slack would reject whatever the retry.

        Args:
            fields: the rendered fields.
            recipient: the recipient.
        """
        if not fields.get("text") and not fields.get("blocks"):
            return "Slack message needs a 'text' or 'blocks' field"
        if fields.get("blocks"):
            try:
                parse_blocks(fields["blocks"])
            except ValueError as exc:
                return f"Slack 'blocks' field is not valid: {exc}"
        if self._token is not None and self._target_channel(fields, recipient) is None:
            return "Slack bot mode needs a channel (channel=, fields['channel'] or recipient.data['slack_channel'])"
        return None

    def _build(self, message: Message) -> tuple[str, dict[str, Any], dict[str, str]]:
        body: dict[str, Any] = {}
        if message.fields.get("text"):
            body["text"] = str(message.fields["text"])
        if message.fields.get("blocks"):
            body["blocks"] = parse_blocks(message.fields["blocks"])
        if self.webhook_url is not None:
            return self.webhook_url, body, {}
        body["channel"] = self._target_channel(message.fields, message.recipient)
        return (
            self.url("/chat.postMessage"),
            body,
            {"authorization": f"Bearer {self._token}"},
        )

    def _interpret(self, response: httpx.Response | DeliveryResult) -> DeliveryResult:
        if isinstance(response, DeliveryResult):
            return response
        if self.webhook_url is not None:
            return _classify_webhook(response)
        return _classify_api(response)

    def send(self, message: Message) -> DeliveryResult:
        """Post ``message`` once.

        Args:
            message: the rendered message.
        """
        try:
            url, body, headers = self._build(message)
        except ValueError as exc:
            return DeliveryResult.permanent(f"Slack blocks: {exc}", error_class="invalid_blocks")
        return self._interpret(self.request("POST", url, json=body, headers=headers))

    async def send_async(self, message: Message) -> DeliveryResult:
        """Native async variant of :meth:`send`.

        Args:
            message: the rendered message.
        """
        try:
            url, body, headers = self._build(message)
        except ValueError as exc:
            return DeliveryResult.permanent(f"Slack blocks: {exc}", error_class="invalid_blocks")
        return self._interpret(await self.request_async("POST", url, json=body, headers=headers))


def _error_word(response: httpx.Response) -> str | None:
    text = response.text.strip()
    # Incoming webhooks answer a single snake_case word; anything else (an
    # HTML error page from a proxy) is not a vendor code.
    if text and len(text) <= 64 and text.replace("_", "").isalnum():
        return text
    return None


def _classify_webhook(response: httpx.Response) -> DeliveryResult:
    if 200 <= response.status_code < 300:
        return DeliveryResult.ok()
    code = _error_word(response)
    return classify_http(response, vendor_code=code, detail=code)


def _classify_api(response: httpx.Response) -> DeliveryResult:
    document = json_object(response)
    if not isinstance(document, dict):
        if 200 <= response.status_code < 300:
            return DeliveryResult.temporary(
                "Slack answered 2xx without a JSON body", error_class="invalid_response"
            )
        return classify_http(response)
    error = document.get("error")
    code = str(error) if error else None
    if response.status_code != 200:
        return classify_http(response, vendor_code=code, detail=code)
    if document.get("ok") is True:
        ts = document.get("ts")
        return DeliveryResult.ok(provider_message_id=str(ts) if ts else None)
    detail = f"Slack error: {code}"
    if code in TEMPORARY_ERRORS:
        return DeliveryResult.temporary(
            detail,
            error_class=f"slack_{code}",
            vendor_code=code,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
    # Unknown codes are treated as permanent: Slack documents its transient
    # errors explicitly, and retrying a malformed request only repeats it.
    error_class = f"slack_{code}" if code in PERMANENT_ERRORS else "slack_error"
    return DeliveryResult.permanent(detail, error_class=error_class, vendor_code=code)
