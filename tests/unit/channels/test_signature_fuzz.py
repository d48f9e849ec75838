"""Signature checks raise nothing but SignatureError, whatever a request carries.

The feedback endpoints answer 401 for ``SignatureError``; any other
exception would be a 500 (and, before verification, a crash an attacker
can trigger at will).
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimeway.channels import Postmark, Resend, SendGrid, Sms, Webhook, sign_webhook, verify_webhook
from chimeway.channels.email_feedback import (
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    parse_sendgrid_feedback,
)
from chimeway.errors import SignatureError

SECRET = "whsec_" + base64.b64encode(b"fuzzing-secret-fuzzing-secret!!").decode()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any code point, lone surrogates included (what a caller's str may hold).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
numbers = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400).map(str),
    st.integers(min_value=0, max_value=10**20).map(lambda n: f"{n:_}"),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.just(str(int(time.time()))),
)
header_value = st.one_of(any_text, numbers, st.binary(max_size=20))
bodies = st.one_of(st.binary(max_size=200), st.just(b"[" * 5000), st.just(b'{"type": 1e999}'))


def _headers(names: list[str]) -> Any:
    fixed = st.fixed_dictionaries({}, optional={name: header_value for name in names})
    extra = st.dictionaries(any_text, header_value, max_size=3)
    return st.tuples(fixed, extra).map(lambda pair: {**pair[1], **pair[0]})


def _only_signature_errors(call: Any) -> None:
    # Returning normally or raising SignatureError are the only outcomes allowed.
    with contextlib.suppress(SignatureError):
        call()


STANDARD = ["webhook-id", "webhook-timestamp", "webhook-signature"]
WEBHOOK = Webhook(url="http://127.0.0.1:9/", secret=SECRET)
RESEND = Resend("re_key", webhook_secret=SECRET)
SMS = Sms("AC123", "token", from_="+15550000000")
POSTMARK = Postmark("pm", webhook_username="user", webhook_password="pässword", webhook_secret="s3cret")
SENDGRID = SendGrid("SG.key", webhook_public_key=ec.generate_private_key(ec.SECP256R1()).public_key()
                    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                    .decode())


@FUZZ
@given(headers=_headers(STANDARD), body=bodies)
def test_verify_webhook(headers: dict[str, Any], body: bytes) -> None:
    _only_signature_errors(lambda: verify_webhook(body, headers, SECRET))
    _only_signature_errors(lambda: WEBHOOK.parse_feedback(headers, body))


json_objects = st.dictionaries(any_text.filter(lambda t: t.isprintable() and t.isascii()),
                               st.one_of(st.integers(), any_text.filter(str.isascii), st.none()),
                               max_size=4)


@FUZZ
@given(msg_id=st.text(st.characters(codec="ascii", exclude_characters="."), min_size=1, max_size=30)
       .filter(str.strip).filter(lambda t: t == t.strip(" \t")), document=json_objects)
def test_what_is_signed_verifies(msg_id: str, document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()
    headers = sign_webhook(body, SECRET, msg_id=msg_id)
    assert verify_webhook(body, headers, SECRET) == document


@FUZZ
@given(headers=_headers(["svix-id", "svix-timestamp", "svix-signature"]), body=bodies)
def test_resend(headers: dict[str, Any], body: bytes) -> None:
    _only_signature_errors(lambda: RESEND.parse_feedback(headers, body))


@FUZZ
@given(headers=_headers(["X-Twilio-Signature"]), body=bodies, url=any_text)
def test_twilio(headers: dict[str, Any], body: bytes, url: str) -> None:
    _only_signature_errors(lambda: SMS.parse_feedback(headers, body, url=url or "https://x/cb"))


@FUZZ
@given(headers=_headers(["Authorization", "X-Webhook-Secret"]), body=bodies)
def test_postmark(headers: dict[str, Any], body: bytes) -> None:
    _only_signature_errors(lambda: POSTMARK.parse_feedback(headers, body))


@FUZZ
@given(headers=_headers([SENDGRID_SIGNATURE_HEADER, SENDGRID_TIMESTAMP_HEADER]), body=bodies)
def test_sendgrid(headers: dict[str, Any], body: bytes) -> None:
    _only_signature_errors(lambda: SENDGRID.parse_feedback(headers, body))


@FUZZ
@given(timestamp=st.one_of(st.integers(min_value=-(10**400), max_value=10**400),
                           st.floats(allow_nan=True, allow_infinity=True)))
def test_sendgrid_event_times_never_raise(timestamp: Any) -> None:
    # After verification, a sender's odd timestamp must not turn into a 500.
    body = ('[{"event": "delivered", "sg_event_id": "e", "timestamp": %s}]' % (
        timestamp if not isinstance(timestamp, float) else repr(timestamp).replace("inf", "Infinity")
        .replace("nan", "NaN"))).encode()
    [report] = parse_sendgrid_feedback(body)
    assert report.status == "delivered"
