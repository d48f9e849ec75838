"""Verifying and parsing email providers' status webhooks.

Postmark does not sign its webhooks: it can only send basic auth (from the
credentials in the webhook URL) or custom headers, so we compare those with
the configured values in constant time. SendGrid signs its Event Webhook
with ECDSA (P-256, SHA-256) over ``timestamp + body``; the signature is
base64 DER in ``X-Twilio-Email-Event-Webhook-Signature`` and the timestamp in
``X-Twilio-Email-Event-Webhook-Timestamp``.

Resend signs with Svix, which is the Standard Webhooks scheme under
``svix-*`` header names; it is verified with the Webhook channel's
:func:`~chimeway.channels.webhook.verify_webhook`.

A request that fails verification raises
:class:`~chimeway.errors.SignatureError` before anything is parsed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from chimeway.channels._signing import as_bytes, lowered_headers
from chimeway.channels.email_message import METADATA_KEY
from chimeway.channels.webhook import verify_webhook
from chimeway.errors import ConfigurationError, InvalidInputError, SignatureError
from chimeway.values import Feedback, FeedbackStatus

__all__ = [
    "SENDGRID_SIGNATURE_HEADER",
    "SENDGRID_TIMESTAMP_HEADER",
    "load_sendgrid_key",
    "parse_postmark_feedback",
    "parse_resend_feedback",
    "parse_sendgrid_feedback",
    "sendgrid_message_id",
    "verify_postmark",
    "verify_resend",
    "verify_sendgrid",
]

SENDGRID_SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, looked up without regard to case."""
    return lowered_headers(headers).get(name.lower())


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(as_bytes(given), as_bytes(expected))


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidInputError(f"webhook body is not JSON: {exc}") from exc


