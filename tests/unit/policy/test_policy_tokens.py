"""Unsubscribe tokens: HMAC-SHA256 signature and expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chimeway.errors import ConfigurationError, SignatureError
from chimeway.unsubscribe import build_url, sign_token, verify_token

SECRET = "0123456789abcdef-secret"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def token(**overrides: object) -> str:
    args: dict[str, object] = dict(recipient="user:1", tenant="acme", notifier="digest_weekly", category=None,
                                   channel="email", now=NOW, ttl=timedelta(days=30))
    args.update(overrides)
    return sign_token(SECRET, **args)  # type: ignore[arg-type]


def test_round_trip() -> None:
    request = verify_token(SECRET, token(), now=NOW + timedelta(days=29))
    assert (request.recipient, request.tenant, request.scope, request.scope_key, request.channel) == (
        "user:1", "acme", "notifier", "digest_weekly", "email")
    assert request.expires_at == NOW + timedelta(days=30)
    everything = verify_token(SECRET, token(notifier=None, channel=None, tenant=None), now=NOW)
    assert (everything.scope, everything.channel, everything.tenant) == ("all", "*", None)


def test_every_changed_character_is_caught() -> None:
    good = token()
    for index in range(len(good)):
        if good[index] == ".":
            continue
        replacement = "A" if good[index] != "A" else "B"
        bad = good[:index] + replacement + good[index + 1:]
        with pytest.raises(SignatureError):
            verify_token(SECRET, bad, now=NOW)


def test_only_the_canonical_spelling_is_accepted() -> None:
    body, mac = token().split(".")
    # 32 MAC bytes take 43 characters; the last one carries two unused bits.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(mac[-1])
    twin = mac[:-1] + alphabet[last ^ 1]
    with pytest.raises(SignatureError, match="malformed"):
        verify_token(SECRET, f"{body}.{twin}", now=NOW)


def test_expiry_and_secret() -> None:
    with pytest.raises(SignatureError, match="expired"):
        verify_token(SECRET, token(), now=NOW + timedelta(days=30))
    with pytest.raises(SignatureError, match="signature"):
        verify_token("another-secret-of-16+", token(), now=NOW)
    with pytest.raises(ConfigurationError):
        verify_token(None, token(), now=NOW)


def test_urls() -> None:
    assert build_url("https://e.com/u", "t.k") == "https://e.com/u?token=t.k"
    assert build_url("https://e.com/u?a=1", "t.k") == "https://e.com/u?a=1&token=t.k"
    with pytest.raises(ConfigurationError):
        build_url("javascript:alert(1)", "t")
