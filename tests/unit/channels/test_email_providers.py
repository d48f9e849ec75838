"""Postmark, SendGrid and Resend against local fakes that answer as the vendors do."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from email_support import FakePostmark, FakeResend, FakeSendGrid, Reply, make_message

from chimeway.channels.email import Email, Postmark, Resend, SendGrid
from chimeway.errors import ConfigurationError

FROM = "Shop <no-reply@shop.example>"
UNSUB = {
    "subject": "Order 7",
    "text": "t",
    "html": "<p>h</p>",
    "unsubscribe_url": "https://shop.example/u/1",
}


@pytest.fixture
def postmark() -> Iterator[FakePostmark]:
    with FakePostmark() as fake:
        yield fake  # type: ignore[misc]


@pytest.fixture
def sendgrid() -> Iterator[FakeSendGrid]:
    with FakeSendGrid() as fake:
        yield fake  # type: ignore[misc]


@pytest.fixture
def resend() -> Iterator[FakeResend]:
    with FakeResend() as fake:
        yield fake  # type: ignore[misc]


# -- Postmark -------------------------------------------------------------------


def test_postmark_request_shape(postmark: FakePostmark) -> None:
    channel = Email(
        Postmark(postmark.token, base_url=postmark.url), from_=FROM, reply_to="help@shop.example"
    )
    message = make_message(UNSUB)
    result = channel.send(message)
    assert result.outcome == "succeeded", result.detail
    [request] = postmark.requests
    assert request.method == "POST" and request.path == "/email"
    assert request.header("x-postmark-server-token") == postmark.token
    body = request.json()
    assert body["From"] == FROM
    assert body["To"] == "Ada Lovelace <ada@example.test>"
    assert body["ReplyTo"] == "help@shop.example"
    assert body["Subject"] == "Order 7"
    assert (body["TextBody"], body["HtmlBody"]) == ("t", "<p>h</p>")
    assert body["MessageStream"] == "outbound"
    assert body["Metadata"] == {"chimeway_delivery_id": str(message.delivery_id)}
    headers = {h["Name"]: h["Value"] for h in body["Headers"]}
    assert headers["List-Unsubscribe"] == "<https://shop.example/u/1>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["X-Chimeway-Delivery-Id"] == str(message.delivery_id)
    sent_id = result.provider_message_id
    assert sent_id and len(sent_id) == 36


def test_postmark_inactive_recipient_bounces(postmark: FakePostmark) -> None:
    postmark.inactive.add("ada@example.test")
    result = Email(Postmark(postmark.token, base_url=postmark.url), from_=FROM).send(make_message())
    assert result.outcome == "bounced"
    assert result.vendor_code == "406"


def test_postmark_bad_token_is_permanent_and_not_leaked(postmark: FakePostmark) -> None:
    provider = Postmark("wrong-token-value", base_url=postmark.url)
    result = Email(provider, from_=FROM).send(make_message())
    assert result.outcome == "permanent"
    assert result.vendor_code == "10"
    assert result.error_class == "http_401"
    assert "wrong-token-value" not in (result.detail or "") and "wrong-token-value" not in repr(
        provider
    )


@pytest.mark.parametrize(
    ("reply", "outcome", "retry_after"),
    [
        (Reply(422, {"ErrorCode": 300, "Message": "Invalid email request"}), "permanent", None),
        (
            Reply(429, {"ErrorCode": 429, "Message": "Rate limit exceeded"}, {"Retry-After": "30"}),
            "temporary",
            30.0,
        ),
        (Reply(500, {"ErrorCode": 100, "Message": "Maintenance"}), "temporary", None),
        (Reply(503, "Service Unavailable", {"Retry-After": "5"}), "temporary", 5.0),
    ],
)
def test_postmark_errors_are_classified(
    postmark: FakePostmark, reply: Reply, outcome: str, retry_after: float | None
) -> None:
    postmark.script(reply)
    result = Email(Postmark(postmark.token, base_url=postmark.url), from_=FROM).send(make_message())
    assert result.outcome == outcome
    assert result.retry_after == retry_after


# -- SendGrid -------------------------------------------------------------------


def test_sendgrid_request_shape(sendgrid: FakeSendGrid) -> None:
    channel = Email(
        SendGrid(sendgrid.api_key, base_url=sendgrid.url),
        from_=FROM,
        reply_to="Help <help@shop.example>",
    )
    message = make_message(UNSUB)
    result = channel.send(message)
    assert result.outcome == "succeeded", result.detail
    [request] = sendgrid.requests
    assert request.method == "POST" and request.path == "/v3/mail/send"
    assert request.header("authorization") == f"Bearer {sendgrid.api_key}"
    body = request.json()
    assert body["personalizations"] == [
        {
            "to": [{"email": "ada@example.test", "name": "Ada Lovelace"}],
            "custom_args": {"chimeway_delivery_id": str(message.delivery_id)},
        }
    ]
    assert body["from"] == {"email": "no-reply@shop.example", "name": "Shop"}
    assert body["reply_to"] == {"email": "help@shop.example"}
    assert body["content"] == [
        {"type": "text/plain", "value": "t"},
        {"type": "text/html", "value": "<p>h</p>"},
    ]
    assert body["headers"]["List-Unsubscribe"] == "<https://shop.example/u/1>"
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert result.provider_message_id and len(result.provider_message_id) == 22


def test_sendgrid_validation_errors_are_permanent_with_field(sendgrid: FakeSendGrid) -> None:
    sendgrid.script(
        Reply(
            400,
            {
                "errors": [
                    {
                        "message": "Does not contain a valid address.",
                        "field": "from.email",
                        "help": None,
                    }
                ]
            },
        )
    )
    result = Email(SendGrid(sendgrid.api_key, base_url=sendgrid.url), from_=FROM).send(
        make_message()
    )
    assert result.outcome == "permanent"
    assert (
        result.detail is not None
        and "from.email: Does not contain a valid address." in result.detail
    )


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (401, "permanent"),
        (403, "permanent"),
        (429, "temporary"),
        (500, "temporary"),
        (502, "temporary"),
    ],
)
def test_sendgrid_statuses(sendgrid: FakeSendGrid, status: int, outcome: str) -> None:
    sendgrid.script(Reply(status, {"errors": [{"message": "nope", "field": None, "help": None}]}))
    result = Email(SendGrid(sendgrid.api_key, base_url=sendgrid.url), from_=FROM).send(
        make_message()
    )
    assert result.outcome == outcome
    assert result.error_class == f"http_{status}"


def test_sendgrid_wrong_key_is_permanent(sendgrid: FakeSendGrid) -> None:
    result = Email(SendGrid("SG.wrong", base_url=sendgrid.url), from_=FROM).send(make_message())
    assert result.outcome == "permanent"
    assert "SG.wrong" not in (result.detail or "")


# -- Resend ---------------------------------------------------------------------


def test_resend_request_shape_and_idempotency(resend: FakeResend) -> None:
    channel = Email(
        Resend(resend.api_key, base_url=resend.url), from_=FROM, reply_to="help@shop.example"
    )
    message = make_message(UNSUB)
    first = channel.send(message)
    again = channel.send(message)
    assert first.outcome == again.outcome == "succeeded"
    assert first.provider_message_id == again.provider_message_id
    assert len(resend.sent) == 1
    request = resend.requests[0]
    assert request.method == "POST" and request.path == "/emails"
    assert request.header("authorization") == f"Bearer {resend.api_key}"
    assert request.header("idempotency-key") == str(message.delivery_id)
    body = request.json()
    assert body["from"] == FROM
    assert body["to"] == ["Ada Lovelace <ada@example.test>"]
    assert body["reply_to"] == "help@shop.example"
    assert (body["subject"], body["text"], body["html"]) == ("Order 7", "t", "<p>h</p>")
    assert body["tags"] == [{"name": "chimeway_delivery_id", "value": str(message.delivery_id)}]
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (
            Reply(
                429,
                {"statusCode": 429, "name": "rate_limit_exceeded", "message": "Too many requests"},
                {"Retry-After": "1"},
            ),
            "temporary",
        ),
        (
            Reply(
                422,
                {"statusCode": 422, "name": "validation_error", "message": "Invalid `to` field."},
            ),
            "permanent",
        ),
        (
            Reply(400, {"statusCode": 400, "name": "validation_error", "message": "bad"}),
            "permanent",
        ),
        (
            Reply(500, {"statusCode": 500, "name": "application_error", "message": "oops"}),
            "temporary",
        ),
        (
            Reply(
                409,
                {
                    "statusCode": 409,
                    "name": "concurrent_idempotent_requests",
                    "message": "in flight",
                },
            ),
            "temporary",
        ),
    ],
)
def test_resend_errors_are_classified(resend: FakeResend, reply: Reply, outcome: str) -> None:
    resend.script(reply)
    result = Email(Resend(resend.api_key, base_url=resend.url), from_=FROM).send(make_message())
    assert result.outcome == outcome
    assert result.vendor_code == reply.body["name"]  # type: ignore[index]


def test_resend_missing_and_invalid_keys(resend: FakeResend) -> None:
    result = Email(Resend("re_wrong", base_url=resend.url), from_=FROM).send(make_message())
    assert (result.outcome, result.vendor_code) == ("permanent", "invalid_api_key")


# -- common ---------------------------------------------------------------------


def test_http_providers_used_directly_and_async(
    postmark: FakePostmark, sendgrid: FakeSendGrid, resend: FakeResend
) -> None:
    providers = [
        Postmark(postmark.token, base_url=postmark.url, from_=FROM),
        SendGrid(sendgrid.api_key, base_url=sendgrid.url, from_=FROM),
        Resend(resend.api_key, base_url=resend.url, from_=FROM),
    ]
    for provider in providers:
        assert provider.send(make_message()).outcome == "succeeded"
        assert asyncio.run(provider.send_async(make_message())).outcome == "succeeded"
        assert provider.validate({"subject": "s"}, make_message().recipient) is not None
        provider.close()
    assert len(postmark.sent) == len(sendgrid.sent) == len(resend.sent) == 2


def test_unreachable_provider_is_temporary() -> None:
    with FakePostmark() as fake:
        url = fake.url
    result = Email(Postmark("t", base_url=url, timeout=2), from_=FROM).send(make_message())
    assert result.outcome == "temporary"
    assert result.error_class == "ConnectError"


def test_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="server_token"):
        Postmark("")
    with pytest.raises(ConfigurationError, match="webhook_password"):
        Postmark("t", webhook_username="u")
    with pytest.raises(ConfigurationError, match="from_"):
        Email(Postmark("t"), from_="not an address")
    with pytest.raises(ConfigurationError, match="provider"):
        Email(from_=FROM)
    with pytest.raises(ConfigurationError, match="webhook_public_key"):
        SendGrid("k", webhook_public_key="bm90IGEga2V5")


def test_a_provider_that_never_answers_times_out_as_temporary() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        result = Email(Postmark("t", base_url=url, timeout=0.2), from_=FROM).send(make_message())
    finally:
        listener.close()
    assert result.outcome == "temporary"
    assert result.error_class == "ReadTimeout"
