"""Signed unsubscribe tokens and links.

A token is ``base64url(payload) "." base64url(HMAC-SHA256(secret, payload))``;
the payload is compact JSON naming the recipient, tenant, scope, channel and
expiry. Anything that does not verify — a changed byte, another secret, an
expired token — raises :class:`~chimeway.errors.SignatureError`, and nothing
is written.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from chimeway.db import tenant_key
from chimeway.errors import ConfigurationError, InvalidInputError, SignatureError
from chimeway.notifier import Notifier
from chimeway.preferences import ALL_CHANNELS, scope_of

__all__ = ["DEFAULT_TOKEN_TTL", "UnsubscribeRequest", "build_url", "sign_token", "verify_token"]

DEFAULT_TOKEN_TTL = timedelta(days=365)
_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class UnsubscribeRequest:
    """What a verified token asks for.

    Args:
        recipient: the recipient id.
        tenant: the tenant, or ``None``.
        scope: ``all``, ``category`` or ``notifier``.
        scope_key: the category or notifier key (``""`` for ``all``).
        channel: the channel name, or ``*`` for every channel.
        expires_at: when the token stops working.
    """

    recipient: str
    tenant: str | None
    scope: str
    scope_key: str
    channel: str
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(secret: str | bytes | None) -> bytes:
    if not secret:
        raise ConfigurationError(
            "unsubscribe links need a secret: app.configure_policy(secret=...) (at least 16 characters)"
        )
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    if len(key) < 16:
        raise ConfigurationError("the unsubscribe secret must be at least 16 characters long")
    return key


def sign_token(
    secret: str | bytes | None,
    *,
    recipient: str,
    tenant: str | None,
    notifier: str | type[Notifier] | None,
    category: str | None,
    channel: str | None,
    now: datetime,
    ttl: timedelta = DEFAULT_TOKEN_TTL,
) -> str:
    """A signed token that opts ``recipient`` out of ``channel`` for the scope.

    Args:
        secret: the app's signing secret.
        recipient: the recipient id.
        tenant: the tenant, or ``None``.
        notifier: limit to one notifier (class or key), or ``None``.
        category: limit to one category, or ``None``.
        channel: the channel, or ``None`` for every channel.
        now: the clock's time.
        ttl: how long the token works.
    """
    if not isinstance(recipient, str) or not recipient:
        raise InvalidInputError(f"recipient must be a non-empty string, got {recipient!r}")
    scope, scope_key = scope_of(notifier, category)
    payload = {
        "v": _VERSION, "r": recipient, "t": tenant_key(tenant), "s": scope, "k": scope_key,
        "c": channel or ALL_CHANNELS, "e": int((now + ttl).timestamp()),
    }
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    mac = hmac.new(_key(secret), body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(mac)}"


def verify_token(secret: str | bytes | None, token: str, *, now: datetime) -> UnsubscribeRequest:
    """Check a token's signature and expiry; return what it asks for.

    Args:
        secret: the app's signing secret.
        token: the token from the link.
        now: the clock's time.

    Raises:
        SignatureError: malformed, tampered with, signed with another secret, or expired.
    """
    key = _key(secret)
    if not isinstance(token, str) or token.count(".") != 1:
        raise SignatureError("unsubscribe token is malformed")
    body_text, mac_text = token.split(".")
    try:
        body, mac = _unb64(body_text), _unb64(mac_text)
    except (binascii.Error, ValueError):
        raise SignatureError("unsubscribe token is malformed") from None
    if _b64(body) != body_text or _b64(mac) != mac_text:
        # Base64 ignores the unused low bits of a final character: only the
        # canonical spelling is accepted, so one token has one string.
        raise SignatureError("unsubscribe token is malformed")
    expected = hmac.new(key, body, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise SignatureError("unsubscribe token signature does not match")
    try:
        payload: dict[str, Any] = json.loads(body)
        expires_at = datetime.fromtimestamp(int(payload["e"]), UTC)
        request = UnsubscribeRequest(
            recipient=str(payload["r"]), tenant=str(payload["t"]) or None, scope=str(payload["s"]),
            scope_key=str(payload["k"]), channel=str(payload["c"]), expires_at=expires_at,
        )
    except (ValueError, KeyError, TypeError):
        raise SignatureError("unsubscribe token payload is malformed") from None
    if now >= expires_at:
        raise SignatureError(f"unsubscribe token expired at {expires_at.isoformat()}")
    return request


def build_url(base_url: str, token: str) -> str:
    """``base_url`` with ``token=...`` appended to its query string.

    Args:
        base_url: an absolute ``https://`` (or ``http://``) URL.
        token: the signed token.
    """
    if not isinstance(base_url, str) or urlsplit(base_url).scheme not in ("http", "https"):
        raise ConfigurationError(f"unsubscribe base_url must be an http(s) URL, got {base_url!r}")
    joiner = "&" if urlsplit(base_url).query else ("" if base_url.endswith("?") else "?")
    return f"{base_url}{joiner}{urlencode({'token': token})}"
