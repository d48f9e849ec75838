"""Identifiers: time-ordered UUIDv7, generated client-side."""

from __future__ import annotations

import uuid

from uuid_utils import compat

from chimeway.errors import InvalidInputError

__all__ = ["as_uuid", "new_id"]


def new_id() -> uuid.UUID:
    """A new UUIDv7: sorts by creation time, needs no database round trip.

    Ids made one after another in a process sort in that order, and their
    time is the clock's however many are made: a burst never dates them in
    the future, so an id made later by another process still sorts after
    them (a signal after a run's start, say).
    """
    return compat.uuid7()


def as_uuid(value: uuid.UUID | str, *, name: str = "id") -> uuid.UUID:
    """Accept a UUID or its string form; anything else is an input error."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidInputError(f"{name} {value!r} is not a valid id") from None
