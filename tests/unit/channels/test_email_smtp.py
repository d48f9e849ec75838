"""SMTP provider and Email channel against a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest
from email_support import SMTPServer, StoringHandler, make_message, self_signed, smtp_server

from chimeway.channels.email import SMTP, Email
from chimeway.values import Recipient

FROM = "Shop <no-reply@shop.example>"


@pytest.fixture
def server() -> Iterator[SMTPServer]:
    with smtp_server() as running:
        yield running


def plain(server: SMTPServer, **kwargs: object) -> SMTP:
    return SMTP(server.host, server.port, starttls=False, timeout=5, **kwargs)  # type: ignore[arg-type]


def test_sends_multipart_alternative_with_headers(server: SMTPServer) -> None:
    channel = Email(plain(server), from_=FROM, reply_to="help@shop.example")
    message = make_message(
        {
            "subject": "Order 7 shipped",
            "text": "Plain body",
            "html": "<p>HTML &amp; body</p>",
            "unsubscribe_url": "https://shop.example/unsub/abc",
        }
    )
    result = channel.send(message)
    assert result.outcome == "succeeded", result.detail
    assert result.provider == "smtp"  # type: ignore[attr-defined]
    assert result.detail is not None and result.detail.startswith("smtp: ok")

    [received] = server.handler.received
    assert received.mail_from == "no-reply@shop.example"
    assert received.rcpt_tos == ["ada@example.test"]
    parsed = received.parsed()
    assert parsed["From"] == FROM
    assert parsed["To"] == "Ada Lovelace <ada@example.test>"
    assert parsed["Reply-To"] == "help@shop.example"
    assert parsed["Subject"] == "Order 7 shipped"
    assert parsed["Message-ID"] == f"<{message.delivery_id}@shop.example>"
    assert result.provider_message_id == parsed["Message-ID"]
    assert email.utils.parsedate_to_datetime(parsed["Date"]).tzinfo is not None
    assert parsed["List-Unsubscribe"] == "<https://shop.example/unsub/abc>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["X-Chimeway-Delivery-Id"] == str(message.delivery_id)
    assert parsed.get_content_type() == "multipart/alternative"
    text_part = parsed.get_body(preferencelist=("plain",))
    html_part = parsed.get_body(preferencelist=("html",))
    assert text_part is not None and html_part is not None
    assert text_part.get_content().strip() == "Plain body"
    assert html_part.get_content().strip() == "<p>HTML &amp; body</p>"


def test_message_id_is_stable_per_delivery_and_domain_configurable(server: SMTPServer) -> None:
    channel = Email(plain(server), from_=FROM, message_id_domain="mail.shop.example")
    delivery_id = uuid.uuid4()
    for _ in range(2):
        assert channel.send(make_message(delivery_id=delivery_id)).outcome == "succeeded"
    assert channel.send(make_message()).outcome == "succeeded"
    ids = [r.parsed()["Message-ID"] for r in server.handler.received]
    assert ids[0] == ids[1] == f"<{delivery_id}@mail.shop.example>"
    assert ids[2] != ids[0]


def test_no_unsubscribe_headers_without_url_and_no_one_click_for_mailto(server: SMTPServer) -> None:
    channel = Email(plain(server), from_=FROM)
    channel.send(make_message())
    channel.send(
        make_message({"subject": "s", "text": "t", "unsubscribe_url": "mailto:unsub@shop.example"})
    )
    first, second = (r.parsed() for r in server.handler.received)
    assert first["List-Unsubscribe"] is None and first["List-Unsubscribe-Post"] is None
    assert second["List-Unsubscribe"] == "<mailto:unsub@shop.example>"
    assert second["List-Unsubscribe-Post"] is None


def test_html_only_gets_a_derived_text_part_and_body_field_is_text(server: SMTPServer) -> None:
    channel = Email(plain(server), from_=FROM)
    channel.send(
        make_message(
            {"subject": "s", "html": "<h1>Hi</h1><p>Your <b>order</b></p><style>x{}</style>"}
        )
    )
    channel.send(make_message({"subject": "s", "body": "from body"}))
    first, second = (r.parsed() for r in server.handler.received)
    text = first.get_body(preferencelist=("plain",))
    assert text is not None
    assert text.get_content().replace("\r\n", "\n").strip() == "Hi\n\nYour order"
    assert second.get_content_type() == "text/plain"
    assert second.get_content().strip() == "from body"


def test_header_injection_through_subject_is_flattened(server: SMTPServer) -> None:
    channel = Email(plain(server), from_=FROM)
    result = channel.send(make_message({"subject": "Hi\r\nBcc: victim@example.test", "text": "x"}))
    assert result.outcome == "succeeded"
    parsed = server.handler.received[0].parsed()
    assert parsed["Bcc"] is None
    assert parsed["Subject"] == "Hi Bcc: victim@example.test"
    assert server.handler.received[0].rcpt_tos == ["ada@example.test"]


def test_non_ascii_names_and_subject_are_encoded(server: SMTPServer) -> None:
    channel = Email(plain(server), from_="Boutique Éclair <no-reply@shop.example>")
    recipient = Recipient(id="u", email="zoe@example.test", name="Zoë Ünal")
    result = channel.send(
        make_message(
            {"subject": "Commande expédiée ✓", "text": "Merci — à bientôt"}, recipient=recipient
        )
    )
    assert result.outcome == "succeeded", result.detail
    raw = server.handler.received[0].content
    assert raw.isascii()
    parsed = server.handler.received[0].parsed()
    assert parsed["Subject"] == "Commande expédiée ✓"
    assert parsed["To"] == "Zoë Ünal <zoe@example.test>"
    assert parsed.get_content().strip() == "Merci — à bientôt"


def test_one_connection_per_thread_is_reused(server: SMTPServer) -> None:
    provider = plain(server)
    channel = Email(provider, from_=FROM)
    for _ in range(3):
        assert channel.send(make_message()).outcome == "succeeded"

    def other_thread() -> None:
        for _ in range(2):
            assert channel.send(make_message()).outcome == "succeeded"

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    peers = [r.peer for r in server.handler.received]
    assert len(set(peers[:3])) == 1
    assert len(set(peers[3:])) == 1
    assert peers[0] != peers[3]
    channel.close()


def test_reconnects_when_the_pooled_connection_was_dropped(server: SMTPServer) -> None:
    channel = Email(plain(server), from_=FROM)
    assert channel.send(make_message()).outcome == "succeeded"
    server.restart()  # drops the pooled connection server-side
    result = channel.send(make_message())
    assert result.outcome == "succeeded", result.detail
    assert len(server.handler.received) == 2


@pytest.mark.parametrize(
    ("reply", "outcome", "error_class", "vendor_code"),
    [
        (
            "550 5.1.1 <ada@example.test>: Recipient address rejected: User unknown",
            "bounced",
            "smtp_550",
            "5.1.1",
        ),
        ("551 5.1.6 User not local", "bounced", "smtp_551", "5.1.6"),
        ("553 5.1.3 Bad recipient address syntax", "bounced", "smtp_553", "5.1.3"),
        ("452 4.2.2 Mailbox full, try later", "temporary", "smtp_452", "4.2.2"),
        ("554 5.7.1 Relay access denied", "permanent", "smtp_554", "5.7.1"),
    ],
)
def test_recipient_refusals_are_classified(
    reply: str, outcome: str, error_class: str, vendor_code: str
) -> None:
    handler = StoringHandler(rcpt_replies={"ada@example.test": reply})
    with smtp_server(handler) as server:
        channel = Email(plain(server), from_=FROM)
        result = channel.send(make_message())
        assert result.outcome == outcome
        assert result.error_class == error_class
        assert result.vendor_code == vendor_code
        assert result.detail is not None and "RCPT" in result.detail
        # The connection survives a refusal (RSET) and is reused for the next send.
        handler.rcpt_replies.clear()
        assert channel.send(make_message()).outcome == "succeeded"


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        ("451 4.3.0 Temporary local problem", "temporary"),
        ("550 5.7.1 Message rejected as spam", "permanent"),
        ("552 5.3.4 Message too big", "permanent"),
    ],
)
def test_data_refusals_are_classified(reply: str, outcome: str) -> None:
    with smtp_server(StoringHandler(data_reply=reply)) as server:
        result = Email(plain(server), from_=FROM).send(make_message())
    assert result.outcome == outcome
    assert result.detail is not None and "DATA" in result.detail


def test_sender_refusals_are_classified() -> None:
    with smtp_server(StoringHandler(mail_reply="421 4.7.0 Try again later")) as server:
        assert Email(plain(server), from_=FROM).send(make_message()).outcome == "temporary"
    with smtp_server(StoringHandler(mail_reply="553 5.7.1 Sender not allowed")) as server:
        # 553 to MAIL FROM is about our sender, not the recipient: no bounce.
        assert Email(plain(server), from_=FROM).send(make_message()).outcome == "permanent"


def test_login_succeeds_and_wrong_password_is_permanent_without_leaking_it() -> None:
    with smtp_server(auth=("app", "right-password")) as server:
        good = Email(plain(server, username="app", password="right-password"), from_=FROM)
        assert good.send(make_message()).outcome == "succeeded"
        bad_provider = plain(server, username="app", password="wrong-password")
        result = Email(bad_provider, from_=FROM).send(make_message())
    assert result.outcome == "permanent"
    assert result.error_class == "smtp_535"
    assert result.detail is not None and "wrong-password" not in result.detail
    assert "wrong-password" not in repr(bad_provider)


def test_connection_refused_is_temporary() -> None:
    with smtp_server() as server:
        port = server.port
    result = Email(SMTP("127.0.0.1", port, starttls=False, timeout=2), from_=FROM).send(
        make_message()
    )
    assert result.outcome == "temporary"
    assert result.error_class == "ConnectionRefusedError"


def test_starttls_with_a_trusted_certificate() -> None:
    tls = self_signed()
    with smtp_server(starttls=tls.server) as server:
        provider = SMTP(server.host, server.port, starttls=True, timeout=5, tls_context=tls.client)
        result = Email(provider, from_=FROM).send(make_message())
        assert result.outcome == "succeeded", result.detail
        assert len(server.handler.received) == 1


def test_starttls_required_but_not_offered_is_permanent(server: SMTPServer) -> None:
    result = Email(SMTP(server.host, server.port, starttls=True, timeout=5), from_=FROM).send(
        make_message()
    )
    assert result.outcome == "permanent"
    assert result.detail is not None and "STARTTLS" in result.detail


def test_starttls_with_an_untrusted_certificate_is_permanent() -> None:
    tls, other = self_signed(), self_signed()
    with smtp_server(starttls=tls.server) as server:
        provider = SMTP(server.host, server.port, timeout=5, tls_context=other.client)
        result = Email(provider, from_=FROM).send(make_message())
    assert result.outcome == "permanent"
    assert result.error_class == "SSLCertVerificationError"


def test_implicit_tls() -> None:
    tls = self_signed()
    with smtp_server(implicit_tls=tls.server) as server:
        provider = SMTP(server.host, server.port, ssl=True, timeout=5, tls_context=tls.client)
        channel = Email(provider, from_=FROM)
        assert channel.send(make_message()).outcome == "succeeded"
        assert channel.send(make_message()).outcome == "succeeded"
        peers = {r.peer for r in server.handler.received}
        assert len(peers) == 1
        channel.close()


def test_send_async(server: SMTPServer) -> None:
    channel = Email(plain(server), from_=FROM)
    result = asyncio.run(channel.send_async(make_message()))
    assert result.outcome == "succeeded"
    assert len(server.handler.received) == 1


def test_smtp_used_directly_as_a_channel(server: SMTPServer) -> None:
    provider = plain(server, from_=FROM)
    assert provider.send(make_message()).outcome == "succeeded"
    unconfigured = plain(server)
    result = unconfigured.send(make_message())
    assert result.outcome == "permanent" and result.error_class == "configuration"


def test_non_ascii_address_needs_smtputf8() -> None:
    recipient = Recipient(id="u", email="zoë@exämple.test", name="Zoë")
    message = make_message({"subject": "Hé", "text": "ça va"}, recipient=recipient)
    with smtp_server() as server:
        refused = Email(plain(server), from_=FROM).send(message)
    assert refused.outcome == "permanent" and refused.error_class == "smtputf8_unsupported"
    with smtp_server(smtputf8=True) as server:
        result = Email(plain(server), from_=FROM).send(message)
        assert result.outcome == "succeeded", result.detail
        [received] = server.handler.received
    assert received.rcpt_tos == ["zoë@exämple.test"]
    parsed = received.parsed()
    assert parsed["To"] == "Zoë <zoë@exämple.test>"
    assert parsed["Subject"] == "Hé"
    assert parsed.get_content().strip() == "ça va"


def test_a_server_that_never_answers_times_out_as_temporary() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the TCP connection, never sends a greeting
    try:
        provider = SMTP("127.0.0.1", listener.getsockname()[1], starttls=False, timeout=0.2)
        result = Email(provider, from_=FROM).send(make_message())
    finally:
        listener.close()
    assert result.outcome == "temporary"
    assert result.error_class in {"TimeoutError", "SMTPServerDisconnected"}
