"""A real aiosmtpd server on 127.0.0.1 that stores what it receives.

``StoringHandler`` stores each accepted message; it can also be told to
refuse recipients (``rcpt_replies``), MAIL FROM (``mail_reply``) or DATA
(``data_reply``) with any reply line, and ``smtp_server(auth=...)`` makes the
server demand a login (wrong credentials get aiosmtpd's 535).
"""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Received:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    peer: Any

    def parsed(self) -> EmailMessage:
        message = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message


@dataclass
class StoringHandler:
    """Stores accepted messages; refuses with scripted replies when told to."""

    received: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    mail_reply: str | None = None
    data_reply: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        content = envelope.original_content or envelope.content
        with self.lock:
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(content), session.peer)
            )
        return "250 2.0.0 Ok: queued"


@dataclass
class SMTPServer:
    """A running server: where it listens and what it stored."""

    host: str
    port: int
    handler: StoringHandler
    controller: Controller
    options: dict[str, Any] = field(default_factory=dict)

    def restart(self) -> None:
        """Stop (dropping every client connection) and listen again on the same port."""
        self.controller.stop()
        self.controller = Controller(
            self.handler, hostname=self.host, port=self.port, **self.options
        )
        self.controller.start()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _authenticator(username: str, password: str) -> Any:
    def check(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == username
            and auth_data.password.decode() == password
        )
        return AuthResult(success=ok, handled=False)

    return check


@contextmanager
def smtp_server(
    handler: StoringHandler | None = None,
    *,
    starttls: ssl.SSLContext | None = None,
    implicit_tls: ssl.SSLContext | None = None,
    auth: tuple[str, str] | None = None,
    smtputf8: bool = False,
) -> Iterator[SMTPServer]:
    """Run an aiosmtpd server on 127.0.0.1 for the duration of the block.

    Args:
        handler: the handler (a fresh ``StoringHandler`` by default).
        starttls: offer STARTTLS with this server context (and require it).
        implicit_tls: speak TLS from the first byte with this context.
        auth: demand a login with these credentials.
        smtputf8: offer the SMTPUTF8 extension.
    """
    handler = handler or StoringHandler()
    kwargs: dict[str, Any] = {}
    if starttls is not None:
        kwargs.update(tls_context=starttls, require_starttls=True)
    if implicit_tls is not None:
        kwargs.update(ssl_context=implicit_tls)
    if auth is not None:
        kwargs.update(authenticator=_authenticator(*auth), auth_require_tls=False)
    # The controller offers SMTPUTF8 unless told not to.
    kwargs.update(enable_SMTPUTF8=smtputf8)
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    running = SMTPServer("127.0.0.1", port, handler, controller, kwargs)
    try:
        yield running
    finally:
        running.controller.stop()
