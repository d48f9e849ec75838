"""The SMTP email provider: standard-library smtplib, one connection per thread.

Replies are classified by the stage they answer: 4xx anywhere, lost
connections and timeouts are temporary; 550/551/553 to ``RCPT`` (mailbox
unavailable, not local, name not allowed) mean the address bounced; any
other 5xx, including a failed login (535), is permanent.
"""

from __future__ import annotations

import smtplib
import socket
import ssl as ssl_module
import threading
from contextlib import suppress
from typing import ClassVar

from chimeway.channels.email_message import EmailProvider, OutgoingEmail
from chimeway.values import DeliveryResult

__all__ = ["SMTP"]


class _Disconnected(Exception):
    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(stage)
        self.stage = stage
        self.cause = cause


class SMTP(EmailProvider):
    """Send over SMTP with the standard library, one reused connection per thread.

    Args:
        host: the SMTP server.
        port: its port (587 for STARTTLS, 465 for implicit TLS).
        username: login user, or ``None`` for no authentication.
        password: login password.
        starttls: upgrade a plain connection with STARTTLS (required when set).
        ssl: connect with implicit TLS instead (``port=465``).
        timeout: seconds for connecting and for each command.
        local_hostname: the name sent in EHLO.
        tls_context: the TLS settings to use (e.g. to trust a private CA).
        from_: sender when used directly as a channel.
        reply_to: ``Reply-To`` when used directly as a channel.
        message_id_domain: ``Message-ID`` domain when used directly as a channel.
    """

    name: ClassVar[str] = "smtp"

    def __init__(
        self,
        host: str,
        port: int = 587,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = True,
        ssl: bool = False,
        timeout: float = 10,
        local_hostname: str | None = None,
        *,
        tls_context: ssl_module.SSLContext | None = None,
        from_: str | None = None,
        reply_to: str | None = None,
        message_id_domain: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self._password = password
        self.starttls = starttls and not ssl
        self.ssl = ssl
        self.timeout = timeout
        self.local_hostname = local_hostname
        self.tls_context = tls_context
        self._identity(from_, reply_to, message_id_domain)
        self._lock = threading.Lock()
        self._connections: dict[int, smtplib.SMTP] = {}

    def __repr__(self) -> str:
        return f"SMTP(host={self.host!r}, port={self.port!r}, username={self.username!r})"

    # -- connections ---------------------------------------------------------

    def _context(self) -> ssl_module.SSLContext:
        return self.tls_context or ssl_module.create_default_context()

    def _connect(self) -> smtplib.SMTP:
        conn: smtplib.SMTP
        if self.ssl:
            conn = smtplib.SMTP_SSL(
                self.host,
                self.port,
                self.local_hostname,
                timeout=self.timeout,
                context=self._context(),
            )
        else:
            conn = smtplib.SMTP(self.host, self.port, self.local_hostname, timeout=self.timeout)
        try:
            conn.ehlo()
            if self.starttls:
                if not conn.has_extn("starttls"):
                    raise smtplib.SMTPNotSupportedError("server does not offer STARTTLS")
                conn.starttls(context=self._context())
                conn.ehlo()
            if self.username is not None:
                conn.login(self.username, self._password or "")
        except BaseException:
            with suppress(Exception):
                conn.close()
            raise
        return conn

    def _connection(self) -> tuple[smtplib.SMTP, bool]:
        ident = threading.get_ident()
        with self._lock:
            conn = self._connections.get(ident)
        if conn is not None:
            return conn, False
        conn = self._connect()
        with self._lock:
            alive = {t.ident for t in threading.enumerate()}
            for stale in [i for i in self._connections if i not in alive]:
                with suppress(Exception):
                    self._connections.pop(stale).close()
            self._connections[ident] = conn
        return conn, True

    def _drop(self) -> None:
        with self._lock:
            conn = self._connections.pop(threading.get_ident(), None)
        if conn is not None:
            with suppress(Exception):
                conn.close()

    def close(self) -> None:
        """Say QUIT on every thread's connection."""
        with self._lock:
            conns, self._connections = list(self._connections.values()), {}
        for conn in conns:
            with suppress(Exception):
                conn.quit()
            with suppress(Exception):
                conn.close()

    # -- sending ---------------------------------------------------------------

    def send_email(self, outgoing: OutgoingEmail) -> DeliveryResult:
        """Send one email, reconnecting once if a reused connection went stale.

        Args:
            outgoing: the email to send.
        """
        utf8 = not (outgoing.sender_address + outgoing.to_address).isascii()
        payload = outgoing.as_bytes()
        for _ in range(2):
            try:
                conn, fresh = self._connection()
            except Exception as exc:
                return _classify_exception(exc, "connect")
            try:
                return self._transact(conn, outgoing, payload, utf8)
            except _Disconnected as lost:
                self._drop()
                # Before DATA nothing was handed over, so a stale pooled
                # connection is safely retried once on a fresh one.
                if fresh or lost.stage == "DATA":
                    return _classify_exception(lost.cause, lost.stage)
            except Exception as exc:
                self._drop()
                return _classify_exception(exc, "send")
        return DeliveryResult.temporary(
            "SMTP connection lost twice", error_class="SMTPServerDisconnected"
        )

    def _transact(
        self, conn: smtplib.SMTP, outgoing: OutgoingEmail, payload: bytes, utf8: bool
    ) -> DeliveryResult:
        options: list[str] = []
        if utf8:
            if not conn.has_extn("smtputf8"):
                return DeliveryResult.permanent(
                    "address needs SMTPUTF8, which the server does not support",
                    error_class="smtputf8_unsupported",
                )
            options = ["SMTPUTF8", "BODY=8BITMIME"]
        stage = "MAIL"
        try:
            code, reply = conn.mail(outgoing.sender_address, options)
            if code != 250:
                _reset(conn)
                return _classify_reply(stage, code, reply)
            stage = "RCPT"
            code, reply = conn.rcpt(outgoing.to_address)
            if code not in (250, 251):
                _reset(conn)
                return _classify_reply(stage, code, reply)
            stage = "DATA"
            try:
                code, reply = conn.data(payload)
            except smtplib.SMTPDataError as exc:
                _reset(conn)
                return _classify_reply(stage, exc.smtp_code, exc.smtp_error)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise _Disconnected(stage, exc) from exc
        if code != 250:
            _reset(conn)
            return _classify_reply(stage, code, reply)
        return DeliveryResult.ok(
            provider_message_id=outgoing.message_id, detail=_reply_text(code, reply) or None
        )


def _reset(conn: smtplib.SMTP) -> None:
    with suppress(Exception):
        conn.rset()


def _reply_text(code: int, reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return f"{code} {' '.join(text.split())}"[:300]


def _enhanced_code(reply: bytes | str) -> str | None:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    head = text.split(" ", 1)[0]
    parts = head.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return head
    return None


# Mailbox unavailable / not local / name not allowed: the address is bad.
_BOUNCE_CODES = frozenset({550, 551, 553})


def _classify_reply(stage: str, code: int, reply: bytes | str) -> DeliveryResult:
    """Map an SMTP reply at a stage onto an outcome."""
    detail = f"SMTP {stage} refused: {_reply_text(code, reply)}"
    error_class = f"smtp_{code}"
    vendor = _enhanced_code(reply) or str(code)
    if 400 <= code < 500 or code < 200:
        return DeliveryResult.temporary(detail, error_class=error_class, vendor_code=vendor)
    if stage == "RCPT" and code in _BOUNCE_CODES:
        return DeliveryResult.bounced(detail, error_class=error_class, vendor_code=vendor)
    return DeliveryResult.permanent(detail, error_class=error_class, vendor_code=vendor)


def _classify_exception(exc: BaseException, stage: str) -> DeliveryResult:
    """Map an exception raised while talking SMTP onto an outcome."""
    name = type(exc).__name__
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        code = exc.smtp_code
        detail = f"SMTP authentication failed: {_reply_text(code, exc.smtp_error)}"
        if 400 <= code < 500:
            return DeliveryResult.temporary(
                detail, error_class=f"smtp_{code}", vendor_code=str(code)
            )
        return DeliveryResult.permanent(detail, error_class=f"smtp_{code}", vendor_code=str(code))
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return DeliveryResult.permanent(f"SMTP server: {exc}", error_class=name)
    if isinstance(exc, smtplib.SMTPResponseException):
        return _classify_reply(stage, exc.smtp_code, exc.smtp_error)
    if isinstance(exc, ssl_module.SSLCertVerificationError):
        return DeliveryResult.permanent(
            f"TLS certificate not trusted: {exc.verify_message}", error_class=name
        )
    if isinstance(
        exc, smtplib.SMTPServerDisconnected | socket.timeout | OSError | smtplib.SMTPException
    ):
        text = str(exc)
        detail = f"SMTP {stage}: {name}: {text}" if text else f"SMTP {stage}: {name}"
        return DeliveryResult.temporary(detail, error_class=name)
    return DeliveryResult.temporary(f"SMTP {stage}: {name}: {exc}", error_class=name)
