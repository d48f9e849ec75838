"""The Fernet codec behind encryption at rest."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from chimeway.encryption import Encryption, is_sealed
from chimeway.errors import ConfigurationError


def test_values_round_trip_and_stay_unreadable() -> None:
    key = Fernet.generate_key()
    codec = Encryption([key])
    value = {"title": "Réinitialiser 🔑", "code": "Q7X9", "n": [1, None, True]}
    token = codec.seal(value)
    assert is_sealed(token) and "Q7X9" not in token and "Réinitialiser" not in token
    assert codec.open(token) == value
    assert codec.seal(value) != token  # a fresh IV every time
    assert key.decode() not in repr(codec)


def test_the_first_key_encrypts_and_every_key_decrypts() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    by_old = Encryption([old]).seal({"a": 1})
    both = Encryption([new, old])
    assert both.open(by_old) == {"a": 1}
    assert Encryption([new]).open(both.seal({"a": 2})) == {"a": 2}
    with pytest.raises(ConfigurationError, match="not in encryption_keys"):
        Encryption([new]).open(by_old)


def test_a_tampered_token_is_refused() -> None:
    codec = Encryption([Fernet.generate_key()])
    token = codec.seal({"a": 1})
    with pytest.raises(ConfigurationError):
        codec.open(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))
    assert not is_sealed({"a": 1}) and not is_sealed("plain")
