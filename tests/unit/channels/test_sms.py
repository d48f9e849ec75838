"""Sms (Twilio) channel against a local fake of the Messages API."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from channels_support import FakeTwilio, Reply, make_message, refused_url, running, twilio_error

from chimeway.channels.sms import Sms, twilio_signature
from chimeway.errors import ConfigurationError, SignatureError
from chimeway.values import Recipient

CALLBACK = "https://app.example.com/chimeway/feedback/sms?tenant=acme"


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    yield from running(FakeTwilio())


@pytest.fixture
def channel(twilio: FakeTwilio) -> Iterator[Sms]:
    ch = Sms(
        FakeTwilio.account_sid,
        FakeTwilio.auth_token,
        from_="+15017122661",
        status_callback=CALLBACK,
        base_url=twilio.base_url,
        timeout=2.0,
    )
    yield ch
    ch.close()


def _no_secret(detail: str | None) -> None:
    assert FakeTwilio.auth_token not in (detail or "")


def test_success_records_sid(twilio: FakeTwilio, channel: Sms) -> None:
    result = channel.send(make_message("sms", {"body": "Your order shipped"}))
    assert result.outcome == "succeeded"
    assert result.provider_message_id == f"SM{1:032x}"
    assert twilio.problems == []
    [request] = twilio.requests
    assert request.path == f"/2010-04-01/Accounts/{FakeTwilio.account_sid}/Messages.json"
    assert request.form() == {
        "To": "+15005550006",
        "From": "+15017122661",
        "Body": "Your order shipped",
        "StatusCallback": CALLBACK,
    }


def test_messaging_service(twilio: FakeTwilio) -> None:
    ch = Sms(
        FakeTwilio.account_sid,
        FakeTwilio.auth_token,
        messaging_service_sid="MG123",
        base_url=twilio.base_url,
    )
    assert ch.send(make_message("sms", {"body": "x"})).outcome == "succeeded"
    form = twilio.requests[0].form()
    assert form["MessagingServiceSid"] == "MG123"
    assert "From" not in form and "StatusCallback" not in form
    ch.close()


def test_invalid_number_from_the_fake_is_permanent_21211(twilio: FakeTwilio, channel: Sms) -> None:
    message = make_message("sms", {"body": "x"}, recipient=Recipient(id="u", phone="555-not-e164"))
    result = channel.send(message)
    assert (result.outcome, result.vendor_code, result.error_class) == (
        "permanent",
        "21211",
        "twilio_21211",
    )
    assert "not a valid phone number" in (result.detail or "")


@pytest.mark.parametrize(
    ("code", "text", "outcome"),
    [
        (21614, "'To' number is not a valid mobile number", "permanent"),
        (
            21408,
            "Permission to send an SMS has not been enabled for the region indicated by the 'To' number",
            "permanent",
        ),
        (21610, "Attempt to send to unsubscribed recipient", "bounced"),
    ],
)
def test_vendor_codes(twilio: FakeTwilio, channel: Sms, code: int, text: str, outcome: str) -> None:
    twilio.enqueue(twilio_error(code, text, 400))
    result = channel.send(make_message("sms", {"body": "x"}))
    assert (result.outcome, result.vendor_code) == (outcome, str(code))
    assert text in (result.detail or "")


def test_wrong_auth_token_is_permanent_20003(twilio: FakeTwilio) -> None:
    ch = Sms(FakeTwilio.account_sid, "wrong-token-value", from_="+1", base_url=twilio.base_url)
    result = ch.send(make_message("sms", {"body": "x"}))
    assert (result.outcome, result.vendor_code, result.error_class) == (
        "permanent",
        "20003",
        "twilio_20003",
    )
    assert "wrong-token-value" not in (result.detail or "")
    ch.close()


def test_too_many_requests_is_temporary_with_retry_after(twilio: FakeTwilio, channel: Sms) -> None:
    twilio.enqueue(twilio_error(20429, "Too Many Requests", 429, {"Retry-After": "5"}))
    result = channel.send(make_message("sms", {"body": "x"}))
    assert (result.outcome, result.vendor_code, result.retry_after) == ("temporary", "20429", 5.0)


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_temporary(twilio: FakeTwilio, channel: Sms, status: int) -> None:
    twilio.enqueue(twilio_error(20500, "Internal Server Error", status, {"Retry-After": "9"}))
    result = channel.send(make_message("sms", {"body": "x"}))
    assert (result.outcome, result.retry_after) == ("temporary", 9.0)
    twilio.enqueue(Reply(status, "<html>oops</html>"))
    assert channel.send(make_message("sms", {"body": "x"})).outcome == "temporary"


def test_unknown_4xx_code_is_permanent(twilio: FakeTwilio, channel: Sms) -> None:
    twilio.enqueue(
        twilio_error(21617, "The concatenated message body exceeds the 1600 character limit.", 400)
    )
    result = channel.send(make_message("sms", {"body": "x"}))
    assert (result.outcome, result.vendor_code) == ("permanent", "21617")


def test_timeout_and_refused_are_temporary(twilio: FakeTwilio) -> None:
    twilio.delay = 1.0
    slow = Sms(
        FakeTwilio.account_sid,
        FakeTwilio.auth_token,
        from_="+1",
        base_url=twilio.base_url,
        timeout=0.2,
    )
    result = slow.send(make_message("sms", {"body": "x"}))
    assert (result.outcome, result.error_class) == ("temporary", "ReadTimeout")
    _no_secret(result.detail)
    refused = Sms(
        FakeTwilio.account_sid,
        FakeTwilio.auth_token,
        from_="+1",
        base_url=refused_url(),
        timeout=1.0,
    )
    result = refused.send(make_message("sms", {"body": "x"}))
    assert (result.outcome, result.error_class) == ("temporary", "ConnectError")
    _no_secret(result.detail)
    slow.close()
    refused.close()


def test_validate(channel: Sms) -> None:
    assert channel.validate({"body": "x"}, Recipient(id="u", phone="+15005550006")) is None
    assert channel.validate({"body": "x"}, Recipient(id="u")) == "recipient has no phone number"
    assert "body" in (channel.validate({}, Recipient(id="u", phone="+1")) or "")
    assert "1600" in (channel.validate({"body": "x" * 1601}, Recipient(id="u", phone="+1")) or "")
    assert channel.validate({"body": "x" * 1600}, Recipient(id="u", phone="+1")) is None


def test_configuration_and_repr() -> None:
    with pytest.raises(ConfigurationError):
        Sms("AC1", "token")
    with pytest.raises(ConfigurationError):
        Sms("", "token", from_="+1")
    assert "s3cret" not in repr(Sms("AC1", "s3cret", from_="+1"))


def test_send_async(twilio: FakeTwilio, channel: Sms) -> None:
    async def run() -> str | None:
        result = await channel.send_async(make_message("sms", {"body": "x"}))
        await channel.async_client.aclose()
        return result.provider_message_id

    assert (asyncio.run(run()) or "").startswith("SM")
    assert twilio.problems == []


# -- status callbacks ----------------------------------------------------------


def _callback(
    params: dict[str, str], url: str = CALLBACK, token: str = FakeTwilio.auth_token
) -> tuple[dict[str, str], bytes]:
    # Computed here by hand (not with twilio_signature) as an independent check.
    data = url + "".join(k + params[k] for k in sorted(params))
    signature = base64.b64encode(
        hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    ).decode()
    return {
        "X-Twilio-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }, urlencode(params).encode()


BASE = {
    "AccountSid": FakeTwilio.account_sid,
    "MessageSid": "SM0001",
    "From": "+15017122661",
    "To": "+15005550006",
    "ApiVersion": "2010-04-01",
}


def test_twilio_signature_matches_hand_computed() -> None:
    headers, _ = _callback(BASE)
    assert (
        twilio_signature(CALLBACK, BASE.items(), FakeTwilio.auth_token)
        == headers["X-Twilio-Signature"]
    )


def test_twilio_signature_published_example() -> None:
    # The worked example from Twilio's webhook security documentation.
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio_signature(url, params.items(), "12345") == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_feedback_delivered(channel: Sms) -> None:
    headers, body = _callback({**BASE, "MessageStatus": "delivered", "SmsStatus": "delivered"})
    [feedback] = channel.parse_feedback(headers, body)
    assert (feedback.status, feedback.provider_message_id, feedback.provider_event_id) == (
        "delivered",
        "SM0001",
        "SM0001:delivered",
    )


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        ("undelivered", "30003", "failed"),
        ("undelivered", "30006", "bounced"),
        ("failed", "21610", "bounced"),
        ("failed", "", "failed"),
    ],
)
def test_feedback_failures(channel: Sms, status: str, code: str, expected: str) -> None:
    headers, body = _callback({**BASE, "MessageStatus": status, "ErrorCode": code})
    [feedback] = channel.parse_feedback(headers, body, url=CALLBACK)
    assert feedback.status == expected
    assert feedback.vendor_code == (code or None)
    assert feedback.provider_event_id == f"SM0001:{status}"


def test_feedback_intermediate_status_yields_nothing(channel: Sms) -> None:
    headers, body = _callback({**BASE, "MessageStatus": "sent"})
    assert channel.parse_feedback(headers, body) == []


def test_feedback_tampered_missing_or_wrong_url_is_refused(channel: Sms) -> None:
    headers, body = _callback({**BASE, "MessageStatus": "delivered"})
    with pytest.raises(SignatureError, match="does not match"):
        channel.parse_feedback(headers, body.replace(b"delivered", b"undelivered"))
    with pytest.raises(SignatureError, match="missing"):
        channel.parse_feedback({"Content-Type": "application/x-www-form-urlencoded"}, body)
    with pytest.raises(SignatureError):
        channel.parse_feedback(headers, body, url="https://evil.example.com/feedback")
    forged_headers, forged = _callback(
        {**BASE, "MessageStatus": "delivered"}, token="not-the-token"
    )
    with pytest.raises(SignatureError):
        channel.parse_feedback(forged_headers, forged)


def test_feedback_needs_a_url(twilio: FakeTwilio) -> None:
    ch = Sms(FakeTwilio.account_sid, FakeTwilio.auth_token, from_="+1", base_url=twilio.base_url)
    headers, body = _callback({**BASE, "MessageStatus": "delivered"})
    with pytest.raises(ConfigurationError):
        ch.parse_feedback(headers, body)
    assert ch.parse_feedback(headers, body, url=CALLBACK)[0].status == "delivered"
    ch.close()
