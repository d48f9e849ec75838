"""Checking text before it reaches the database: one place, one kind of error.

PostgreSQL refuses a NUL character anywhere in text or JSON, and a lone
UTF-16 surrogate cannot be encoded at all; a value longer than its column is
refused too. Refused inside the caller's transaction, any of these aborts
it — the caller's own rows with it. So every entry point checks its ids,
keys, names and params here first and raises a :class:`InvalidInputError`
that names the field, before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chimeway.errors import InvalidInputError

__all__ = ["LIMITS", "check_chars", "check_text"]

# Column lengths (chimeway/models.py), by the name callers use for the value.
LIMITS: Mapping[str, int] = {
    "tenant": 200,
    "idempotency_key": 500,
    "actor": 200,
    "correlation_id": 200,
    "cancellation_key": 500,
    "recipient": 200,
    "recipient id": 200,
    "notifier key": 200,
    "signal name": 200,
    "channel": 100,
}


def check_text(value: Any, *, field: str, limit: int | None = None, optional: bool = False) -> None:
    """Raise :class:`InvalidInputError` naming ``field`` unless ``value`` can be stored as text.

    Args:
        value: the value.
        field: how the caller calls it (``tenant``, ``idempotency_key``).
        limit: the column's length (default: :data:`LIMITS` for ``field``).
        optional: ``None`` is allowed.
    """
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise InvalidInputError(f"{field} must be a string, got {type(value).__name__}")
    check_chars(value, field)
    most = limit if limit is not None else LIMITS.get(field)
    if most is not None and len(value) > most:
        raise InvalidInputError(f"{field} is {len(value)} characters; at most {most} fit (got {value[:40]!r}...)")


def check_chars(text: str, field: str) -> None:
    """Raise :class:`InvalidInputError` naming ``field`` if ``text`` holds a NUL or a lone surrogate.

    Args:
        text: the text.
        field: how the caller calls it.
    """
    if "\x00" in text:
        raise InvalidInputError(f"{field} contains a NUL character (\\x00), which the database cannot store")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{field} contains a lone surrogate ({text[exc.start:exc.end]!r} at {exc.start}), which is not "
            "valid Unicode text"
        ) from None
