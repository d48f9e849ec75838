"""Identifiers: time-ordered UUIDv7, generated client-side."""

from __future__ import annotations

import uuid

import uuid6

from chimeway.errors import InvalidInputError

__all__ = ["as_uuid", "new_id"]


def new_id() -> uuid.UUID:
    """A new UUIDv7: sorts by creation time, needs no database round trip."""
    return uuid.UUID(int=uuid6.uuid7().int)


def as_uuid(value: uuid.UUID | str, *, name: str = "id") -> uuid.UUID:
    """Accept a UUID or its string form; anything else is an input error."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidInputError(f"{name} {value!r} is not a valid id") from None