def _delivery_id(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def _iso(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    # .NET timestamps carry 7 fractional digits; Python reads at most 6.
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.replace("Z", "+00:00"))
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _from_unix(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        # Past year 9999, or NaN/Infinity (which json.loads accepts).
        return None


# ---------------------------------------------------------------------------
# Postmark


def verify_postmark(
    headers: Mapping[str, str],
    *,
    basic_auth: tuple[str, str] | None,
    secret: str | None,
    secret_header: str,
) -> None:
    """Check a Postmark webhook's basic auth and/or shared-secret header.

    Args:
        headers: the request headers.
        basic_auth: the expected ``(username, password)``, or ``None``.
        secret: the expected shared secret, or ``None``.
        secret_header: the header the secret arrives in.
    """
    if basic_auth is None and secret is None:
        raise ConfigurationError(
            "Postmark feedback needs webhook_username/webhook_password or webhook_secret"
        )
    if basic_auth is not None:
        given = header(headers, "Authorization") or ""
        scheme, _, token = given.partition(" ")
        try:
            # b64decode refuses non-ASCII text with a plain ValueError.
            decoded = base64.b64decode(token, validate=True).decode("utf-8")
        except ValueError:
            decoded = ""
        user, sep, password = decoded.partition(":")
        user_ok = _same(user, basic_auth[0])
        password_ok = _same(password, basic_auth[1])
        if scheme.lower() != "basic" or not sep or not (user_ok and password_ok):
            raise SignatureError("Postmark webhook: missing or wrong basic-auth credentials")
    if secret is not None and not _same(header(headers, secret_header), secret):
        raise SignatureError(f"Postmark webhook: missing or wrong {secret_header} header")


# Bounce types that mean the address itself is bad.
_POSTMARK_HARD = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated"})
# Bounce types that mean this message was not delivered (but the address may be fine).
_POSTMARK_FAILED = frozenset(
    {
        "SoftBounce",
        "DnsError",
        "Blocked",
        "VirusNotification",
        "ChallengeVerification",
        "SMTPApiError",
        "DMARCPolicy",
        "TemplateRenderingFailed",
        "Unknown",
    }
)


def parse_postmark_feedback(body: bytes) -> list[Feedback]:
    """Parse one Postmark webhook (Bounce, Delivery, SpamComplaint, Open, Click).

    Auto-replies, transient delays and subscription changes are not
    delivery outcomes and produce no feedback.

    Args:
        body: the raw request body.
    """
    data = _load_json(body)
    if not isinstance(data, dict):
        raise InvalidInputError("Postmark webhook body must be a JSON object")
    record = data.get("RecordType") or ("Bounce" if "BouncedAt" in data else None)
    message_id = data.get("MessageID")
    raw_metadata = data.get("Metadata")
    metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
    delivery_id = _delivery_id(metadata.get(METADATA_KEY))
    status: FeedbackStatus
    if record == "Bounce":
        kind = str(data.get("Type", ""))
        if kind == "SpamComplaint":
            status = "complained"
        elif kind in _POSTMARK_HARD or (
            data.get("Inactive") is True and kind not in _POSTMARK_FAILED
        ):
            status = "bounced"
        elif kind in _POSTMARK_FAILED:
            status = "failed"
        else:
            return []
        return [
            Feedback(
                provider_event_id=f"postmark:bounce:{data.get('ID')}",
                status=status,
                provider_message_id=message_id,
                delivery_id=delivery_id,
                detail=" ".join(
                    str(data.get("Description") or data.get("Details") or kind).split()
                )[:300],
                vendor_code=kind or None,
                occurred_at=_iso(data.get("BouncedAt")),
            )
        ]
    if record == "Delivery":
        return [
            Feedback(
                provider_event_id=f"postmark:delivery:{message_id}:{data.get('Recipient')}",
                status="delivered",
                provider_message_id=message_id,
                delivery_id=delivery_id,
                detail=" ".join(str(data.get("Details") or "").split())[:300] or None,
                occurred_at=_iso(data.get("DeliveredAt")),
            )
        ]
    simple: dict[str, tuple[FeedbackStatus, str]] = {
        "SpamComplaint": ("complained", "BouncedAt"),
        "Open": ("opened", "ReceivedAt"),
        "Click": ("clicked", "ReceivedAt"),
    }
    if record in simple:
        status, at_key = simple[record]
        event_key = data.get("ID") or f"{message_id}:{data.get(at_key)}"
        return [
            Feedback(
                provider_event_id=f"postmark:{record.lower()}:{event_key}",
                status=status,
                provider_message_id=message_id,
                delivery_id=delivery_id,
                occurred_at=_iso(data.get(at_key)),
            )
        ]
    return []


# ---------------------------------------------------------------------------
# SendGrid


def load_sendgrid_key(public_key: str) -> ec.EllipticCurvePublicKey:
    """Load SendGrid's verification key (base64 DER as displayed, or PEM).

    Args:
        public_key: the key from SendGrid's Mail Settings.
    """
    try:
        if "BEGIN PUBLIC KEY" in public_key:
            key = serialization.load_pem_public_key(public_key.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(public_key))
    except (ValueError, binascii.Error, TypeError) as exc:
        raise ConfigurationError(
            "SendGrid webhook_public_key is not a valid EC public key"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigurationError(
            "SendGrid webhook_public_key must be an elliptic-curve (ECDSA) key"
        )
    return key


def verify_sendgrid(
    headers: Mapping[str, str], body: bytes, public_key: str | ec.EllipticCurvePublicKey
) -> None:
    """Verify the Signed Event Webhook signature over ``timestamp + body``.

    Args:
        headers: the request headers.
        body: the raw request body, exactly as received.
        public_key: SendGrid's verification key.
    """
    signature = header(headers, SENDGRID_SIGNATURE_HEADER)
    timestamp = header(headers, SENDGRID_TIMESTAMP_HEADER)
    if not signature or not timestamp:
        raise SignatureError(
            f"SendGrid webhook: missing {SENDGRID_SIGNATURE_HEADER} or {SENDGRID_TIMESTAMP_HEADER}"
        )
    key = load_sendgrid_key(public_key) if isinstance(public_key, str) else public_key
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, as_bytes(timestamp) + as_bytes(body), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise SignatureError("SendGrid webhook: signature does not match the body") from exc


_SENDGRID_STATUS: dict[str, FeedbackStatus] = {
    "delivered": "delivered",
    "bounce": "bounced",
    "dropped": "failed",
    "spamreport": "complained",
    "open": "opened",
    "click": "clicked",
}

# sg_message_id is the X-Message-Id returned at send time plus a suffix
# naming the SendGrid server that handled it.
_SG_SUFFIX = re.compile(r"\.(?:filter|recvd|ismtpd|geopod)\S*$")


def sendgrid_message_id(sg_message_id: str) -> str:
    """The ``X-Message-Id`` part of an event's ``sg_message_id``."""
    return _SG_SUFFIX.sub("", sg_message_id)


def parse_sendgrid_feedback(body: bytes) -> list[Feedback]:
    """Parse a (verified) SendGrid Event Webhook batch.

    ``processed`` and ``deferred`` are not outcomes and are skipped. A
    ``bounce`` of type ``blocked`` and a ``dropped`` event mean this message
    failed; a ``dropped`` with reason "Bounced Address" means the address is
    known bad.

    Args:
        body: the raw request body (a JSON array of events).
    """
    data = _load_json(body)
    if not isinstance(data, list):
        raise InvalidInputError("SendGrid webhook body must be a JSON array of events")
    out: list[Feedback] = []
    for event in data:
        if not isinstance(event, dict):
            continue
        name = str(event.get("event", ""))
        status = _SENDGRID_STATUS.get(name)
        if status is None:
            continue
        reason = str(event.get("reason") or event.get("response") or "")
        if name == "bounce" and event.get("type") == "blocked":
            status = "failed"
        if name == "dropped" and "bounced address" in reason.lower():
            status = "bounced"
        sg_message_id = event.get("sg_message_id")
        timestamp = event.get("timestamp")
        occurred = _from_unix(timestamp)
        event_id = event.get("sg_event_id") or f"{sg_message_id}:{name}:{timestamp}"
        out.append(
            Feedback(
                provider_event_id=str(event_id),
                status=status,
                provider_message_id=sendgrid_message_id(str(sg_message_id))
                if sg_message_id
                else None,
                delivery_id=_delivery_id(event.get(METADATA_KEY)),
                detail=" ".join(reason.split())[:300] or None,
                vendor_code=str(event.get("status")) if event.get("status") else None,
                occurred_at=occurred,
            )
        )
    return out


# ---------------------------------------------------------------------------
# Resend


def verify_resend(
    headers: Mapping[str, str], body: bytes, secret: str, *, tolerance: float = 300
) -> dict[str, Any]:
    """Verify a Resend (Svix-signed) webhook and return its JSON body.

    Args:
        headers: the request headers.
        body: the raw request body.
        secret: the endpoint's signing secret (``whsec_...``).
        tolerance: seconds the signed timestamp may be off (replay window).
    """
    renamed = {
        f"webhook-{part}": value
        for part in ("id", "timestamp", "signature")
        if (value := header(headers, f"svix-{part}")) is not None
    }
    return verify_webhook(body, renamed, secret, tolerance=tolerance)


_RESEND_STATUS: dict[str, FeedbackStatus] = {
    "email.delivered": "delivered",
    "email.bounced": "bounced",
    "email.complained": "complained",
    "email.opened": "opened",
    "email.clicked": "clicked",
    "email.failed": "failed",
}


def _resend_tag(tags: Any) -> Any:
    if isinstance(tags, dict):
        return tags.get(METADATA_KEY)
    if isinstance(tags, list):
        for tag in tags:
            if isinstance(tag, dict) and tag.get("name") == METADATA_KEY:
                return tag.get("value")
    return None


def parse_resend_feedback(event: Mapping[str, Any], event_id: str) -> list[Feedback]:
    """Turn one verified Resend event into feedback.

    A bounce whose ``bounce.type`` is not ``Permanent`` means this message
    failed, not that the address is bad.

    Args:
        event: the verified JSON body.
        event_id: the ``svix-id`` of the request (unique per event).
    """
    kind = str(event.get("type", ""))
    status = _RESEND_STATUS.get(kind)
    data = event.get("data")
    if status is None or not isinstance(data, dict):
        return []
    raw_bounce = data.get("bounce")
    bounce: dict[str, Any] = raw_bounce if isinstance(raw_bounce, dict) else {}
    detail = None
    vendor = None
    if kind == "email.bounced":
        vendor = str(bounce.get("type") or "") or None
        if vendor != "Permanent":
            status = "failed"
        detail = " ".join(str(bounce.get("message") or bounce.get("subType") or "").split())[:300]
    return [
        Feedback(
            provider_event_id=event_id,
            status=status,
            provider_message_id=str(data["email_id"]) if data.get("email_id") else None,
            delivery_id=_delivery_id(_resend_tag(data.get("tags"))),
            detail=detail or None,
            vendor_code=vendor,
            occurred_at=_iso(event.get("created_at")),
        )
    ]
