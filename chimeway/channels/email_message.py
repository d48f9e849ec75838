"""The email every provider sends: building it from a rendered message.

Fields read from the rendered message: ``subject`` (required), ``text`` (or
``body``), ``html`` and ``unsubscribe_url``. The HTML is sent as rendered;
escaping is the template layer's job. When only ``html`` is given, a plain
text part is derived from it so every message is multipart/alternative.

The ``Message-ID`` is ``<{delivery_id}@{domain}>``: the same delivery always
produces the same id, so a retry after an ambiguous failure (connection lost
after the message was handed over) can be recognised by the receiver.
"""

from __future__ import annotations

import asyncio
import binascii
import email.utils
import functools
import string
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.headerregistry import Address
from html.parser import HTMLParser
from typing import Any, ClassVar

from chimeway.channels.base import Channel
from chimeway.errors import ConfigurationError
from chimeway.values import DeliveryResult, Message, Recipient

__all__ = [
    "DELIVERY_ID_HEADER",
    "METADATA_KEY",
    "EmailProvider",
    "OutgoingEmail",
    "build_email",
    "email_problem",
    "html_to_text",
    "parse_sender",
    "unsendable",
    "unsubscribe_url",
]

DELIVERY_ID_HEADER = "X-Chimeway-Delivery-Id"
METADATA_KEY = "chimeway_delivery_id"


# ---------------------------------------------------------------------------
# The message


@dataclass(frozen=True, kw_only=True)
class OutgoingEmail:
    """One email, ready for any provider.

    Args:
        delivery_id: the delivery it belongs to.
        sender: the ``From`` header value (``"App <no-reply@example.com>"``).
        sender_address: the bare sender address (SMTP envelope).
        to_address: the recipient's address.
        to_name: the recipient's display name, if known.
        subject: the subject line (single line).
        text: the plain text body.
        html: the HTML body, or ``None``.
        reply_to: the ``Reply-To`` value, or ``None``.
        message_id: the stable ``Message-ID`` (with angle brackets).
        headers: extra headers every provider sends (``List-Unsubscribe``...).
    """

    delivery_id: uuid.UUID
    sender: str
    sender_address: str
    to_address: str
    to_name: str | None
    subject: str
    text: str
    html: str | None
    reply_to: str | None
    message_id: str
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def to(self) -> str:
        """The ``To`` header value."""
        return str(Address(display_name=self.to_name or "", addr_spec=self.to_address))

    def as_bytes(self) -> bytes:
        """The MIME message as sent over SMTP (CRLF line endings).

        multipart/alternative (text, then HTML) when there is HTML, else a
        single text/plain part. Bodies are quoted-printable UTF-8: readable,
        7-bit safe (no 8BITMIME needed) and with short lines. Written directly
        rather than through ``email.message``, which is an order of magnitude
        slower for this fixed shape; the stdlib parser reads it back in tests.
        """
        lines = [
            _fold("From", _mailbox(self.sender)),
            _fold("To", _mailbox(self.to_address, self.to_name)),
        ]
        if self.reply_to:
            lines.append(_fold("Reply-To", _mailbox(self.reply_to)))
        lines += [
            _fold("Subject", _text(self.subject)),
            "Date: " + email.utils.formatdate(usegmt=True),
            "Message-ID: " + self.message_id,
            "MIME-Version: 1.0",
        ]
        lines += [
            _fold(name, value.split() if name in _STRUCTURED else _text(value))
            for name, value in self.headers.items()
        ]
        if self.html is None:
            lines += [*_part_headers("plain"), "", _qp(self.text)]
        else:
            # "=_" never occurs in quoted-printable data, so the boundary
            # cannot collide with the bodies.
            boundary = f"=_chimeway_{uuid.uuid4().hex}"
            lines += [
                f'Content-Type: multipart/alternative; boundary="{boundary}"',
                "",
                f"--{boundary}",
                *_part_headers("plain"),
                "",
                _qp(self.text),
                f"--{boundary}",
                *_part_headers("html"),
                "",
                _qp(self.html),
                f"--{boundary}--",
            ]
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _part_headers(subtype: str) -> list[str]:
    return [
        f'Content-Type: text/{subtype}; charset="utf-8"',
        "Content-Transfer-Encoding: quoted-printable",
    ]


def _qp(body: str) -> str:
    normalized = body.replace("\r\n", "\n").replace("\r", "\n")
    encoded = binascii.b2a_qp(normalized.encode("utf-8"), istext=True).decode("ascii")
    return encoded.replace("\n", "\r\n")


