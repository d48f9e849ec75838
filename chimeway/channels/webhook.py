"""Signed outbound webhooks following the Standard Webhooks specification.

Every request carries three headers:

- ``webhook-id``: ``msg_<delivery_id>``, the same on every retry, so receivers
  can use it as an idempotency key;
- ``webhook-timestamp``: the attempt's time in unix seconds;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` over
  ``"{id}.{timestamp}.{body}"``.

Receivers verify with :func:`verify_webhook`. The same scheme signs the
status callbacks a receiver may send back, which :meth:`Webhook.parse_feedback`
accepts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import httpx

from chimeway.channels._http import HTTPChannel, classify_http
from chimeway.channels._signing import as_bytes, lowered_headers, unix_seconds
from chimeway.errors import ConfigurationError, SignatureError
from chimeway.values import DeliveryResult, Feedback, FeedbackStatus, Message

__all__ = ["Webhook", "sign_webhook", "verify_webhook"]

Secret = str | bytes

SECRET_PREFIX = "whsec_"
_FEEDBACK_STATUSES: frozenset[str] = frozenset(
    {"delivered", "bounced", "failed", "complained", "opened", "clicked"}
)


def _secret_key(secret: Secret) -> bytes:
    """The HMAC key for ``secret``.

    ``whsec_``-prefixed strings are base64 as the specification serialises
    them; bytes are used as they are; any other string is its UTF-8 bytes.
    """
    if isinstance(secret, bytes):
        key = secret
    elif secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except ValueError as exc:
            raise ConfigurationError("webhook secret: whsec_ value is not valid base64") from exc
    else:
        key = secret.encode()
    if not key:
        raise ConfigurationError("webhook secret is empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: int, payload: bytes) -> str:
    signed = b"%s.%d.%s" % (as_bytes(msg_id), timestamp, payload)
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def sign_webhook(
    payload: bytes, secret: Secret, *, msg_id: str, timestamp: int | None = None
) -> dict[str, str]:
    """Return the three Standard Webhooks headers for ``payload``.

    Args:
        payload: the exact request body.
        secret: ``whsec_<base64>``, raw bytes, or a plain string (its UTF-8 bytes).
        msg_id: the message id, stable across retries; must not contain ``.``.
        timestamp: unix seconds of the attempt; now when omitted.
    """
    if "." in msg_id:
        raise ValueError("webhook msg_id must not contain '.'")
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": f"v1,{_signature(_secret_key(secret), msg_id, ts, payload)}",
    }


def verify_webhook(
    payload: bytes,
    headers: Mapping[str, str],
    secret: Secret,
    *,
    tolerance: float = 300,
    now: float | datetime | None = None,
) -> dict[str, Any]:
    """Verify a Standard Webhooks request and return its JSON body.

    Any one of several space-separated ``v1`` signatures may match, which is
    how senders rotate secrets without downtime.

    Args:
        payload: the raw body exactly as received (not re-serialised JSON).
        headers: the request headers, any case.
        secret: the endpoint's secret (``whsec_<base64>``, bytes or string).
        tolerance: seconds the timestamp may differ from ``now``; replays
            older than this are refused.
        now: the current time (unix seconds or aware datetime); the clock when omitted.

    Raises:
        SignatureError: a header is missing, the timestamp is malformed or
            outside the tolerance, no signature matches, or the body is not
            a JSON object.
    """
    lowered = lowered_headers(headers)
    missing = [
        name
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
        if not lowered.get(name)
    ]
    if missing:
        raise SignatureError(f"missing webhook header(s): {', '.join(missing)}")
    msg_id = lowered["webhook-id"]
    timestamp = unix_seconds(lowered["webhook-timestamp"], name="webhook-timestamp")
    if now is None:
        current = time.time()
    elif isinstance(now, datetime):
        current = now.timestamp()
    else:
        current = float(now)
    if abs(current - timestamp) > tolerance:
        raise SignatureError(
            f"webhook-timestamp is outside the {tolerance:g}s tolerance (possible replay)"
        )
    body_bytes = as_bytes(payload)
    expected = _signature(_secret_key(secret), msg_id, timestamp, body_bytes).encode()
    for candidate in lowered["webhook-signature"].split():
        version, _, value = candidate.partition(",")
        # Other schemes (v1a asymmetric) may sit beside ours; skip, do not fail.
        if version == "v1" and hmac.compare_digest(as_bytes(value), expected):
            break
    else:
        raise SignatureError("no webhook-signature matches the payload")
    try:
        body = json.loads(body_bytes)
    except (ValueError, RecursionError) as exc:
        raise SignatureError("webhook body is not JSON") from exc
    if not isinstance(body, dict):
        raise SignatureError("webhook body is not a JSON object")
    return cast(dict[str, Any], body)


def _dumps(value: Any) -> bytes:
    # Compact and deterministic: the bytes sent are exactly the bytes signed.
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str).encode()


def _iso(value: datetime | None) -> str:
    when = value or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Webhook(HTTPChannel):
    """POST each message as signed JSON to one URL.

    The body is ``{"type": notifier_key, "timestamp": iso, "data": {...}}``
    where ``data`` holds ``delivery_id``, ``notification_id``, ``event_id``,
    ``tenant``, ``recipient`` and the rendered ``fields``. 2xx succeeds;
    408, 429 and 5xx, timeouts and refused connections are retried
    (``Retry-After`` honoured); any other status is permanent.

    Args:
        url: the receiver's endpoint.
        secret: signing secret (``whsec_<base64>``, bytes or string); unsigned when ``None``.
        headers: extra headers sent with every request.
        timeout: seconds for connect/read/write.
        client: an ``httpx.Client`` to use instead of a pooled one of its own.
        feedback_tolerance: seconds of clock skew accepted on signed callbacks.
    """

    def __init__(
        self,
        url: str,
        secret: Secret | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
        *,
        feedback_tolerance: float = 300,
    ) -> None:
        super().__init__(timeout=timeout, client=client)
        # Sent per request rather than as client defaults, so they also apply
        # when the caller supplies its own client.
        self.extra_headers = dict(headers or {})
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError("Webhook url must start with http:// or https://")
        self.endpoint = url
        # Decode once so a malformed secret fails at configuration time.
        self._key = _secret_key(secret) if secret is not None else None
        self.feedback_tolerance = feedback_tolerance

    def payload(self, message: Message) -> dict[str, Any]:
        """The JSON document sent for ``message``."""
        return {
            "type": message.notifier_key,
            "timestamp": _iso(message.created_at),
            "data": {
                "delivery_id": str(message.delivery_id),
                "notification_id": str(message.notification_id),
                "event_id": str(message.event_id),
                "tenant": message.tenant,
                "recipient": message.recipient.to_json(),
                "fields": dict(message.fields),
            },
        }

    def _build(self, message: Message) -> tuple[str, bytes, dict[str, str]]:
        msg_id = f"msg_{message.delivery_id}"
        body = _dumps(self.payload(message))
        headers = {**self.extra_headers, "content-type": "application/json", "webhook-id": msg_id}
        if self._key is not None:
            headers.update(sign_webhook(body, self._key, msg_id=msg_id))
        else:
            headers["webhook-timestamp"] = str(int(time.time()))
        return msg_id, body, headers

    def send(self, message: Message) -> DeliveryResult:
        """POST ``message``; see the class docstring for the outcome rules.

        Args:
            message: the rendered message.
        """
        msg_id, body, headers = self._build(message)
        response = self.request("POST", self.endpoint, content=body, headers=headers)
        if isinstance(response, DeliveryResult):
            return response
        return classify_http(response, provider_message_id=msg_id)

    async def send_async(self, message: Message) -> DeliveryResult:
        """Native async variant of :meth:`send`.

        Args:
            message: the rendered message.
        """
        msg_id, body, headers = self._build(message)
        response = await self.request_async("POST", self.endpoint, content=body, headers=headers)
        if isinstance(response, DeliveryResult):
            return response
        return classify_http(response, provider_message_id=msg_id)

    def parse_feedback(
        self, headers: Mapping[str, str], body: bytes, *, url: str | None = None
    ) -> list[Feedback]:
        """Verify a receiver's signed status callback and read it.

        The callback is a Standard Webhooks request signed with this
        channel's secret, with a body such as
        ``{"type": "delivery.delivered", "data": {"delivery_id": "...", "event_id": "..."}}``.
        Types other than ``delivery.<status>`` for a known status yield nothing.

        Args:
            headers: the request headers (any case).
            body: the raw request body.
            url: unused; the signature does not cover the URL.

        Raises:
            SignatureError: the callback is unsigned, tampered or too old.
            ConfigurationError: this channel has no secret to verify with.
        """
        if self._key is None:
            raise ConfigurationError("Webhook feedback needs a secret to verify callbacks")
        document = verify_webhook(body, headers, self._key, tolerance=self.feedback_tolerance)
        event_type = document.get("type")
        data = document.get("data")
        if not isinstance(event_type, str) or not isinstance(data, dict):
            return []
        prefix, _, status = event_type.partition(".")
        if prefix != "delivery" or status not in _FEEDBACK_STATUSES:
            return []
        delivery_id = _uuid_or_none(data.get("delivery_id"))
        msg_id = lowered_headers(headers)["webhook-id"]
        detail = data.get("detail") or data.get("reason")
        return [
            Feedback(
                provider_event_id=msg_id,
                status=cast(FeedbackStatus, status),
                provider_message_id=f"msg_{delivery_id}" if delivery_id else None,
                delivery_id=delivery_id,
                detail=str(detail)[:500] if detail else None,
                occurred_at=_datetime_or_none(document.get("timestamp")),
            )
        ]


def _uuid_or_none(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def _datetime_or_none(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
