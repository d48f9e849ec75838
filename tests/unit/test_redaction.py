"""Secrets in params are redacted before they are stored; ordinary words are not."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from chimeway import Chimeway, Notifier, Recipient
from chimeway.errors import InvalidNotifierError
from chimeway.jsonvalues import REDACTED, is_secret_key, redact
from chimeway.models import events_table
from chimeway.testing import RecordingChannel

# Names as applications spell them: any case, any separator, digits appended.
SECRET_KEYS = [
    "password", "user_password", "newPassword", "password1", "Password2", "PASSWORD",
    "pass_word", "passwd", "pwd", "passcode", "secret", "client_secret", "token",
    "reset_token", "accessToken", "refresh-token", "api_key", "apiKey", "apiKey2", "API_KEY",
    "api-key", "X-Api-Key", "APIKey", "api_keys", "authorization", "Authorization", "auth",
    "auth_token", "bearer", "Bearer-Token", "private_key", "credentials", "otp", "totp",
    "hotp_seed", "mfa_code", "verification_code", "jwt", "id_jwt", "pin", "PIN", "pin_code",
    "card_pin2", "session_cookie", "cookies", "signature", "session_id", "csrf", "cvv",
    "card_number",
]
ORDINARY_KEYS = [
    "author", "author_name", "authored_at", "Author", "tokenizer", "keyboard", "secretary_name",
    "passage", "passenger", "compass", "order_id", "url", "user_id", "otpauth_enabled",
    "pinned", "pinned_at", "spinner", "opinion", "pinyin", "bearing", "zip_code", "postal_code",
    "country_code", "promo_code", "error_code", "key", "sort_key", "idempotency_key",
    "signed_up", "cardinal", "session_length", "name2",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ORDINARY_KEYS)
def test_ordinary_keys(key: str) -> None:
    assert not is_secret_key(key)


def test_redact_walks_nested_values() -> None:
    params = {"author": "ada", "reset_token": "abc", "user": {"password1": "x", "name": "n"},
              "items": [{"X-Api-Key": "k", "sku": 1}]}
    assert redact(params) == {"author": "ada", "reset_token": REDACTED,
                              "user": {"password1": REDACTED, "name": "n"},
                              "items": [{"X-Api-Key": REDACTED, "sku": 1}]}


def test_extra_sensitive_names_match_without_case_or_separators() -> None:
    params = {"ssn": "123", "dateOfBirth": "1990-01-01", "address": {"Date-Of-Birth": "x"},
              "date": "2026-01-01", "birthplace": "Oslo"}
    assert redact(params, {"SSN", "date_of_birth"}) == {
        "ssn": REDACTED, "dateOfBirth": REDACTED, "address": {"Date-Of-Birth": REDACTED},
        "date": "2026-01-01", "birthplace": "Oslo",
    }


class _Patient(Notifier):
    key = "test_redaction_patient"
    channels = ["rec"]
    templates = {"rec": {"body": "Hi {{ name }}, code {{ pin }}"}}
    sensitive = {"ssn", "diagnosis"}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id="user:1")]


def test_stored_params_leave_out_secrets_and_the_notifiers_sensitive_names(tmp_path: Path) -> None:
    rec = RecordingChannel()
    app = Chimeway(database_url=f"sqlite:///{tmp_path / 'r.db'}", channels={"rec": rec})
    app.migrate()
    params = {"name": "Ada", "pin": "4821", "ssn": "078-05-1120", "Diagnosis": "flu",
              "author": "clinic"}
    with Session(app.engine) as session, session.begin():
        app.trigger(session, _Patient, params, idempotency_key="p1")
    with app.engine.connect() as conn:
        stored = conn.execute(sa.select(events_table.c.params)).scalar_one()
    assert stored == {"name": "Ada", "pin": REDACTED, "ssn": REDACTED, "Diagnosis": REDACTED,
                      "author": "clinic"}
    # The message itself was rendered from the params as given.
    assert rec.sent[0].fields["body"] == "Hi Ada, code 4821"
    app.close()


@pytest.mark.parametrize("value", ["ssn", {"ssn": True}, [1], {""}, 42])
def test_sensitive_must_be_a_set_of_names(value: Any) -> None:
    with pytest.raises(InvalidNotifierError, match="sensitive"):
        type("BadSensitive", (Notifier,), {"key": "test_redaction_bad", "sensitive": value,
                                           "__module__": __name__})