# RFC 5322 §2.1.1: a line SHOULD be at most 78 characters and MUST be at
# most 998. Every word of a header value is kept short enough to sit on a
# folded line of its own, so folding always stays within both.
_FOLD_AT = 78
_LONGEST_WORD = _FOLD_AT - 2
# RFC 2047 §2: an encoded-word is at most 75 characters. Q encoding, with the
# characters §5(3) allows even inside a display name left as they are.
_EW_LIMIT = 75
_EW_START, _EW_END = "=?utf-8?q?", "?="
_Q_LITERAL = frozenset(string.ascii_letters + string.digits + "!*+-/")
# Headers whose values are URLs or tokens: never encoded-words (RFC 2047 §5).
_STRUCTURED = frozenset({"List-Unsubscribe", "List-Unsubscribe-Post", DELIVERY_ID_HEADER})
# "List-Unsubscribe: <" ... ">" must fit on one line.
MAX_UNSUBSCRIBE_URL = 998 - len("List-Unsubscribe: <>")


def _q(char: str) -> str:
    if char in _Q_LITERAL:
        return char
    if char == " ":
        return "_"
    return "".join(f"={byte:02X}" for byte in char.encode("utf-8"))


def _encoded_words(text: str) -> list[str]:
    """``text`` as RFC 2047 encoded-words of at most 75 characters, split between characters."""
    room = _EW_LIMIT - len(_EW_START) - len(_EW_END)
    words: list[str] = []
    current = ""
    for char in text:
        piece = _q(char)
        if current and len(current) + len(piece) > room:
            words.append(_EW_START + current + _EW_END)
            current = ""
        current += piece
    if current:
        words.append(_EW_START + current + _EW_END)
    return words


def _needs_encoding(word: str) -> bool:
    return (not word.isascii() or len(word) > _LONGEST_WORD or "=?" in word
            or not word.isprintable())


def _text(value: str) -> list[str]:
    """An unstructured value (a subject) as words, encoding the runs that need it.

    Adjacent words that need encoding go into one run with their spaces
    inside, because a decoder drops the whitespace between encoded-words.
    """
    tokens: list[str] = []
    run: list[str] = []
    for word in value.split():
        if _needs_encoding(word):
            run.append(word)
            continue
        if run:
            tokens += _encoded_words(" ".join(run))
            run = []
        tokens.append(word)
    if run:
        tokens += _encoded_words(" ".join(run))
    return tokens


def _mailbox(address: str, name: str | None = None) -> list[str]:
    """A mailbox (``Name <address>``) as words; a long or non-ASCII name is encoded."""
    if name is None:
        name, address = email.utils.parseaddr(address)
    if not name:
        return [address]
    if address.isascii() and not any(_needs_encoding(word) for word in name.split()):
        return email.utils.formataddr((" ".join(name.split()), address)).split()
    return [*_encoded_words(name), f"<{address}>"]


def _fold(name: str, tokens: list[str]) -> str:
    """``Name: tokens...``, folded at the spaces between tokens to stay within 78 characters."""
    lines: list[str] = []
    line = f"{name}:"
    for token in tokens:
        if len(line) + 1 + len(token) > _FOLD_AT and line != f"{name}:":
            lines.append(line)
            line = " " + token
        else:
            line = f"{line} {token}"
    lines.append(line)
    return "\r\n".join(lines)


def unsubscribe_url(fields: Mapping[str, Any]) -> str | None:
    """The ``unsubscribe_url`` field as it goes into ``List-Unsubscribe``, or ``None``.

    One line, no angle brackets, non-ASCII characters percent-encoded (a URL
    in a header can be neither folded nor encoded-words).
    """
    raw = fields.get("unsubscribe_url")
    if not raw:
        return None
    url = _one_line(raw).replace("<", "").replace(">", "").replace(" ", "%20")
    return urllib.parse.quote(url, safe="!#$%&'()*+,-./:;=?@[]~_")


def _one_line(value: Any) -> str:
    # A newline in a header would let template data inject headers.
    return " ".join(str(value).split())


@functools.lru_cache(maxsize=64)
def parse_sender(from_: str) -> tuple[str, str]:
    """The ``From`` header value and the bare address for ``from_``."""
    name, address = email.utils.parseaddr(from_)
    if not address or "@" not in address:
        raise ConfigurationError(
            f"from_ must be an address like 'App <no-reply@example.com>', got {from_!r}"
        )
    if name:
        return str(Address(display_name=name, addr_spec=address)), address
    return address, address


def email_problem(fields: Mapping[str, Any], recipient: Recipient) -> str | None:
    """Why a message can never be emailed, or ``None``.

    Args:
        fields: the rendered fields.
        recipient: who it is for.
    """
    if not recipient.email:
        return "recipient has no email address"
    address = recipient.email.strip()
    if "@" not in address or any(c in address for c in "\r\n<>, "):
        return "recipient email address is not a valid address"
    if not str(fields.get("subject") or "").strip():
        return "missing required field for email: subject"
    if not (fields.get("text") or fields.get("body") or fields.get("html")):
        return "missing email body: one of the fields text, body or html"
    if len(address) > 254:
        return "recipient email address is longer than 254 characters"
    unsubscribe = unsubscribe_url(fields)
    if unsubscribe is not None and len(unsubscribe) > MAX_UNSUBSCRIBE_URL:
        return (f"unsubscribe_url is {len(unsubscribe)} characters; a List-Unsubscribe header "
                f"holds at most {MAX_UNSUBSCRIBE_URL}")
    return None


