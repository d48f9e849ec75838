"""Webhook channel against a local Standard Webhooks receiver."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator

import pytest
from channels_support import FakeWebhookReceiver, Reply, make_message, refused_url, running

from chimeway.channels.webhook import Webhook, sign_webhook, verify_webhook
from chimeway.errors import ConfigurationError, SignatureError

KEY = b"0123456789abcdef0123456789abcdef"
SECRET = "whsec_" + base64.b64encode(KEY).decode()


@pytest.fixture
def receiver() -> Iterator[FakeWebhookReceiver]:
    yield from running(FakeWebhookReceiver(KEY))


@pytest.fixture
def channel(receiver: FakeWebhookReceiver) -> Iterator[Webhook]:
    webhook = Webhook(
        url=receiver.url, secret=SECRET, headers={"x-tenant-app": "shop"}, timeout=2.0
    )
    yield webhook
    webhook.close()


def test_success_posts_signed_payload(receiver: FakeWebhookReceiver, channel: Webhook) -> None:
    message = make_message("webhook", {"body": "order 7", "url": "https://shop/7"})
    result = channel.send(message)

    assert result.outcome == "succeeded"
    assert result.provider_message_id == f"msg_{message.delivery_id}"
    assert receiver.problems == []
    [request] = receiver.requests
    assert request.headers["webhook-id"] == f"msg_{message.delivery_id}"
    assert request.headers["x-tenant-app"] == "shop"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 5
    body = request.json()
    assert body["type"] == "order_shipped"
    assert body["timestamp"] == "2026-11-22T06:00:00Z"
    assert body["data"] == {
        "delivery_id": str(message.delivery_id),
        "notification_id": str(message.notification_id),
        "event_id": str(message.event_id),
        "tenant": "acme",
        "recipient": message.recipient.to_json(),
        "fields": {"body": "order 7", "url": "https://shop/7"},
    }
    # The receiver-side helper accepts what the channel sent.
    assert verify_webhook(request.body, request.headers, SECRET)["type"] == "order_shipped"


def test_webhook_id_is_stable_across_retries(
    receiver: FakeWebhookReceiver, channel: Webhook
) -> None:
    message = make_message("webhook", {"body": "x"})
    receiver.enqueue(Reply(503, "busy"))
    assert channel.send(message).outcome == "temporary"
    assert channel.send(message).outcome == "succeeded"
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert ids == {f"msg_{message.delivery_id}"}


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_temporary_with_retry_after(
    receiver: FakeWebhookReceiver, channel: Webhook, status: int
) -> None:
    receiver.enqueue(Reply(status, "slow down", {"Retry-After": "42"}))
    result = channel.send(make_message("webhook", {"body": "x"}))
    assert result.outcome == "temporary"
    assert result.error_class == f"http_{status}"
    assert result.retry_after == 42.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_other_client_errors_are_permanent(
    receiver: FakeWebhookReceiver, channel: Webhook, status: int
) -> None:
    receiver.enqueue(Reply(status, {"error": "nope"}))
    result = channel.send(make_message("webhook", {"body": "x"}))
    assert result.outcome == "permanent"
    assert result.error_class == f"http_{status}"
    assert "nope" in (result.detail or "")


def test_wrong_secret_is_refused_by_receiver(receiver: FakeWebhookReceiver) -> None:
    webhook = Webhook(url=receiver.url, secret="whsec_" + base64.b64encode(b"x" * 32).decode())
    result = webhook.send(make_message("webhook", {"body": "x"}))
    assert result.outcome == "permanent"
    assert result.error_class == "http_401"
    assert SECRET not in (result.detail or "")
    webhook.close()


def test_timeout_is_temporary(receiver: FakeWebhookReceiver) -> None:
    receiver.delay = 1.0
    webhook = Webhook(url=receiver.url, secret=SECRET, timeout=0.2)
    started = time.monotonic()
    result = webhook.send(make_message("webhook", {"body": "x"}))
    assert time.monotonic() - started < 0.9
    assert result.outcome == "temporary"
    assert result.error_class == "ReadTimeout"
    webhook.close()


def test_connection_refused_is_temporary() -> None:
    webhook = Webhook(url=refused_url() + "/hook", secret=SECRET, timeout=1.0)
    result = webhook.send(make_message("webhook", {"body": "x"}))
    assert result.outcome == "temporary"
    assert result.error_class == "ConnectError"
    assert SECRET not in (result.detail or "")
    webhook.close()


def test_extra_headers_apply_with_a_caller_supplied_client(receiver: FakeWebhookReceiver) -> None:
    import httpx

    with httpx.Client() as client:
        webhook = Webhook(url=receiver.url, secret=SECRET, headers={"x-app": "shop"}, client=client)
        assert webhook.send(make_message("webhook", {"body": "x"})).outcome == "succeeded"
        webhook.close()
        assert not client.is_closed
    assert receiver.requests[0].headers["x-app"] == "shop"


def test_unsigned_webhook_has_id_and_timestamp_only() -> None:
    with FakeWebhookReceiver(None) as receiver:
        webhook = Webhook(url=receiver.url)
        assert webhook.send(make_message("webhook", {"body": "x"})).outcome == "succeeded"
        [request] = receiver.requests
        assert "webhook-signature" not in request.headers
        assert request.headers["webhook-id"].startswith("msg_")
        webhook.close()


def test_send_async(receiver: FakeWebhookReceiver, channel: Webhook) -> None:
    async def run() -> list[str]:
        messages = [make_message("webhook", {"body": str(i)}) for i in range(5)]
        results = await asyncio.gather(*(channel.send_async(m) for m in messages))
        await channel.async_client.aclose()
        return [r.outcome for r in results]

    assert asyncio.run(run()) == ["succeeded"] * 5
    assert receiver.problems == []


def test_bad_configuration() -> None:
    with pytest.raises(ConfigurationError):
        Webhook(url="ftp://example.com", secret=SECRET)
    with pytest.raises(ConfigurationError):
        Webhook(url="https://example.com", secret="whsec_not base64!")


# -- verify_webhook ------------------------------------------------------------

PAYLOAD = b'{"type":"order_shipped","data":{"id":1}}'


def test_verify_accepts_any_of_several_signatures() -> None:
    headers = sign_webhook(PAYLOAD, SECRET, msg_id="msg_1")
    other = sign_webhook(PAYLOAD, b"old-secret-old-secret-old-secret", msg_id="msg_1")
    headers["webhook-signature"] = (
        f"{other['webhook-signature']} v1a,ignored {headers['webhook-signature']}"
    )
    upper = {k.upper(): v for k, v in headers.items()}
    assert verify_webhook(PAYLOAD, upper, SECRET) == json.loads(PAYLOAD)
    # Raw bytes and the whsec_ form are the same key.
    assert verify_webhook(PAYLOAD, headers, KEY)["data"] == {"id": 1}


def test_published_test_vector() -> None:
    # The example secret, id, timestamp, body and signature published with the
    # reference libraries' verification docs.
    payload = b'{"test": 2432232314}'
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    headers = sign_webhook(
        payload, secret, msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp=1614265330
    )
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert verify_webhook(payload, headers, secret, now=1614265330 + 10) == {"test": 2432232314}


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_refuses_missing_headers(missing: str) -> None:
    headers = sign_webhook(PAYLOAD, SECRET, msg_id="msg_1")
    del headers[missing]
    with pytest.raises(SignatureError, match=missing):
        verify_webhook(PAYLOAD, headers, SECRET)


def test_verify_refuses_tampering_and_wrong_secret() -> None:
    headers = sign_webhook(PAYLOAD, SECRET, msg_id="msg_1")
    with pytest.raises(SignatureError, match="no webhook-signature matches"):
        verify_webhook(PAYLOAD.replace(b"1", b"2"), headers, SECRET)
    with pytest.raises(SignatureError):
        verify_webhook(PAYLOAD, {**headers, "webhook-id": "msg_2"}, SECRET)
    with pytest.raises(SignatureError):
        verify_webhook(PAYLOAD, headers, b"another-secret-another-secret!!")


def test_verify_refuses_old_and_future_timestamps() -> None:
    headers = sign_webhook(PAYLOAD, SECRET, msg_id="msg_1", timestamp=1_000_000)
    with pytest.raises(SignatureError, match="tolerance"):
        verify_webhook(PAYLOAD, headers, SECRET, now=1_000_301)
    with pytest.raises(SignatureError, match="tolerance"):
        verify_webhook(PAYLOAD, headers, SECRET, now=999_000)
    assert verify_webhook(PAYLOAD, headers, SECRET, now=1_000_299, tolerance=300)
    with pytest.raises(SignatureError, match="integer"):
        verify_webhook(PAYLOAD, {**headers, "webhook-timestamp": "soon"}, SECRET)


# -- parse_feedback ------------------------------------------------------------


def _callback(
    status: str, delivery_id: str, secret: str | bytes = SECRET
) -> tuple[dict[str, str], bytes]:
    body = json.dumps(
        {
            "type": f"delivery.{status}",
            "timestamp": "2026-11-22T06:01:02Z",
            "data": {"delivery_id": delivery_id, "event_id": "e1", "reason": "mailbox full"},
        }
    ).encode()
    return sign_webhook(body, secret, msg_id="cb_77"), body


def test_feedback_signed_callback_is_read(channel: Webhook) -> None:
    message = make_message("webhook", {"body": "x"})
    headers, body = _callback("bounced", str(message.delivery_id))
    [feedback] = channel.parse_feedback(headers, body)
    assert feedback.status == "bounced"
    assert feedback.delivery_id == message.delivery_id
    assert feedback.provider_event_id == "cb_77"
    assert feedback.provider_message_id == f"msg_{message.delivery_id}"
    assert feedback.detail == "mailbox full"
    assert feedback.occurred_at is not None and feedback.occurred_at.minute == 1


def test_feedback_tampered_or_unsigned_is_refused(channel: Webhook) -> None:
    headers, body = _callback("delivered", "6f1c0000-0000-4000-8000-000000000001")
    with pytest.raises(SignatureError):
        channel.parse_feedback(headers, body.replace(b"delivered", b"bounced"))
    with pytest.raises(SignatureError):
        channel.parse_feedback({}, body)
    forged_headers, forged = _callback(
        "delivered", "x", secret=b"forged-secret-forged-secret-forged"
    )
    with pytest.raises(SignatureError):
        channel.parse_feedback(forged_headers, forged)


def test_feedback_unknown_types_yield_nothing(channel: Webhook) -> None:
    headers, body = _callback("queued", "6f1c0000-0000-4000-8000-000000000001")
    assert channel.parse_feedback(headers, body) == []


def test_feedback_without_secret_is_a_configuration_error() -> None:
    headers, body = _callback("delivered", "x")
    with pytest.raises(ConfigurationError):
        Webhook(url="https://example.com/h").parse_feedback(headers, body)
