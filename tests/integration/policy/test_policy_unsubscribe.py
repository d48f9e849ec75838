"""Signed unsubscribe links: email fields, the opt-out they write, and refusal of bad tokens."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from policy_support import Comment, PasswordReset, delivery, fire, row_counts, summaries

from chimeway import Chimeway
from chimeway.errors import ConfigurationError, SignatureError
from chimeway.testing import FakeClock, RecordingChannel

SECRET = "s3cret-key-for-tests-only"


@pytest.fixture
def signed(app: Chimeway) -> Chimeway:
    app.configure_policy(secret=SECRET, unsubscribe_base_url="https://example.com/unsubscribe?src=mail")
    return app


def _token(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


def test_email_gets_a_link_that_opts_out(signed: Chimeway, email: RecordingChannel) -> None:
    fire(signed, Comment, {"post": "p", "text": "t"})
    [sent] = email.sent
    url = sent.fields["unsubscribe_url"]
    assert url.startswith("https://example.com/unsubscribe?src=mail&token=")
    request = signed.unsubscribe(_token(url))
    assert (request.recipient, request.scope, request.scope_key, request.channel) == (
        "user:1", "notifier", Comment.key, "email")
    assert signed.preferences("user:1").effective(Comment)["email"] == (
        False, f"opted out of notifier {Comment.key} × email (via unsubscribe)")
    result = fire(signed, Comment, {"post": "p", "text": "t"})
    row = delivery(signed, result, "email")
    assert row.reason == "opted_out"
    assert summaries(signed, row.id)[0][2].endswith("(via unsubscribe)")
    assert delivery(signed, result, "in_app").status == "succeeded"


def test_in_app_and_critical_messages_get_no_link(signed: Chimeway, email: RecordingChannel) -> None:
    result = fire(signed, Comment, {"post": "p", "text": "t"})
    assert "unsubscribe_url" not in delivery(signed, result, "in_app").message
    fire(signed, PasswordReset, {"code": "1"})
    assert "unsubscribe_url" not in email.sent[-1].fields


def test_category_link_for_a_tenant(signed: Chimeway, email: RecordingChannel) -> None:
    url = signed.unsubscribe_url("user:1", "acme", category="social", channel="email")
    signed.unsubscribe(_token(url))
    fire(signed, Comment, {"post": "p", "text": "t"}, tenant="acme")
    fire(signed, Comment, {"post": "p", "text": "t"}, tenant="other")
    assert [m.tenant for m in email.sent] == ["other"]


def test_tampered_token_is_refused_and_writes_nothing(signed: Chimeway) -> None:
    token = _token(signed.unsubscribe_url("user:1", channel="email"))
    body, mac = token.split(".")
    forged_body = signed.unsubscribe_url("user:2", channel="email")  # a valid body for someone else
    before = row_counts(signed.engine)
    for bad in (
        _token(forged_body).split(".")[0] + "." + mac,  # someone else's payload, this signature
        body + "." + mac[:-2] + ("AA" if not mac.endswith("AA") else "BB"),
        body,
        "not a token",
        body + "." + "!!!",
    ):
        with pytest.raises(SignatureError):
            signed.unsubscribe(bad)
    assert row_counts(signed.engine) == before


def test_token_from_another_secret_is_refused(signed: Chimeway) -> None:
    token = _token(signed.unsubscribe_url("user:1", channel="email"))
    signed.configure_policy(secret="a-different-secret-entirely")
    with pytest.raises(SignatureError, match="signature"):
        signed.unsubscribe(token)


def test_expired_token_is_refused(signed: Chimeway, clock: FakeClock) -> None:
    signed.configure_policy(token_ttl=timedelta(days=7))
    token = _token(signed.unsubscribe_url("user:1", channel="email"))
    clock.advance(days=6, hours=23)
    signed.unsubscribe(token)
    clock.advance(hours=1)
    with pytest.raises(SignatureError, match="expired"):
        signed.unsubscribe(token)


def test_configuration_is_checked(app: Chimeway) -> None:
    with pytest.raises(ConfigurationError):
        app.unsubscribe_url("user:1", channel="email", base_url="https://example.com/u")  # no secret
    with pytest.raises(ConfigurationError):
        app.configure_policy(secret="short")
    with pytest.raises(ConfigurationError):
        app.configure_policy(unsubscribe_base_url="ftp://example.com")