def unsendable(message: Message) -> DeliveryResult | None:
    """A permanent result when ``message`` can never be emailed, else ``None``.

    Planning normally cancels such deliveries; this guards sends that
    skipped planning-time validation.

    Args:
        message: the rendered message.
    """
    problem = email_problem(message.fields, message.recipient)
    if problem is None:
        return None
    return DeliveryResult.permanent(problem, error_class="invalid_message")


def build_email(
    message: Message,
    *,
    from_: str,
    reply_to: str | None = None,
    message_id_domain: str | None = None,
) -> OutgoingEmail:
    """Build the :class:`OutgoingEmail` for a rendered message.

    Args:
        message: the rendered message.
        from_: the ``From`` address, optionally with a display name.
        reply_to: the ``Reply-To`` address.
        message_id_domain: domain of the ``Message-ID``; defaults to the
            sender's domain.
    """
    sender, sender_address = parse_sender(from_)
    fields = message.fields
    html = fields.get("html")
    html = str(html) if html else None
    text = fields.get("text") or fields.get("body")
    text = str(text) if text else (html_to_text(html) if html else "")
    domain = message_id_domain or sender_address.rpartition("@")[2]
    headers: dict[str, str] = {DELIVERY_ID_HEADER: str(message.delivery_id)}
    url = unsubscribe_url(fields)
    if url:
        headers["List-Unsubscribe"] = f"<{url}>"
        if url.lower().startswith("https://"):
            # RFC 8058 one-click is defined for HTTPS links only.
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return OutgoingEmail(
        delivery_id=message.delivery_id,
        sender=sender,
        sender_address=sender_address,
        to_address=(message.recipient.email or "").strip(),
        to_name=_one_line(message.recipient.name) if message.recipient.name else None,
        subject=_one_line(fields.get("subject", "")),
        text=text,
        html=html,
        reply_to=reply_to,
        message_id=f"<{message.delivery_id}@{domain}>",
        headers=headers,
    )


class _TextExtractor(HTMLParser):
    _BLOCKS: ClassVar[frozenset[str]] = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head"):
            self._skip += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head"):
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """A readable plain-text rendering of an HTML body."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


# ---------------------------------------------------------------------------
# Providers


class EmailProvider(Channel):
    """Base for email providers: sends an :class:`OutgoingEmail`.

    A provider is also a channel on its own (``Postmark(token, from_=...)``);
    inside :class:`Email` only :meth:`send_email` is used, with the
    ``Email`` channel's sender.
    """

    name: ClassVar[str] = "email"
    from_: str | None = None
    reply_to: str | None = None
    message_id_domain: str | None = None

    def _identity(
        self, from_: str | None, reply_to: str | None, message_id_domain: str | None
    ) -> None:
        if from_ is not None:
            parse_sender(from_)
        self.from_ = from_
        self.reply_to = reply_to
        self.message_id_domain = message_id_domain

    def send_email(self, outgoing: OutgoingEmail) -> DeliveryResult:
        """Send one built email.

        Args:
            outgoing: the email to send.
        """
        raise NotImplementedError

    async def send_email_async(self, outgoing: OutgoingEmail) -> DeliveryResult:
        """Async variant of :meth:`send_email`; by default runs it in a thread.

        Args:
            outgoing: the email to send.
        """
        return await asyncio.to_thread(self.send_email, outgoing)

    def _build(self, message: Message) -> OutgoingEmail | DeliveryResult:
        problem = unsendable(message)
        if problem is not None:
            return problem
        if self.from_ is None:
            return DeliveryResult.permanent(
                f"{type(self).__name__} used as a channel needs from_=...",
                error_class="configuration",
            )
        return build_email(
            message,
            from_=self.from_,
            reply_to=self.reply_to,
            message_id_domain=self.message_id_domain,
        )

    def send(self, message: Message) -> DeliveryResult:
        """Build the email from ``message`` and send it.

        Args:
            message: the rendered message.
        """
        built = self._build(message)
        return built if isinstance(built, DeliveryResult) else self.send_email(built)

    async def send_async(self, message: Message) -> DeliveryResult:
        """Async variant of :meth:`send`.

        Args:
            message: the rendered message.
        """
        built = self._build(message)
        return built if isinstance(built, DeliveryResult) else await self.send_email_async(built)

    def validate(self, fields: Mapping[str, Any], recipient: Recipient) -> str | None:
        """Cancel at planning time when there is no address, subject or body.

        Args:
            fields: the rendered fields.
            recipient: the recipient the message is for.
        """
        return email_problem(fields, recipient)
