"""Checking that values can be stored as JSON, and redacting secrets."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from itertools import pairwise
from typing import Any

from chimeway.errors import ParamsNotJSONError

__all__ = ["REDACTED", "check_json", "is_secret_key", "redact"]

REDACTED = "[redacted]"

# A key is secret when one of its words (split on non-letters and camelCase)
# is a secret word, or two adjacent words form one ("api_key", "accessToken").
# Whole words only: "author" or "tokenizer_name" are not secrets.
_SECRET_WORDS = frozenset({
    "password", "passwd", "pwd", "passphrase", "secret", "token", "authorization", "auth",
    "credential", "credentials", "otp", "apikey", "privatekey", "cookie", "signature",
})
_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def is_secret_key(key: str) -> bool:
    """Whether a params key names a secret (its value is redacted before storing)."""
    words = [w.lower() for w in _WORDS.findall(key)]
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(a + b in _SECRET_WORDS for a, b in pairwise(words))


def check_json(value: Any, *, name: str = "params") -> None:
    """Raise :class:`ParamsNotJSONError` naming the first value that is not JSON.

    Args:
        value: the value to check (a dict of params or job args).
        name: how the value is called in error messages.
    """
    _walk(value, name)


def _walk(value: Any, path: str) -> None:
    if value is None or isinstance(value, (str, bool, int)):
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


def redact(value: Any) -> Any:
    """Return a copy of ``value`` with secret-looking keys replaced by ``[redacted]``."""
    if isinstance(value, Mapping):
        return {
            key: (REDACTED if isinstance(key, str) and is_secret_key(key) else redact(item))
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    return value
