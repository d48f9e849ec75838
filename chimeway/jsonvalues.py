"""Checking that values can be stored as JSON, and redacting secrets."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Collection, Mapping
from itertools import pairwise
from typing import Any

from chimeway.errors import ParamsNotJSONError
from chimeway.validation import check_chars

__all__ = [
    "REDACTED", "check_json", "is_secret_key", "key_hash", "normalized_name", "redact", "shown_key",
]

REDACTED = "[redacted]"

# A key is secret when one of its words is a secret word, or two adjacent
# words form one ("api_key", "accessToken", "X-Api-Key"). Words are split on
# anything that is not a letter (separators and digits: "password1",
# "apiKey2") and at camelCase humps, and compared in lowercase, singular.
# Whole words only: "author", "tokenizer_name", "pinned" and "zip_code" are
# not secrets.
_SECRET_WORDS = frozenset({
    "password", "passwd", "pwd", "passphrase", "passcode", "pin", "secret", "token",
    "authorization", "auth", "bearer", "credential", "otp", "totp", "hotp", "jwt", "csrf",
    "xsrf", "apikey", "privatekey", "signingkey", "encryptionkey", "cookie", "signature",
    "cvv", "cvc", "cardnumber", "sessionid", "verificationcode", "securitycode", "resetcode",
    "logincode", "mfacode",
})
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
_NOT_ALNUM = re.compile(r"[^0-9a-z]+")


def _secret_word(word: str) -> bool:
    return word in _SECRET_WORDS or (word.endswith("s") and word[:-1] in _SECRET_WORDS)


def is_secret_key(key: str) -> bool:
    """Whether a params key names a secret (its value is redacted before storing)."""
    words = [w.lower() for w in _WORDS.findall(key)]
    if any(_secret_word(w) for w in words):
        return True
    return any(_secret_word(a + b) for a, b in pairwise(words))


def normalized_name(name: str) -> str:
    """``name`` in lowercase without separators: ``"Account-Number"`` → ``"accountnumber"``."""
    return _NOT_ALNUM.sub("", name.lower())


def key_hash(key: str) -> str:
    """How a key computed from raw params is stored: a SHA-256, never the key itself.

    Dedupe and digest keys may be derived from secrets (an invite token);
    stored as a hash they still match, and reveal nothing.

    Args:
        key: the key as the notifier's function returned it.
    """
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def shown_key(fn: Callable[[Mapping[str, Any]], Any], stored_params: Mapping[str, Any]) -> str | None:
    """A key as ``explain`` may show it: computed again from the stored (redacted) params.

    A key derived from a secret shows as ``[redacted]``; one the function
    cannot compute from redacted params shows as ``None``.

    Args:
        fn: the notifier's key function.
        stored_params: the params as stored (redacted).
    """
    try:
        value = fn(stored_params)
    except Exception:
        return None
    return None if value is None else str(value)[:500]


def check_json(value: Any, *, name: str = "params") -> None:
    """Raise :class:`ParamsNotJSONError` naming the first value that is not JSON.

    Text the database would refuse (a NUL, a lone surrogate) raises
    :class:`InvalidInputError` naming where it is.

    Args:
        value: the value to check (a dict of params or job args).
        name: how the value is called in error messages.
    """
    _walk(value, name)


def _walk(value: Any, path: str) -> None:
    if isinstance(value, str):
        check_chars(value, path)
        return
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ParamsNotJSONError(f"{path} is {value!r}, which JSON cannot represent")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ParamsNotJSONError(
                    f"{path} has a key {key!r} of type {type(key).__name__}; JSON keys must be strings"
                )
            check_chars(key, f"a key of {path}")
            _walk(item, f"{path}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _walk(item, f"{path}[{index}]")
        return
    raise ParamsNotJSONError(
        f"{path} is a {type(value).__name__}, which is not JSON; pass ids and plain values "
        "(str, int, float, bool, None, lists and dicts), e.g. an ISO string for a datetime"
    )


def redact(value: Any, sensitive: Collection[str] = ()) -> Any:
    """Return a copy of ``value`` with secret keys' values replaced by ``[redacted]``.

    Args:
        value: params (or any JSON value) to copy.
        sensitive: more key names to redact, compared by :func:`normalized_name`
            (a notifier's ``sensitive`` set).
    """
    extra = frozenset(normalized_name(name) for name in sensitive)
    return _redact(value, extra)


def _redact(value: Any, extra: frozenset[str]) -> Any:
    if isinstance(value, Mapping):
        return {
            key: (REDACTED if isinstance(key, str) and _is_hidden(key, extra) else _redact(item, extra))
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_redact(item, extra) for item in value]
    return value


def _is_hidden(key: str, extra: frozenset[str]) -> bool:
    return is_secret_key(key) or (bool(extra) and normalized_name(key) in extra)
