"""Local fake email providers (HTTP and SMTP) shared by the email tests and benchmark."""

from __future__ import annotations

from email_support.certs import TLSPair, self_signed
from email_support.http import FakeHTTP, Reply, Request
from email_support.messages import make_message
from email_support.smtp import SMTPServer, StoringHandler, smtp_server
from email_support.vendors import FakePostmark, FakeResend, FakeSendGrid

__all__ = [
    "FakeHTTP",
    "FakePostmark",
    "FakeResend",
    "FakeSendGrid",
    "Reply",
    "Request",
    "SMTPServer",
    "StoringHandler",
    "TLSPair",
    "make_message",
    "self_signed",
    "smtp_server",
]
