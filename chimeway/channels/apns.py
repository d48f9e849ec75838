"""Push to Apple devices through the Apple Push Notification service (APNs), directly.

APNs speaks HTTP/2 only: one ``POST /3/device/<token>`` per device, with
token-based authentication: a JWT signed with the team's ``.p8`` key (ES256,
``kid`` = key id, ``iss`` = team id, ``iat``). Apple wants that token reused
for at least 20 minutes and refreshed within the hour, so it is cached and
shared by every thread, refreshed every ``token_ttl``, and once more when
APNs answers ``ExpiredProviderToken``.

The ``apns-id`` of each request is the delivery's id, so a retried send is
recognisable in Apple's reports as the same notification.

Errors, from APNs's ``reason``:

- ``BadDeviceToken``, ``Unregistered`` (410): **bounced** — the device is
  gone or the token is wrong; remove it.
- ``TooManyRequests`` (429): **temporary**, honouring ``Retry-After``.
- 5xx (``InternalServerError``, ``ServiceUnavailable``, ``Shutdown``):
  **temporary**.
- anything else (``DeviceTokenNotForTopic``, ``BadTopic``, ``PayloadTooLarge``,
  ``InvalidProviderToken``, ...): **permanent**.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePrivateKey

from chimeway.channels._devices import combine_devices, data_object, token_hint
from chimeway.channels._http import HTTPChannel, json_object, parse_retry_after
from chimeway.errors import ConfigurationError
from chimeway.values import DeliveryResult, Message, Recipient

__all__ = ["PRODUCTION", "SANDBOX", "Apns"]

PRODUCTION = "https://api.push.apple.com"
SANDBOX = "https://api.sandbox.push.apple.com"
MAX_PAYLOAD = 4096
BOUNCED_REASONS = frozenset({"BadDeviceToken", "Unregistered"})
PUSH_TYPES = frozenset({"alert", "background", "voip", "complication", "fileprovider", "mdm",
                        "liveactivity", "pushtotalk", "location", "widgets", "controls"})


def _load_key(source: str | bytes | os.PathLike[str]) -> EllipticCurvePrivateKey:
    if isinstance(source, str) and "-----BEGIN" in source:
        pem = source.encode()
    elif isinstance(source, bytes):
        pem = source
    else:
        try:
            pem = Path(source).read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"Apns private_key file {source!s} cannot be read") from exc
    try:
        key = serialization.load_pem_private_key(pem, None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError("Apns private_key is not a PEM private key (the .p8 file Apple gives)") from exc
    if not isinstance(key, EllipticCurvePrivateKey) or not isinstance(key.curve, SECP256R1):
        raise ConfigurationError("Apns private_key must be an EC P-256 key (APNs signs tokens with ES256)")
    return key


def _verify(value: ssl.SSLContext | str | bool) -> ssl.SSLContext | bool:
    if isinstance(value, str):
        try:
            return ssl.create_default_context(cafile=value)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"Apns verify={value!r} is not a readable CA bundle") from exc
    return value


def _data(raw: Any) -> dict[str, Any]:
    """Custom keys sent beside ``aps``: a JSON object (rendered templates give its text)."""
    value = data_object(raw)
    if "aps" in value:
        raise ValueError("data cannot set 'aps' (Apple's own dictionary)")
    return dict(value)


class _Token:
    __slots__ = ("issued_at", "value")

    def __init__(self, value: str, issued_at: float) -> None:
        self.value = value
        self.issued_at = issued_at


class Apns(HTTPChannel):
    """Send a notification to each of a recipient's Apple device tokens through APNs.

    One HTTP/2 request per token in ``recipient.push_tokens``. The delivery
    succeeds when at least one device accepted it (the others' failures are
    named in the detail); otherwise it is temporary if any device failed
    temporarily, bounced if every device's token is dead, and permanent
    otherwise.

    Fields read: ``title``, ``body`` (at least one for an ``alert`` push),
    ``subtitle``, ``badge`` (an int), ``sound``, ``thread_id``, ``category``,
    ``collapse_id`` (``apns-collapse-id``) and ``data`` (a JSON object whose
    keys are sent beside ``aps``).

    Needs ``pip install 'chimeway[apns]'`` (HTTP/2 support for httpx).

    Args:
        team_id: the Apple Developer team id (the token's ``iss``).
        key_id: the id of the APNs auth key (the token's ``kid``).
        private_key: the ``.p8`` key: its PEM text, or a path to the file.
        topic: the app's bundle id (``apns-topic``).
        base_url: :data:`PRODUCTION` (default) or :data:`SANDBOX` for
            development builds; a local server in tests.
        push_type: ``apns-push-type`` (``alert``, ``background``, ...).
        priority: ``apns-priority``: 10 sends at once, 5 saves the battery,
            1 is lowest (default: 10 for alerts, 5 otherwise).
        expiration: how long APNs keeps trying an offline device
            (``apns-expiration``); ``None`` tries once.
        token_ttl: how long a signed token is used before a new one is
            signed (Apple: 20 to 60 minutes).
        timeout: seconds for connect/read/write.
        verify: TLS verification: ``True``, an ``ssl.SSLContext``, or a CA
            bundle path (a test server's certificate).
    """

    def __init__(
        self,
        *,
        team_id: str,
        key_id: str,
        private_key: str | bytes | os.PathLike[str],
        topic: str,
        base_url: str = PRODUCTION,
        push_type: str = "alert",
        priority: int | None = None,
        expiration: timedelta | None = timedelta(days=1),
        token_ttl: timedelta = timedelta(minutes=50),
        timeout: float = 10.0,
        verify: ssl.SSLContext | str | bool = True,
    ) -> None:
        if importlib.util.find_spec("h2") is None:
            raise ConfigurationError("Apns needs HTTP/2 support: pip install 'chimeway[apns]'")
        for name, value in (("team_id", team_id), ("key_id", key_id), ("topic", topic)):
            if not isinstance(value, str) or not value.strip():
                raise ConfigurationError(f"Apns {name} must be a non-empty string, got {value!r}")
        if push_type not in PUSH_TYPES:
            raise ConfigurationError(f"Apns push_type must be one of {sorted(PUSH_TYPES)}, got {push_type!r}")
        if priority is not None and priority not in (1, 5, 10):
            raise ConfigurationError(f"Apns priority must be 1, 5 or 10, got {priority!r}")
        if not isinstance(token_ttl, timedelta) or not timedelta(minutes=1) <= token_ttl <= timedelta(minutes=60):
            raise ConfigurationError(f"Apns token_ttl must be between 1 and 60 minutes, got {token_ttl!r}")
        if expiration is not None and (not isinstance(expiration, timedelta) or expiration < timedelta(0)):
            raise ConfigurationError(f"Apns expiration must be a non-negative timedelta or None, got {expiration!r}")
        super().__init__(base_url=base_url, timeout=timeout, http2=True, verify=_verify(verify))
        self._key = _load_key(private_key)
        self.team_id = team_id
        self.key_id = key_id
        self.topic = topic
        self.push_type = push_type
        self.priority = priority if priority is not None else (10 if push_type == "alert" else 5)
        self.expiration = expiration
        self.token_ttl = token_ttl.total_seconds()
        self._token: _Token | None = None
        self._token_lock = threading.Lock()
        self._clock: Callable[[], float] = time.time

    def __repr__(self) -> str:
        return f"Apns(topic={self.topic!r}, team_id={self.team_id!r}, key_id={self.key_id!r}, base_url={self.base_url!r})"

    # -- validation ----------------------------------------------------------

    def _payload(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        aps: dict[str, Any] = {}
        alert = {name: str(fields[name]) for name in ("title", "subtitle", "body") if fields.get(name)}
        if alert:
            aps["alert"] = alert
        if fields.get("badge") not in (None, ""):
            badge = fields["badge"]
            if isinstance(badge, bool) or not isinstance(badge, int | str) or not str(badge).isdigit():
                raise ValueError(f"badge must be a whole number, got {badge!r}")
            aps["badge"] = int(badge)
        for field, key in (("sound", "sound"), ("thread_id", "thread-id"), ("category", "category")):
            if fields.get(field):
                aps[key] = str(fields[field])
        if self.push_type == "background":
            aps["content-available"] = 1
        return {**_data(fields.get("data")), "aps": aps}

    def validate(self, fields: Mapping[str, Any], recipient: Recipient) -> str | None:
        """Refuse a message with no device, nothing to show, or a payload APNs would refuse.

        Args:
            fields: the rendered fields.
            recipient: the recipient.
        """
        if not recipient.push_tokens:
            return "recipient has no push tokens"
        if self.push_type == "alert" and not fields.get("title") and not fields.get("body"):
            return "an APNs alert needs a 'title' or 'body' field"
        try:
            size = len(json.dumps(self._payload(fields), separators=(",", ":")).encode())
        except (ValueError, TypeError) as exc:
            return f"APNs payload is not valid: {exc}"
        if size > MAX_PAYLOAD:
            return f"APNs payload is {size} bytes; APNs accepts at most {MAX_PAYLOAD}"
        return None

    # -- provider tokens -----------------------------------------------------

    def _fresh(self, stale: _Token | None) -> _Token | None:
        token = self._token
        if token is not None and token is not stale and self._clock() - token.issued_at < self.token_ttl:
            return token
        return None

    def provider_token(self, *, stale: _Token | None = None) -> _Token:
        """The cached signed token; a new one when it is older than ``token_ttl`` or ``stale``."""
        token = self._fresh(stale)
        if token is not None:
            return token
        with self._token_lock:
            # Another thread may have signed one while this one waited.
            token = self._fresh(stale)
            if token is None:
                now = self._clock()
                value = jwt.encode({"iss": self.team_id, "iat": int(now)}, self._key, algorithm="ES256",
                                   headers={"kid": self.key_id})
                token = self._token = _Token(value, now)
            return token

    # -- sending -------------------------------------------------------------

    def _request(self, message: Message, body: bytes, token: _Token) -> dict[str, Any]:
        headers = {
            "authorization": f"bearer {token.value}",
            "apns-topic": self.topic,
            "apns-push-type": self.push_type,
            "apns-priority": str(self.priority),
            "apns-id": str(message.delivery_id),
            "content-type": "application/json",
        }
        # 0: deliver once, or never if the device is offline.
        until = 0 if self.expiration is None else int(self._clock() + self.expiration.total_seconds())
        headers["apns-expiration"] = str(until)
        if message.fields.get("collapse_id"):
            headers["apns-collapse-id"] = str(message.fields["collapse_id"])[:64]
        return {"content": body, "headers": headers}

    def _body(self, message: Message) -> bytes | DeliveryResult:
        if not message.recipient.push_tokens:
            return DeliveryResult.permanent("recipient has no push tokens", error_class="no_push_tokens")
        try:
            return json.dumps(self._payload(message.fields), separators=(",", ":")).encode()
        except (ValueError, TypeError) as exc:
            return DeliveryResult.permanent(f"APNs payload: {exc}", error_class="invalid_payload")

    def _send_one(self, message: Message, body: bytes, device: str) -> DeliveryResult:
        token = self.provider_token()
        path = f"/3/device/{device}"
        response = self.request("POST", path, **self._request(message, body, token))
        if _expired(response):
            response = self.request("POST", path, **self._request(message, body, self.provider_token(stale=token)))
        return _classify(response, device)

    async def _send_one_async(self, message: Message, body: bytes, device: str) -> DeliveryResult:
        token = self.provider_token()
        path = f"/3/device/{device}"
        response = await self.request_async("POST", path, **self._request(message, body, token))
        if _expired(response):
            response = await self.request_async(
                "POST", path, **self._request(message, body, self.provider_token(stale=token)))
        return _classify(response, device)

    def send(self, message: Message) -> DeliveryResult:
        """Send to every device token of the recipient, one HTTP/2 request each.

        Args:
            message: the rendered message.
        """
        body = self._body(message)
        if isinstance(body, DeliveryResult):
            return body
        return combine_devices([self._send_one(message, body, device) for device in message.recipient.push_tokens])

    async def send_async(self, message: Message) -> DeliveryResult:
        """Native async variant of :meth:`send`; the devices' requests share one HTTP/2 connection.

        Args:
            message: the rendered message.
        """
        body = self._body(message)
        if isinstance(body, DeliveryResult):
            return body
        results = await asyncio.gather(
            *(self._send_one_async(message, body, device) for device in message.recipient.push_tokens))
        return combine_devices(list(results))


def _reason(response: httpx.Response) -> str | None:
    document = json_object(response)
    reason = document.get("reason") if isinstance(document, dict) else None
    return str(reason) if reason else None


def _expired(response: httpx.Response | DeliveryResult) -> bool:
    return (isinstance(response, httpx.Response) and response.status_code == 403
            and _reason(response) == "ExpiredProviderToken")


def _classify(response: httpx.Response | DeliveryResult, device: str) -> DeliveryResult:
    if isinstance(response, DeliveryResult):
        return response
    status = response.status_code
    if status == 200:
        return DeliveryResult.ok(provider_message_id=response.headers.get("apns-id"))
    reason = _reason(response)
    hint = token_hint(device)
    code = reason or f"HTTP {status}"
    error_class = f"apns_{reason}" if reason else f"http_{status}"
    if reason in BOUNCED_REASONS or status == 410:
        return DeliveryResult.bounced(
            f"device token {hint} is no longer valid ({code}): the app was uninstalled or the token "
            "is wrong; remove it", error_class=error_class, vendor_code=reason)
    detail = f"device {hint}: APNs answered {status} {code}"
    if status == 429 or status >= 500:
        return DeliveryResult.temporary(detail, error_class=error_class, vendor_code=reason,
                                        retry_after=parse_retry_after(response.headers.get("retry-after")))
    return DeliveryResult.permanent(detail, error_class=error_class, vendor_code=reason)
