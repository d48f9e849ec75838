"""SMS through Twilio's Messages API, with signed status callbacks.

Outcome mapping for Twilio's error codes:

========================  =========================================  ==========
code                      meaning                                    outcome
========================  =========================================  ==========
21211, 21614, 21408,      invalid number, not a mobile number,       permanent
21612                     region not enabled, unroutable
21610                     recipient replied STOP (unsubscribed)      bounced
20003                     authentication failed                      permanent
20429, HTTP 429, 5xx      rate limited or Twilio unavailable         temporary
========================  =========================================  ==========

21610 is reported as *bounced*, not merely permanent: the number will refuse
every message from this sender until the person texts START, exactly like a
hard-bounced email address, so whatever suppresses bounced addresses should
suppress it too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import httpx

from chimeway.channels._http import HTTPChannel, classify_http, json_object, parse_retry_after
from chimeway.channels._signing import as_bytes, lowered_headers
from chimeway.errors import ConfigurationError, SignatureError
from chimeway.values import DeliveryResult, Feedback, FeedbackStatus, Message, Recipient

__all__ = ["Sms", "twilio_signature"]

BODY_LIMIT = 1600
PERMANENT_CODES = frozenset({21211, 21614, 21408, 21612, 20003, 21606, 21659})
BOUNCED_CODES = frozenset({21610})
TEMPORARY_CODES = frozenset({20429, 20500, 20503})
# Delivery-report error codes that mean the number itself is bad (as opposed
# to a carrier hiccup such as 30003 "unreachable handset" or 30008 "unknown").
BOUNCED_REPORT_CODES = frozenset({21211, 21610, 21614, 30005, 30006})


def twilio_signature(url: str, params: Iterable[tuple[str, str]], auth_token: str) -> str:
    """Compute ``X-Twilio-Signature`` for a form-encoded callback.

    The signed string is the full URL followed by every parameter's name and
    value, sorted by name; the signature is its base64 HMAC-SHA1 under the
    account's auth token.

    Args:
        url: the exact URL Twilio requested, query string included.
        params: the POSTed form parameters.
        auth_token: the account's auth token.
    """
    data = url + "".join(f"{name}{value}" for name, value in sorted(params))
    digest = hmac.new(as_bytes(auth_token), as_bytes(data), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class Sms(HTTPChannel):
    """Send text messages with Twilio.

    Each send POSTs ``To``, ``From`` (or ``MessagingServiceSid``), ``Body``
    and, when configured, ``StatusCallback`` to
    ``/2010-04-01/Accounts/{account_sid}/Messages.json`` with HTTP basic
    auth. The returned message ``sid`` is the provider message id. See the
    module docstring for how Twilio error codes map onto outcomes.

    Fields read: ``body`` (at most 1600 characters). The number is
    ``recipient.phone`` (E.164).

    Args:
        account_sid: the Twilio account SID (``AC...``).
        auth_token: the account's auth token; also verifies status callbacks.
        from_: the sending number, when not using a messaging service.
        messaging_service_sid: a messaging service (``MG...``) to send from instead.
        status_callback: the URL Twilio should report delivery status to.
        base_url: the API root.
        timeout: seconds for connect/read/write.
        client: an ``httpx.Client`` to use instead of a pooled one of its own.
    """

    required_fields = ("body",)

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        from_: str | None = None,
        messaging_service_sid: str | None = None,
        status_callback: str | None = None,
        base_url: str = "https://api.twilio.com",
        timeout: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        if not account_sid or not auth_token:
            raise ConfigurationError("Sms needs account_sid and auth_token")
        if not from_ and not messaging_service_sid:
            raise ConfigurationError("Sms needs from_= or messaging_service_sid=")
        super().__init__(base_url=base_url, timeout=timeout, client=client)
        self.account_sid = account_sid
        self._auth_token = auth_token
        self.from_ = from_
        self.messaging_service_sid = messaging_service_sid
        self.status_callback = status_callback

    def __repr__(self) -> str:
        return f"Sms(account_sid={self.account_sid!r}, from_={self.from_!r})"

    def validate(self, fields: Mapping[str, Any], recipient: Recipient) -> str | None:
        """Refuse messages with no number to send to or a body over Twilio's limit.

        Args:
            fields: the rendered fields.
            recipient: the recipient.
        """
        if not recipient.phone:
            return "recipient has no phone number"
        reason = super().validate(fields, recipient)
        if reason:
            return reason
        length = len(str(fields["body"]))
        if length > BODY_LIMIT:
            return f"SMS body is {length} characters; Twilio's limit is {BODY_LIMIT}"
        return None

    def _build(self, message: Message) -> tuple[str, dict[str, str]]:
        form = {"To": message.recipient.phone or "", "Body": str(message.fields.get("body", ""))}
        if self.messaging_service_sid:
            form["MessagingServiceSid"] = self.messaging_service_sid
        if self.from_:
            form["From"] = self.from_
        if self.status_callback:
            form["StatusCallback"] = self.status_callback
        return f"/2010-04-01/Accounts/{self.account_sid}/Messages.json", form

    def send(self, message: Message) -> DeliveryResult:
        """Create one Twilio message.

        Args:
            message: the rendered message.
        """
        if not message.recipient.phone:
            return DeliveryResult.permanent("recipient has no phone number", error_class="no_phone")
        path, form = self._build(message)
        response = self.request("POST", path, data=form, auth=(self.account_sid, self._auth_token))
        return _classify(response)

    async def send_async(self, message: Message) -> DeliveryResult:
        """Native async variant of :meth:`send`.

        Args:
            message: the rendered message.
        """
        if not message.recipient.phone:
            return DeliveryResult.permanent("recipient has no phone number", error_class="no_phone")
        path, form = self._build(message)
        response = await self.request_async(
            "POST", path, data=form, auth=(self.account_sid, self._auth_token)
        )
        return _classify(response)

    def parse_feedback(
        self, headers: Mapping[str, str], body: bytes, *, url: str | None = None
    ) -> list[Feedback]:
        """Verify and read a Twilio status callback.

        ``delivered`` becomes *delivered*; ``undelivered`` and ``failed``
        become *bounced* when the ``ErrorCode`` says the number is bad and
        *failed* otherwise; intermediate statuses (queued, sent, ...) yield
        nothing. The provider event id is ``MessageSid:MessageStatus``, so a
        repeated callback deduplicates.

        Args:
            headers: the request headers (any case).
            body: the raw form-encoded body.
            url: the full URL Twilio called; defaults to ``status_callback``.

        Raises:
            SignatureError: ``X-Twilio-Signature`` is missing or does not match.
            ConfigurationError: no URL to verify against.
        """
        target = url or self.status_callback
        if not target:
            raise ConfigurationError("Sms.parse_feedback needs url= (or status_callback=)")
        given = lowered_headers(headers).get("x-twilio-signature")
        if not given:
            raise SignatureError("missing X-Twilio-Signature header")
        try:
            params = parse_qsl(as_bytes(body).decode(), keep_blank_values=True, strict_parsing=False)
        except (UnicodeDecodeError, ValueError) as exc:
            raise SignatureError("status callback body is not UTF-8 form data") from exc
        expected = twilio_signature(target, params, self._auth_token)
        if not hmac.compare_digest(as_bytes(given), expected.encode()):
            raise SignatureError("X-Twilio-Signature does not match the callback")
        form = dict(params)
        sid = form.get("MessageSid") or form.get("SmsSid")
        status = form.get("MessageStatus") or form.get("SmsStatus")
        if not sid or not status:
            return []
        error_code = form.get("ErrorCode") or None
        mapped: FeedbackStatus
        if status == "delivered":
            mapped = "delivered"
        elif status == "read":
            mapped = "opened"
        elif status in ("undelivered", "failed"):
            bad_number = (
                error_code is not None
                and error_code.isascii()
                and error_code.isdigit()
                and int(error_code) in BOUNCED_REPORT_CODES
            )
            mapped = "bounced" if bad_number else "failed"
        else:
            return []
        detail = f"Twilio status {status}" + (f" (error {error_code})" if error_code else "")
        return [
            Feedback(
                provider_event_id=f"{sid}:{status}",
                status=mapped,
                provider_message_id=sid,
                detail=detail,
                vendor_code=error_code,
            )
        ]


def _classify(response: httpx.Response | DeliveryResult) -> DeliveryResult:
    if isinstance(response, DeliveryResult):
        return response
    document = json_object(response)
    if not isinstance(document, dict):
        if 200 <= response.status_code < 300:
            return DeliveryResult.temporary(
                "Twilio answered 2xx without a JSON body", error_class="invalid_response"
            )
        return classify_http(response)
    if 200 <= response.status_code < 300:
        sid = document.get("sid")
        return DeliveryResult.ok(provider_message_id=str(sid) if sid else None)
    raw_code = document.get("code")
    code = raw_code if isinstance(raw_code, int) else None
    vendor_code = str(raw_code) if raw_code is not None else None
    text = str(document.get("message") or "")[:300]
    detail = f"Twilio {code}: {text}" if code is not None else text or None
    if code in BOUNCED_CODES:
        return DeliveryResult.bounced(
            detail or "unsubscribed", error_class=f"twilio_{code}", vendor_code=vendor_code
        )
    if code in TEMPORARY_CODES:
        return DeliveryResult.temporary(
            detail or "temporary Twilio error",
            error_class=f"twilio_{code}",
            vendor_code=vendor_code,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
    if code in PERMANENT_CODES:
        return DeliveryResult.permanent(
            detail or "rejected by Twilio", error_class=f"twilio_{code}", vendor_code=vendor_code
        )
    return classify_http(response, vendor_code=vendor_code, detail=detail)
