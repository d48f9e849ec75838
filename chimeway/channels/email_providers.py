"""HTTP email providers: Postmark, SendGrid and Resend.

Each is an :class:`~chimeway.channels.email.EmailProvider` (so it can sit in
``Email(providers=[...])``) and also a channel on its own when given
``from_=...``. Each sends the ``List-Unsubscribe`` headers and carries the
delivery id where the API allows it, so status webhooks can be matched:

========  ===============================================================
Postmark  ``Metadata.chimeway_delivery_id`` (echoed in every webhook)
SendGrid  ``custom_args.chimeway_delivery_id`` (a top-level event field)
Resend    a ``chimeway_delivery_id`` tag, and ``Idempotency-Key``
========  ===============================================================

Every one also sends the ``X-Chimeway-Delivery-Id`` header.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from chimeway.channels._http import HTTPChannel, classify_http, parse_retry_after
from chimeway.channels.email_feedback import (
    header,
    load_sendgrid_key,
    parse_postmark_feedback,
    parse_resend_feedback,
    parse_sendgrid_feedback,
    verify_postmark,
    verify_resend,
    verify_sendgrid,
)
from chimeway.channels.email_message import METADATA_KEY, EmailProvider, OutgoingEmail
from chimeway.errors import ConfigurationError
from chimeway.values import DeliveryResult, Feedback

__all__ = ["Postmark", "Resend", "SendGrid"]


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, httpx.ResponseNotRead):
        return None


def _short(text: Any, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


class _HTTPEmailProvider(EmailProvider, HTTPChannel):
    """An email provider reached over HTTP: build a request, classify the answer."""

    def _request(self, outgoing: OutgoingEmail) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def _classify(self, response: httpx.Response) -> DeliveryResult:
        raise NotImplementedError

    def send_email(self, outgoing: OutgoingEmail) -> DeliveryResult:
        """POST the email to the provider's API.

        Args:
            outgoing: the email to send.
        """
        path, kwargs = self._request(outgoing)
        response = self.request("POST", path, **kwargs)
        return response if isinstance(response, DeliveryResult) else self._classify(response)

    async def send_email_async(self, outgoing: OutgoingEmail) -> DeliveryResult:
        """Async variant of :meth:`send_email` over the pooled async client.

        Args:
            outgoing: the email to send.
        """
        path, kwargs = self._request(outgoing)
        response = await self.request_async("POST", path, **kwargs)
        return response if isinstance(response, DeliveryResult) else self._classify(response)


class Postmark(_HTTPEmailProvider):
    """Postmark's ``POST /email`` API.

    Postmark does not sign its webhooks; protect the webhook URL with basic
    auth (``https://user:pass@your.app/hooks/postmark`` in Postmark's
    settings) or a custom header Postmark sends, and configure the same here.

    Args:
        server_token: the server API token (``X-Postmark-Server-Token``).
        base_url: the API root (a local server in tests).
        message_stream: the message stream to send through.
        webhook_username: basic-auth user expected on feedback webhooks.
        webhook_password: basic-auth password expected on feedback webhooks.
        webhook_secret: a shared secret expected in ``webhook_secret_header``.
        webhook_secret_header: the header carrying ``webhook_secret``.
        timeout: seconds for each request.
        client: an ``httpx.Client`` to use instead of a new pooled one.
        from_: sender when used directly as a channel.
        reply_to: ``Reply-To`` when used directly as a channel.
        message_id_domain: ``Message-ID`` domain when used directly as a channel.
    """

    name: ClassVar[str] = "postmark"

    def __init__(
        self,
        server_token: str,
        base_url: str = "https://api.postmarkapp.com",
        *,
        message_stream: str = "outbound",
        webhook_username: str | None = None,
        webhook_password: str | None = None,
        webhook_secret: str | None = None,
        webhook_secret_header: str = "X-Webhook-Secret",
        timeout: float = 10.0,
        client: httpx.Client | None = None,
        from_: str | None = None,
        reply_to: str | None = None,
        message_id_domain: str | None = None,
    ) -> None:
        if not server_token:
            raise ConfigurationError("Postmark needs a server_token")
        if (webhook_username is None) != (webhook_password is None):
            raise ConfigurationError(
                "Postmark webhook basic auth needs both webhook_username and webhook_password"
            )
        HTTPChannel.__init__(self, base_url=base_url, timeout=timeout, client=client)
        self._identity(from_, reply_to, message_id_domain)
        self._token = server_token
        self.message_stream = message_stream
        self._webhook_auth = (
            (webhook_username, webhook_password)
            if webhook_username is not None and webhook_password is not None
            else None
        )
        self._webhook_secret = webhook_secret
        self.webhook_secret_header = webhook_secret_header

    def __repr__(self) -> str:
        return f"Postmark(base_url={self.base_url!r})"

    def _request(self, outgoing: OutgoingEmail) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "From": outgoing.sender,
            "To": outgoing.to,
            "Subject": outgoing.subject,
            "TextBody": outgoing.text,
            "Headers": [{"Name": k, "Value": v} for k, v in outgoing.headers.items()],
            "Metadata": {METADATA_KEY: str(outgoing.delivery_id)},
            "MessageStream": self.message_stream,
        }
        if outgoing.html is not None:
            body["HtmlBody"] = outgoing.html
        if outgoing.reply_to:
            body["ReplyTo"] = outgoing.reply_to
        headers = {"X-Postmark-Server-Token": self._token, "Accept": "application/json"}
        return "/email", {"json": body, "headers": headers}

    def _classify(self, response: httpx.Response) -> DeliveryResult:
        data = _json(response)
        data = data if isinstance(data, dict) else {}
        code = data.get("ErrorCode")
        text = _short(data.get("Message", "")) or None
        status = response.status_code
        if 200 <= status < 300 and code in (0, None):
            return DeliveryResult.ok(provider_message_id=data.get("MessageID"))
        vendor = str(code) if code is not None else None
        detail = f"HTTP {status}: [{code}] {text}" if code is not None else None
        if code == 406:
            # Inactive recipient: Postmark suppressed the address after a
            # hard bounce or spam complaint.
            return DeliveryResult.bounced(
                detail or f"HTTP {status}", error_class="postmark_406", vendor_code=vendor
            )
        if code in (100, 429):
            return DeliveryResult.temporary(
                detail or f"HTTP {status}",
                error_class=f"http_{status}",
                vendor_code=vendor,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        if 200 <= status < 300:
            # Postmark reports some refusals with 200 and a non-zero ErrorCode.
            return DeliveryResult.permanent(
                detail or "refused", error_class="postmark_error", vendor_code=vendor
            )
        return classify_http(
            response, vendor_code=vendor, detail=f"[{code}] {text}" if code is not None else None
        )

    def parse_feedback(
        self, headers: Mapping[str, str], body: bytes, *, url: str | None = None
    ) -> list[Feedback]:
        """Check the webhook's basic auth or shared secret, then parse it.

        Args:
            headers: the request headers (any case).
            body: the raw request body.
            url: the full URL Postmark called (unused).
        """
        verify_postmark(
            headers,
            basic_auth=self._webhook_auth,
            secret=self._webhook_secret,
            secret_header=self.webhook_secret_header,
        )
        return parse_postmark_feedback(body)


class SendGrid(_HTTPEmailProvider):
    """SendGrid's ``POST /v3/mail/send`` API.

    Args:
        api_key: the API key (sent as a Bearer token).
        base_url: the API root (a local server in tests).
        webhook_public_key: the Signed Event Webhook verification key (base64
            DER as shown by SendGrid, or PEM); enables :meth:`parse_feedback`.
        timeout: seconds for each request.
        client: an ``httpx.Client`` to use instead of a new pooled one.
        from_: sender when used directly as a channel.
        reply_to: ``Reply-To`` when used directly as a channel.
        message_id_domain: ``Message-ID`` domain when used directly as a channel.
    """

    name: ClassVar[str] = "sendgrid"

    def __init__(
        self,
        api_key: str,
        base_url: str = "https://api.sendgrid.com",
        *,
        webhook_public_key: str | None = None,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
        from_: str | None = None,
        reply_to: str | None = None,
        message_id_domain: str | None = None,
    ) -> None:
        if not api_key:
            raise ConfigurationError("SendGrid needs an api_key")
        HTTPChannel.__init__(self, base_url=base_url, timeout=timeout, client=client)
        self._identity(from_, reply_to, message_id_domain)
        self._key = api_key
        # Loaded now so a bad key fails at configuration time, not on the first webhook.
        self._webhook_key = load_sendgrid_key(webhook_public_key) if webhook_public_key else None

    def __repr__(self) -> str:
        return f"SendGrid(base_url={self.base_url!r})"

    def _request(self, outgoing: OutgoingEmail) -> tuple[str, dict[str, Any]]:
        to: dict[str, str] = {"email": outgoing.to_address}
        if outgoing.to_name:
            to["name"] = outgoing.to_name
        sender: dict[str, str] = {"email": outgoing.sender_address}
        name = _display_name(outgoing.sender)
        if name:
            sender["name"] = name
        content = [{"type": "text/plain", "value": outgoing.text}]
        if outgoing.html is not None:
            content.append({"type": "text/html", "value": outgoing.html})
        body: dict[str, Any] = {
            "personalizations": [
                {"to": [to], "custom_args": {METADATA_KEY: str(outgoing.delivery_id)}}
            ],
            "from": sender,
            "subject": outgoing.subject,
            "content": content,
            "headers": dict(outgoing.headers),
        }
        if outgoing.reply_to:
            body["reply_to"] = {"email": _bare_address(outgoing.reply_to)}
        headers = {"Authorization": f"Bearer {self._key}"}
        return "/v3/mail/send", {"json": body, "headers": headers}

    def _classify(self, response: httpx.Response) -> DeliveryResult:
        status = response.status_code
        if 200 <= status < 300:
            return DeliveryResult.ok(provider_message_id=response.headers.get("x-message-id"))
        data = _json(response)
        errors = data.get("errors") if isinstance(data, dict) else None
        detail = None
        if isinstance(errors, list) and errors:
            parts = []
            for error in errors[:5]:
                if isinstance(error, dict):
                    field = error.get("field")
                    message = _short(error.get("message", ""), 200)
                    parts.append(f"{field}: {message}" if field else message)
            detail = "; ".join(parts) or None
        return classify_http(response, detail=detail)

    def parse_feedback(
        self, headers: Mapping[str, str], body: bytes, *, url: str | None = None
    ) -> list[Feedback]:
        """Verify the Event Webhook's ECDSA signature, then parse the events.

        Args:
            headers: the request headers (any case).
            body: the raw request body.
            url: the full URL SendGrid called (unused).
        """
        if self._webhook_key is None:
            raise ConfigurationError("SendGrid feedback needs webhook_public_key=...")
        verify_sendgrid(headers, body, self._webhook_key)
        return parse_sendgrid_feedback(body)


class Resend(_HTTPEmailProvider):
    """Resend's ``POST /emails`` API.

    The delivery id is sent as the ``Idempotency-Key``, so a retried request
    for the same delivery never sends twice.

    Args:
        api_key: the API key (sent as a Bearer token).
        base_url: the API root (a local server in tests).
        webhook_secret: the webhook's signing secret (``whsec_...``);
            enables :meth:`parse_feedback`.
        webhook_tolerance: seconds a webhook's signed timestamp may be off.
        timeout: seconds for each request.
        client: an ``httpx.Client`` to use instead of a new pooled one.
        from_: sender when used directly as a channel.
        reply_to: ``Reply-To`` when used directly as a channel.
        message_id_domain: ``Message-ID`` domain when used directly as a channel.
    """

    name: ClassVar[str] = "resend"

    # Resend's error names that a later retry can fix.
    TEMPORARY_NAMES: ClassVar[frozenset[str]] = frozenset(
        {
            "rate_limit_exceeded",
            "daily_quota_exceeded",
            "monthly_quota_exceeded",
            "concurrent_idempotent_requests",
            "application_error",
            "internal_server_error",
        }
    )

    def __init__(
        self,
        api_key: str,
        base_url: str = "https://api.resend.com",
        *,
        webhook_secret: str | None = None,
        webhook_tolerance: float = 300,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
        from_: str | None = None,
        reply_to: str | None = None,
        message_id_domain: str | None = None,
    ) -> None:
        if not api_key:
            raise ConfigurationError("Resend needs an api_key")
        HTTPChannel.__init__(self, base_url=base_url, timeout=timeout, client=client)
        self._identity(from_, reply_to, message_id_domain)
        self._key = api_key
        self._webhook_secret = webhook_secret
        self.webhook_tolerance = webhook_tolerance

    def __repr__(self) -> str:
        return f"Resend(base_url={self.base_url!r})"

    def _request(self, outgoing: OutgoingEmail) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "from": outgoing.sender,
            "to": [outgoing.to],
            "subject": outgoing.subject,
            "text": outgoing.text,
            "headers": dict(outgoing.headers),
            "tags": [{"name": METADATA_KEY, "value": str(outgoing.delivery_id)}],
        }
        if outgoing.html is not None:
            body["html"] = outgoing.html
        if outgoing.reply_to:
            body["reply_to"] = outgoing.reply_to
        headers = {
            "Authorization": f"Bearer {self._key}",
            "Idempotency-Key": str(outgoing.delivery_id),
        }
        return "/emails", {"json": body, "headers": headers}

    def _classify(self, response: httpx.Response) -> DeliveryResult:
        data = _json(response)
        data = data if isinstance(data, dict) else {}
        status = response.status_code
        if 200 <= status < 300:
            return DeliveryResult.ok(provider_message_id=data.get("id"))
        name = data.get("name")
        text = _short(data.get("message", ""))
        detail = f"{name}: {text}" if name else (text or None)
        vendor = str(name) if name else None
        if name in self.TEMPORARY_NAMES:
            return DeliveryResult.temporary(
                f"HTTP {status}: {detail}",
                error_class=f"http_{status}",
                vendor_code=vendor,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        return classify_http(response, vendor_code=vendor, detail=detail)

    def parse_feedback(
        self, headers: Mapping[str, str], body: bytes, *, url: str | None = None
    ) -> list[Feedback]:
        """Verify the webhook's Svix signature, then parse the event.

        Args:
            headers: the request headers (any case).
            body: the raw request body.
            url: the full URL Resend called (unused).
        """
        if self._webhook_secret is None:
            raise ConfigurationError("Resend feedback needs webhook_secret=...")
        event = verify_resend(headers, body, self._webhook_secret, tolerance=self.webhook_tolerance)
        return parse_resend_feedback(event, header(headers, "svix-id") or "")


def _display_name(header: str) -> str | None:
    from email.utils import parseaddr

    name, _ = parseaddr(header)
    return name or None


def _bare_address(header: str) -> str:
    from email.utils import parseaddr

    return parseaddr(header)[1] or header
