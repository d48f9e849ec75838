"""Secrets in params are redacted before they are stored; ordinary words are not."""

from __future__ import annotations

import pytest

from chimeway.jsonvalues import REDACTED, is_secret_key, redact


@pytest.mark.parametrize("key", [
    "password", "user_password", "newPassword", "passwd", "secret", "client_secret", "token",
    "reset_token", "accessToken", "api_key", "apiKey", "API_KEY", "authorization", "auth",
    "auth_token", "private_key", "credentials", "otp", "session_cookie", "signature",
])
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", [
    "author", "author_name", "authored_at", "tokenizer", "keyboard", "secretary_name",
    "passage", "order_id", "url", "user_id", "otpauth_enabled",
])
def test_ordinary_keys(key: str) -> None:
    assert not is_secret_key(key)


def test_redact_walks_nested_values() -> None:
    params = {"author": "ada", "reset_token": "abc", "user": {"password": "x", "name": "n"},
              "items": [{"api_key": "k", "sku": 1}]}
    assert redact(params) == {"author": "ada", "reset_token": REDACTED,
                              "user": {"password": REDACTED, "name": "n"},
                              "items": [{"api_key": REDACTED, "sku": 1}]}
