"""The email on the wire meets RFC 5322 and RFC 2047, read back by strict parsers.

Every header line is at most 998 characters (78 where a line can be broken),
long words are encoded rather than left unbreakable, every encoded-word is at
most 75 characters, and One-Click unsubscribe is only offered for HTTPS.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import email.utils
import re
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from email_support import SMTPServer, make_message, smtp_server

from chimeway.channels.email import SMTP, Email
from chimeway.channels.email_message import MAX_UNSUBSCRIBE_URL, build_email, email_problem
from chimeway.values import Recipient

FROM = "Shop <no-reply@shop.example>"
ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[qQbB]\?[^?\s]*\?=")

# (subject, recipient display name): what a template and a user profile can produce.
CASES = [
    ("x" * 1100, "Ada Lovelace"),
    ("Order " + "7" * 300 + " shipped " + "y" * 80, "A" * 120),
    ("Ünïcödé " * 40, "Ærøskøbing Ångström " * 6),
    ("日本語のとても長い件名" * 15, "山田太郎" * 30),
    ("emoji 🎉🎉🎉 " + "🎉" * 60 + " done", "Zoë 🎉 " * 15),
    ("looks =?utf-8?q?encoded?= but is not", 'Doe, "Jo" ' * 12),
    ("tab\tand\u00a0nbsp and a bell \x07 inside", "Plain Name"),
]


def _header_lines(raw: bytes) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    return head.split("\r\n")


def _strict(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.strict)
    assert isinstance(message, EmailMessage)
    return message


def _normal(text: str) -> str:
    return " ".join(text.split())


def _check(raw: bytes, subject: str, name: str, address: str) -> None:
    lines = _header_lines(raw)
    assert max(len(line) for line in lines) <= 998
    # A line only runs past 78 when it holds one unbreakable token after the name.
    for line in lines:
        assert len(line) <= 78 or len(line.split(" ")) <= 2, line
    for word in ENCODED_WORD.findall(raw.split(b"\r\n\r\n", 1)[0].decode("utf-8")):
        assert len(word) <= 75, word
    parsed = _strict(raw)
    assert not parsed.defects
    assert _normal(str(parsed["Subject"])) == _normal(subject)
    [to] = parsed["To"].addresses
    assert to.addr_spec == address
    # The stdlib's address parser keeps the space between two encoded-words of
    # a display name (its own output reads back the same way); RFC 2047 §6.2
    # says to drop it, as the legacy decoder below does.
    decoded = str(email.header.make_header(email.header.decode_header(_raw_header(raw, "To"))))
    assert _normal(decoded) in (f"{_normal(name)} <{address}>", f'"{_normal(name)}" <{address}>',
                                email.utils.formataddr((_normal(name), address)))


def _raw_header(raw: bytes, name: str) -> str:
    unfolded = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8").replace("\r\n ", " ")
    [value] = [line.split(":", 1)[1].strip() for line in unfolded.split("\r\n")
               if line.lower().startswith(name.lower() + ":")]
    return value


@pytest.mark.parametrize(("subject", "name"), CASES, ids=range(len(CASES)))
def test_headers_fold_and_encode_within_the_limits(subject: str, name: str) -> None:
    message = make_message({"subject": subject, "text": "body"},
                           recipient=Recipient(id="u", email="ada@example.test", name=name))
    built = build_email(message, from_=FROM)
    _check(built.as_bytes(), subject, name, "ada@example.test")


@pytest.mark.parametrize(("url", "one_click"), [
    ("https://shop.example/unsub/abc", True),
    ("HTTPS://shop.example/unsub/abc", True),
    ("http://shop.example/unsub/abc", False),
    ("mailto:unsub@shop.example?subject=stop", False),
    ("ftp://shop.example/unsub", False),
])
def test_one_click_is_offered_for_https_links_only(url: str, one_click: bool) -> None:
    built = build_email(make_message({"subject": "s", "text": "t", "unsubscribe_url": url}), from_=FROM)
    parsed = _strict(built.as_bytes())
    assert parsed["List-Unsubscribe"] == f"<{url}>"
    assert (parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click") is one_click
    assert ("List-Unsubscribe-Post" in built.headers) is one_click


def test_unsubscribe_urls_are_ascii_and_bounded() -> None:
    built = build_email(make_message(
        {"subject": "s", "text": "t", "unsubscribe_url": "https://shop.example/désabonner?n=Zoë"}),
        from_=FROM)
    assert built.headers["List-Unsubscribe"] == "<https://shop.example/d%C3%A9sabonner?n=Zo%C3%AB>"
    too_long = {"subject": "s", "text": "t",
                "unsubscribe_url": "https://shop.example/u?t=" + "a" * MAX_UNSUBSCRIBE_URL}
    reason = email_problem(too_long, Recipient(id="u", email="ada@example.test"))
    assert reason is not None and "unsubscribe_url" in reason
    fits = {**too_long, "unsubscribe_url": too_long["unsubscribe_url"][:MAX_UNSUBSCRIBE_URL]}
    assert email_problem(fits, Recipient(id="u", email="ada@example.test")) is None
    lines = _header_lines(build_email(make_message(fits), from_=FROM).as_bytes())
    assert max(len(line) for line in lines) == 998


@pytest.fixture
def server() -> Iterator[SMTPServer]:
    with smtp_server() as running:
        yield running


def test_a_real_smtp_server_accepts_and_parses_what_is_sent(server: SMTPServer) -> None:
    channel = Email(SMTP(server.host, server.port, starttls=False, timeout=5),
                    from_="Ærøskøbing Bäckerei und Konditorei am Marktplatz <no-reply@shop.example>")
    sent = []
    for index, (subject, name) in enumerate(CASES):
        message = make_message(
            {"subject": subject, "text": "body", "unsubscribe_url": "http://shop.example/u"},
            recipient=Recipient(id=f"u{index}", email=f"u{index}@example.test", name=name))
        result = channel.send(message)
        # A line over 998 characters gets aiosmtpd's "500 Line too long".
        assert result.outcome == "succeeded", (index, result.detail)
        sent.append((subject, name, f"u{index}@example.test"))
    assert len(server.handler.received) == len(CASES)
    for received, (subject, name, address) in zip(server.handler.received, sent, strict=True):
        _check(received.content, subject, name, address)
        parsed = _strict(received.content)
        assert parsed["From"].addresses[0].display_name.startswith("Ærøskøbing Bäckerei")
        assert parsed["List-Unsubscribe"] == "<http://shop.example/u>"
        assert parsed["List-Unsubscribe-Post"] is None  # plain HTTP: no One-Click
