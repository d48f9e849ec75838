"""Delivery statuses and the transitions allowed between them (see :mod:`chimeway.deliveries`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum

from chimeway.errors import InvalidTransitionError

__all__ = ["CLAIMABLE", "FINAL", "INITIAL", "TRANSITIONS", "Status", "check_transition"]


class Status(StrEnum):
    """A delivery's status, as stored and as ``explain`` shows it."""

    PENDING = "pending"
    DISPATCHED = "dispatched"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPPRESSED = "suppressed"
    DEFERRED = "deferred"


FINAL: frozenset[str] = frozenset({Status.SUCCEEDED, Status.CANCELLED, Status.SUPPRESSED})
"""Statuses a delivery never leaves by itself (a provider bounce may still cancel a success)."""

CLAIMABLE: tuple[str, ...] = (Status.PENDING, Status.FAILED, Status.DEFERRED)
"""Statuses an executor may claim once ``not_before`` has passed."""

_STOPPED = frozenset({Status.DEFERRED, Status.SUPPRESSED, Status.CANCELLED})

TRANSITIONS: Mapping[str, frozenset[str]] = {
    Status.PENDING: frozenset({Status.DISPATCHED}) | _STOPPED,
    Status.FAILED: frozenset({Status.DISPATCHED, Status.PENDING}) | _STOPPED,
    Status.DEFERRED: frozenset({Status.DISPATCHED}) | _STOPPED,
    Status.DISPATCHED: frozenset({Status.PENDING, Status.SUCCEEDED, Status.FAILED}) | _STOPPED,
    Status.SUCCEEDED: frozenset({Status.CANCELLED}),
    Status.CANCELLED: frozenset({Status.PENDING}),
    Status.SUPPRESSED: frozenset(),
}
"""Status → the statuses it may move to."""


def check_transition(from_statuses: Iterable[str], to: str) -> tuple[str, ...]:
    """Refuse a move the state machine does not allow; returns the from-statuses.

    Args:
        from_statuses: the statuses the writer moves from.
        to: the status it moves to.

    Raises:
        InvalidTransitionError: one of the moves is not allowed.
    """
    sources = tuple(from_statuses)
    if to not in TRANSITIONS:
        raise InvalidTransitionError(f"{to!r} is not a delivery status")
    for source in sources:
        if to not in TRANSITIONS.get(source, frozenset()):
            raise InvalidTransitionError(f"a delivery cannot move from {source!r} to {to!r}")
    return sources


INITIAL: frozenset[str] = frozenset({Status.PENDING, Status.DEFERRED, Status.SUPPRESSED, Status.CANCELLED})
"""Statuses a delivery may be planned in."""
