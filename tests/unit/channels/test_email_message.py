"""Building the email and planning-time validation."""

from __future__ import annotations

import uuid

import pytest
from email_support import make_message

from chimeway.channels.email import SMTP, Email
from chimeway.channels.email_message import build_email, email_problem, html_to_text
from chimeway.values import Recipient

ADA = Recipient(id="u1", email="ada@example.test")


@pytest.mark.parametrize(
    ("fields", "recipient", "reason"),
    [
        ({"subject": "s", "text": "t"}, Recipient(id="u1"), "recipient has no email address"),
        (
            {"subject": "s", "text": "t"},
            Recipient(id="u1", email="not-an-address"),
            "not a valid address",
        ),
        (
            {"subject": "s", "text": "t"},
            Recipient(id="u1", email="a@b.c\r\nBcc: x@y.z"),
            "not a valid address",
        ),
        ({"text": "t"}, ADA, "subject"),
        ({"subject": "  ", "text": "t"}, ADA, "subject"),
        ({"subject": "s"}, ADA, "text, body or html"),
        ({"subject": "s", "text": "t"}, ADA, None),
        ({"subject": "s", "body": "b"}, ADA, None),
        ({"subject": "s", "html": "<p>h</p>"}, ADA, None),
    ],
)
def test_validate(fields: dict[str, str], recipient: Recipient, reason: str | None) -> None:
    answer = Email(SMTP("localhost"), from_="a@b.example").validate(fields, recipient)
    assert answer == email_problem(fields, recipient)
    if reason is None:
        assert answer is None
    else:
        assert answer is not None and reason in answer


def test_build_email_defaults() -> None:
    delivery = uuid.uuid4()
    built = build_email(
        make_message({"subject": "s", "text": "t"}, delivery_id=delivery),
        from_="no-reply@shop.example",
    )
    assert built.sender == built.sender_address == "no-reply@shop.example"
    assert built.message_id == f"<{delivery}@shop.example>"
    assert built.to == "Ada Lovelace <ada@example.test>"
    assert dict(built.headers) == {"X-Chimeway-Delivery-Id": str(delivery)}


def test_html_to_text() -> None:
    html = "<html><head><title>x</title></head><body><h1>Hello&nbsp;Ada</h1><ul><li>one</li><li>two</li></ul><script>var a;</script></body></html>"
    assert html_to_text(html) == "Hello Ada\n\none\n\ntwo"


def test_send_refuses_what_validate_would_have_cancelled() -> None:
    # Port 9 on localhost is never contacted: the message is refused first.
    channel = Email(SMTP("127.0.0.1", 9, starttls=False, timeout=1), from_="a@b.example")
    bad = make_message(
        {"subject": "s", "text": "t"},
        recipient=Recipient(id="u", email="x@y.z\r\nRCPT TO:<evil@example.test>"),
    )
    result = channel.send(bad)
    assert (result.outcome, result.error_class) == ("permanent", "invalid_message")
    assert SMTP("127.0.0.1", 9, from_="a@b.example").send(bad).outcome == "permanent"


def test_unsubscribe_url_cannot_break_out_of_its_brackets() -> None:
    built = build_email(
        make_message(
            {"subject": "s", "text": "t", "unsubscribe_url": "<https://x.example/u>\r\nBcc: e@x"}
        ),
        from_="a@b.example",
    )
    # One line, the brackets gone and the spaces percent-encoded: still one URL.
    assert built.headers["List-Unsubscribe"] == "<https://x.example/u%20Bcc:%20e@x>"
