"""Provider status webhooks: Postmark (basic auth / shared secret) and SendGrid (ECDSA)."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from chimeway.channels.email import Email, Postmark, SendGrid
from chimeway.channels.email_feedback import sendgrid_message_id
from chimeway.errors import ConfigurationError, InvalidInputError, SignatureError

FROM = "Shop <no-reply@shop.example>"
DELIVERY = uuid.uuid4()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


BOUNCE = {
    "RecordType": "Bounce",
    "ID": 4323372036854775807,
    "Type": "HardBounce",
    "TypeCode": 1,
    "Name": "Hard bounce",
    "Tag": "Test",
    "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
    "Metadata": {"chimeway_delivery_id": str(DELIVERY)},
    "ServerID": 23,
    "MessageStream": "outbound",
    "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
    "Details": "Test bounce details",
    "Email": "john@example.com",
    "From": "sender@example.com",
    "BouncedAt": "2019-11-05T16:33:54.9070259Z",
    "DumpAvailable": True,
    "Inactive": True,
    "CanActivate": True,
    "Subject": "Test subject",
    "Content": "<Full dump of bounce>",
}

DELIVERY_HOOK = {
    "RecordType": "Delivery",
    "ServerID": 23,
    "MessageStream": "outbound",
    "MessageID": "00000000-0000-0000-0000-000000000000",
    "Recipient": "john@example.com",
    "Tag": "welcome-email",
    "DeliveredAt": "2019-11-05T16:33:54.9070259Z",
    "Details": "Test delivery webhook details",
    "Metadata": {"chimeway_delivery_id": str(DELIVERY)},
}


def test_postmark_bounce_with_basic_auth() -> None:
    provider = Postmark("t", webhook_username="hooks", webhook_password="pw-123")
    [feedback] = provider.parse_feedback(basic("hooks", "pw-123"), json.dumps(BOUNCE).encode())
    assert feedback.status == "bounced"
    assert feedback.provider_event_id == "postmark:bounce:4323372036854775807"
    assert feedback.provider_message_id == BOUNCE["MessageID"]
    assert feedback.delivery_id == DELIVERY
    assert feedback.vendor_code == "HardBounce"
    assert feedback.occurred_at == datetime(2019, 11, 5, 16, 33, 54, 907025, tzinfo=UTC)


def test_postmark_delivery_with_shared_secret_header() -> None:
    provider = Postmark("t", webhook_secret="s3cret", webhook_secret_header="X-Hook-Secret")
    [feedback] = provider.parse_feedback(
        {"x-hook-secret": "s3cret"}, json.dumps(DELIVERY_HOOK).encode()
    )
    assert feedback.status == "delivered"
    assert feedback.delivery_id == DELIVERY
    assert (
        feedback.provider_event_id
        == "postmark:delivery:00000000-0000-0000-0000-000000000000:john@example.com"
    )


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("SoftBounce", "failed"),
        ("BadEmailAddress", "bounced"),
        ("SpamComplaint", "complained"),
        ("AutoResponder", None),
        ("Transient", None),
    ],
)
def test_postmark_bounce_types(kind: str, status: str | None) -> None:
    provider = Postmark("t", webhook_secret="s")
    body = json.dumps({**BOUNCE, "Type": kind, "Inactive": kind == "SpamComplaint"}).encode()
    feedback = provider.parse_feedback({"X-Webhook-Secret": "s"}, body)
    assert [f.status for f in feedback] == ([status] if status else [])


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("hooks", "wrong"),
        basic("other", "pw-123"),
        {"Authorization": "Bearer pw-123"},
        {"Authorization": "Basic !!!notbase64"},
    ],
)
def test_postmark_rejects_wrong_credentials(headers: dict[str, str]) -> None:
    provider = Postmark("t", webhook_username="hooks", webhook_password="pw-123")
    with pytest.raises(SignatureError):
        provider.parse_feedback(headers, json.dumps(BOUNCE).encode())


def test_postmark_requires_both_when_both_configured() -> None:
    provider = Postmark("t", webhook_username="u", webhook_password="p", webhook_secret="s")
    body = json.dumps(DELIVERY_HOOK).encode()
    with pytest.raises(SignatureError):
        provider.parse_feedback(basic("u", "p"), body)
    assert provider.parse_feedback({**basic("u", "p"), "X-Webhook-Secret": "s"}, body)


def test_postmark_without_webhook_credentials_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        Postmark("t").parse_feedback({}, b"{}")


def test_postmark_authentic_but_malformed_body() -> None:
    with pytest.raises(InvalidInputError):
        Postmark("t", webhook_secret="s").parse_feedback({"X-Webhook-Secret": "s"}, b"not json")


# -- SendGrid -------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_b64(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def signed(
    key: ec.EllipticCurvePrivateKey, body: bytes, timestamp: str = "1700000000"
) -> dict[str, str]:
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


EVENTS = [
    {
        "email": "ada@example.test",
        "timestamp": 1700000001,
        "event": "processed",
        "sg_event_id": "p1",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
    },
    {
        "email": "ada@example.test",
        "timestamp": 1700000002,
        "event": "delivered",
        "response": "250 OK",
        "sg_event_id": "d1",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "chimeway_delivery_id": str(DELIVERY),
    },
    {
        "email": "bob@example.test",
        "timestamp": 1700000003,
        "event": "bounce",
        "type": "bounce",
        "status": "5.1.1",
        "reason": "550 5.1.1 unknown user",
        "sg_event_id": "b1",
        "sg_message_id": "X9mNoPq.filterdrecv-5645d9c87f-abcd-1-0",
        "chimeway_delivery_id": "not-a-uuid",
    },
    {
        "email": "cy@example.test",
        "timestamp": 1700000004,
        "event": "dropped",
        "reason": "Bounced Address",
        "sg_event_id": "x1",
        "sg_message_id": "Y1.filter0002.1.2.0",
    },
    {
        "email": "di@example.test",
        "timestamp": 1700000005,
        "event": "dropped",
        "reason": "Unsubscribed Address",
        "sg_event_id": "x2",
        "sg_message_id": "Y2.filter0002.1.2.0",
    },
    {
        "email": "ed@example.test",
        "timestamp": 1700000006,
        "event": "bounce",
        "type": "blocked",
        "reason": "IP blocked",
        "sg_event_id": "b2",
        "sg_message_id": "Y3.filter0002.1.2.0",
    },
]


def test_sendgrid_signed_events(key: ec.EllipticCurvePrivateKey) -> None:
    provider = SendGrid("k", webhook_public_key=public_b64(key))
    body = json.dumps(EVENTS).encode()
    feedback = provider.parse_feedback(signed(key, body), body)
    assert [(f.provider_event_id, f.status) for f in feedback] == [
        ("d1", "delivered"),
        ("b1", "bounced"),
        ("x1", "bounced"),
        ("x2", "failed"),
        ("b2", "failed"),
    ]
    delivered, bounced = feedback[0], feedback[1]
    assert delivered.delivery_id == DELIVERY
    assert delivered.provider_message_id == "14c5d75ce93.dfd.64b469"
    assert delivered.occurred_at == datetime.fromtimestamp(1700000002, UTC)
    assert bounced.delivery_id is None
    assert bounced.vendor_code == "5.1.1"
    assert bounced.provider_message_id == "X9mNoPq"


def test_sendgrid_accepts_a_pem_key(key: ec.EllipticCurvePrivateKey) -> None:
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    body = json.dumps(EVENTS[1:2]).encode()
    assert len(SendGrid("k", webhook_public_key=pem).parse_feedback(signed(key, body), body)) == 1


def test_sendgrid_rejects_tampering_and_missing_headers(key: ec.EllipticCurvePrivateKey) -> None:
    provider = SendGrid("k", webhook_public_key=public_b64(key))
    body = json.dumps(EVENTS).encode()
    headers = signed(key, body)
    with pytest.raises(SignatureError):
        provider.parse_feedback(headers, body.replace(b"delivered", b"bounce"))
    with pytest.raises(SignatureError):
        provider.parse_feedback(
            {**headers, "X-Twilio-Email-Event-Webhook-Timestamp": "1700000099"}, body
        )
    with pytest.raises(SignatureError):
        provider.parse_feedback({"X-Twilio-Email-Event-Webhook-Timestamp": "1700000000"}, body)
    with pytest.raises(SignatureError):
        provider.parse_feedback({}, body)
    with pytest.raises(SignatureError):
        provider.parse_feedback({**headers, "X-Twilio-Email-Event-Webhook-Signature": "@@@"}, body)
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(SignatureError):
        provider.parse_feedback(signed(other, body), body)


def test_sendgrid_without_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        SendGrid("k").parse_feedback({}, b"[]")


def test_email_channel_routes_feedback_to_the_provider_that_verifies(
    key: ec.EllipticCurvePrivateKey,
) -> None:
    channel = Email(
        providers=[
            Postmark("t", webhook_secret="pm-secret"),
            SendGrid("k", webhook_public_key=public_b64(key)),
        ],
        from_=FROM,
    )
    body = json.dumps(EVENTS[1:2]).encode()
    assert [f.status for f in channel.parse_feedback(signed(key, body), body)] == ["delivered"]
    pm_body = json.dumps(DELIVERY_HOOK).encode()
    assert [
        f.status for f in channel.parse_feedback({"X-Webhook-Secret": "pm-secret"}, pm_body)
    ] == ["delivered"]
    with pytest.raises(SignatureError):
        channel.parse_feedback({"X-Webhook-Secret": "nope"}, pm_body)


def test_sendgrid_message_id_suffixes() -> None:
    assert sendgrid_message_id("abc.filter0001.16648.5515E0B88.0") == "abc"
    assert sendgrid_message_id("abc.recvd-123-xyz-1-0") == "abc"
    assert sendgrid_message_id("plain-id") == "plain-id"


# -- Resend (Svix) --------------------------------------------------------------

RESEND_SECRET = "whsec_" + base64.b64encode(b"resend-test-signing-key-32bytes!").decode()


def svix_signed(body: bytes, msg_id: str = "msg_2Lh9KRb6pzN4QmS") -> dict[str, str]:
    from chimeway.channels.webhook import sign_webhook

    signed = sign_webhook(body, RESEND_SECRET, msg_id=msg_id)
    return {name.replace("webhook-", "svix-"): value for name, value in signed.items()}


def resend_event(kind: str, **data: object) -> bytes:
    return json.dumps(
        {
            "type": kind,
            "created_at": "2024-11-22T23:41:12.126Z",
            "data": {
                "email_id": "56761188-7520-42d8-8898-ff6fc54ce618",
                "from": "Shop <no-reply@shop.example>",
                "to": ["ada@example.test"],
                "subject": "Order 7",
                "tags": {"chimeway_delivery_id": str(DELIVERY)},
                **data,
            },
        }
    ).encode()


@pytest.mark.parametrize(
    ("kind", "extra", "status"),
    [
        ("email.delivered", {}, "delivered"),
        (
            "email.bounced",
            {"bounce": {"type": "Permanent", "subType": "General", "message": "unknown user"}},
            "bounced",
        ),
        (
            "email.bounced",
            {"bounce": {"type": "Transient", "subType": "MailboxFull", "message": "full"}},
            "failed",
        ),
        ("email.complained", {}, "complained"),
    ],
)
def test_resend_signed_events(kind: str, extra: dict[str, object], status: str) -> None:
    from chimeway.channels.email import Resend

    body = resend_event(kind, **extra)
    [feedback] = Resend("k", webhook_secret=RESEND_SECRET).parse_feedback(svix_signed(body), body)
    assert feedback.status == status
    assert feedback.provider_event_id == "msg_2Lh9KRb6pzN4QmS"
    assert feedback.provider_message_id == "56761188-7520-42d8-8898-ff6fc54ce618"
    assert feedback.delivery_id == DELIVERY


def test_resend_skips_non_outcomes_and_rejects_bad_signatures() -> None:
    from chimeway.channels.email import Resend

    provider = Resend("k", webhook_secret=RESEND_SECRET)
    sent = resend_event("email.sent")
    assert provider.parse_feedback(svix_signed(sent), sent) == []
    body = resend_event("email.delivered")
    with pytest.raises(SignatureError):
        provider.parse_feedback(svix_signed(body), body.replace(b"delivered", b"bounced"))
    with pytest.raises(SignatureError):
        provider.parse_feedback({}, body)
    with pytest.raises(ConfigurationError):
        Resend("k").parse_feedback(svix_signed(body), body)
