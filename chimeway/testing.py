"""Public helpers for testing code that uses Chimeway.

- :class:`FakeClock`: pass ``clock=FakeClock()`` to ``Chimeway`` and move time
  with ``advance()`` instead of sleeping.
- :class:`RecordingChannel`: a channel that keeps every message it was given
  (``.sent``) and can be told to fail.
- :func:`channel_contract`: checks a custom channel honours the ``Channel``
  contract (results, error classification, no secrets in details).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from chimeway.channels.base import Channel
from chimeway.clock import utc
from chimeway.testing_contract import ContractReport, ContractViolation, channel_contract
from chimeway.values import DeliveryResult, Message, Recipient

__all__ = [
    "ContractReport",
    "ContractViolation",
    "FakeClock",
    "RecordingChannel",
    "channel_contract",
]


class FakeClock:
    """A clock that only moves when told to.

    Args:
        start: the initial time (default: 2026-01-01 09:00 UTC).
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = utc(start) if start is not None else datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move time forward by ``delta`` (or ``timedelta(**kwargs)``); returns the new time."""
        step = delta if delta is not None else timedelta(**kwargs)
        if step < timedelta(0):
            raise ValueError("a FakeClock only moves forward")
        with self._lock:
            self._now += step
            return self._now

    def set(self, when: datetime) -> None:
        """Jump to ``when`` (forward only)."""
        when = utc(when)
        with self._lock:
            if when < self._now:
                raise ValueError("a FakeClock only moves forward")
            self._now = when


class RecordingChannel(Channel):
    """Keeps every message it is given; succeeds unless told otherwise.

    Args:
        respond: optional function deciding each result (e.g. fail the first
            two attempts); default: always succeed.
        required_fields: fields that ``validate()`` insists on.

    Attributes:
        sent: messages that were delivered successfully, in order.
        calls: every message ``send`` was called with, including failures.
    """

    def __init__(
        self,
        respond: Callable[[Message], DeliveryResult] | None = None,
        *,
        required_fields: tuple[str, ...] = (),
    ) -> None:
        self._respond = respond
        self.sent: list[Message] = []
        self.calls: list[Message] = []
        self._lock = threading.Lock()
        self._required = required_fields

    def validate(self, fields: Mapping[str, Any], recipient: Recipient) -> str | None:
        missing = [name for name in self._required if not fields.get(name)]
        return f"missing required field(s): {', '.join(missing)}" if missing else None

    def send(self, message: Message) -> DeliveryResult:
        result = self._respond(message) if self._respond is not None else DeliveryResult.ok(
            provider_message_id=f"rec-{message.delivery_id}"
        )
        with self._lock:
            self.calls.append(message)
            if result.outcome == "succeeded":
                self.sent.append(message)
        return result

    def clear(self) -> None:
        """Forget everything recorded so far."""
        with self._lock:
            self.sent.clear()
            self.calls.clear()
