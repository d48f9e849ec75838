"""Frozen value objects passed between Chimeway's layers."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

__all__ = ["DeliveryResult", "Feedback", "FeedbackStatus", "Message", "Outcome", "Recipient"]

Outcome = Literal["succeeded", "temporary", "permanent", "bounced"]


@dataclass(frozen=True, kw_only=True)
class Recipient:
    """Who a notification is for.

    Args:
        id: stable identifier, unique within a tenant (e.g. ``"user:42"``).
        email: address for email channels.
        phone: E.164 number for SMS channels.
        name: display name.
        timezone: IANA time zone name (quiet hours, digests).
        locale: preferred locale.
        push_tokens: device tokens for push channels.
        data: anything else templates or channels need (JSON values).
    """

    id: str
    email: str | None = None
    phone: str | None = None
    name: str | None = None
    timezone: str | None = None
    locale: str | None = None
    push_tokens: tuple[str, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the recipient as a JSON-ready dict (stored on the notification row)."""
        out: dict[str, Any] = {"id": self.id}
        for name in ("email", "phone", "name", "timezone", "locale"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.push_tokens:
            out["push_tokens"] = list(self.push_tokens)
        if self.data:
            out["data"] = dict(self.data)
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Recipient:
        """Rebuild a recipient stored with :meth:`to_json`."""
        return cls(
            id=str(raw["id"]),
            email=raw.get("email"),
            phone=raw.get("phone"),
            name=raw.get("name"),
            timezone=raw.get("timezone"),
            locale=raw.get("locale"),
            push_tokens=tuple(raw.get("push_tokens", ())),
            data=dict(raw.get("data", {})),
        )


@dataclass(frozen=True, kw_only=True)
class Message:
    """One rendered message handed to a channel.

    Args:
        delivery_id: the delivery this message belongs to; stable across retries,
            so receivers can use it to deduplicate.
        notification_id: the notification (inbox item) it belongs to.
        event_id: the triggering event.
        tenant: the tenant, or ``None``.
        channel: the channel name the delivery was planned for.
        notifier_key: the notifier's ``key``.
        recipient: who it is for.
        fields: the rendered fields (e.g. ``title``, ``body``, ``subject``, ``html``).
        attempt: the attempt number about to be made (1-based).
        created_at: when the delivery was planned.
    """

    delivery_id: uuid.UUID
    notification_id: uuid.UUID
    event_id: uuid.UUID
    tenant: str | None
    channel: str
    notifier_key: str
    recipient: Recipient
    fields: Mapping[str, Any]
    attempt: int = 1
    created_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class DeliveryResult:
    """What a channel reports about one attempt.

    Args:
        outcome: ``succeeded``, ``temporary`` (retry later), ``permanent``
            (never retry) or ``bounced`` (the address is bad).
        detail: a short human-readable explanation (no secrets).
        error_class: a classifier such as ``http_503`` or ``ConnectTimeout``.
        vendor_code: the provider's own error code, when it gives one.
        provider_message_id: the provider's id for the sent message.
        retry_after: seconds the provider asked us to wait before retrying.
    """

    outcome: Outcome
    detail: str | None = None
    error_class: str | None = None
    vendor_code: str | None = None
    provider_message_id: str | None = None
    retry_after: float | None = None

    @classmethod
    def ok(cls, provider_message_id: str | None = None, detail: str | None = None) -> DeliveryResult:
        """A successful attempt."""
        return cls(outcome="succeeded", provider_message_id=provider_message_id, detail=detail)

    @classmethod
    def temporary(
        cls,
        detail: str,
        *,
        error_class: str | None = None,
        vendor_code: str | None = None,
        retry_after: float | None = None,
    ) -> DeliveryResult:
        """A failure worth retrying (timeouts, 5xx, rate limits)."""
        return cls(
            outcome="temporary",
            detail=detail,
            error_class=error_class,
            vendor_code=vendor_code,
            retry_after=retry_after,
        )

    @classmethod
    def permanent(
        cls, detail: str, *, error_class: str | None = None, vendor_code: str | None = None
    ) -> DeliveryResult:
        """A failure that retrying will not fix (bad request, auth, invalid recipient)."""
        return cls(outcome="permanent", detail=detail, error_class=error_class, vendor_code=vendor_code)

    @classmethod
    def bounced(
        cls, detail: str, *, error_class: str | None = None, vendor_code: str | None = None
    ) -> DeliveryResult:
        """The provider says the address does not accept messages."""
        return cls(outcome="bounced", detail=detail, error_class=error_class, vendor_code=vendor_code)


FeedbackStatus = Literal["delivered", "bounced", "failed", "complained", "opened", "clicked"]


@dataclass(frozen=True, kw_only=True)
class Feedback:
    """One status report a provider sent back about a message (inbound webhook).

    Args:
        provider_event_id: the provider's id for this report (used to dedupe).
        status: what happened to the message.
        provider_message_id: the provider's message id, as returned when sending.
        delivery_id: our delivery id, when the provider echoes it back.
        detail: a short explanation (no secrets).
        vendor_code: the provider's code for this status, if any.
        occurred_at: when the provider says it happened.
    """

    provider_event_id: str
    status: FeedbackStatus
    provider_message_id: str | None = None
    delivery_id: uuid.UUID | None = None
    detail: str | None = None
    vendor_code: str | None = None
    occurred_at: datetime | None = None
