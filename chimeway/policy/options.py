"""The policy options a notifier declares: ``caps`` and ``dedupe_key``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from chimeway.errors import ConfigurationError, InvalidNotifierError
from chimeway.notifier import Notifier

__all__ = ["Cap", "Dedupe", "caps_of", "dedupe_of", "human"]


@dataclass(frozen=True, kw_only=True)
class Cap:
    """At most ``limit`` deliveries per recipient × channel within ``window``.

    Args:
        limit: how many.
        window: the sliding window.
        channel: the channel it applies to; ``None`` applies it to each
            channel separately.
    """

    limit: int
    window: timedelta
    channel: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.limit, int) or self.limit < 0:
            raise ConfigurationError(f"Cap limit must be an int >= 0, got {self.limit!r}")
        if not isinstance(self.window, timedelta) or self.window <= timedelta(0):
            raise ConfigurationError(f"Cap window must be a positive timedelta, got {self.window!r}")

    def applies_to(self, channel: str) -> bool:
        """Whether this cap counts deliveries on ``channel``.

        Args:
            channel: the channel name.
        """
        return self.channel is None or self.channel == channel


@dataclass(frozen=True, kw_only=True)
class Dedupe:
    """Drop a notifier's repeats for one recipient within a window.

    Args:
        key: ``params -> str | None``; ``None`` disables dedupe for that event.
        window: how long the first event's key blocks repeats.
    """

    key: Callable[[Mapping[str, Any]], Any]
    window: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        if not callable(self.key):
            raise InvalidNotifierError("Dedupe key must be a function of params")
        if not isinstance(self.window, timedelta) or self.window <= timedelta(0):
            raise InvalidNotifierError(f"Dedupe window must be a positive timedelta, got {self.window!r}")


def dedupe_of(notifier: type[Notifier]) -> Dedupe | None:
    """The notifier's ``dedupe_key`` as a :class:`Dedupe` (a bare function gets 24 h).

    Args:
        notifier: the notifier class.
    """
    value = notifier.dedupe_key
    if value is None or isinstance(value, Dedupe):
        return value
    if callable(value):
        return Dedupe(key=value)
    raise InvalidNotifierError(f"notifier {notifier.key!r}: `dedupe_key` must be a Dedupe or a function")


def caps_of(notifier: type[Notifier]) -> list[Cap]:
    """The notifier's own ``caps``, checked.

    Args:
        notifier: the notifier class.
    """
    caps = list(notifier.caps or ())
    for cap in caps:
        if not isinstance(cap, Cap):
            raise InvalidNotifierError(f"notifier {notifier.key!r}: `caps` must be a list of chimeway.policy.Cap")
    return caps


def human(delta: timedelta) -> str:
    """A window as people write it: ``30min``, ``1h``, ``2d``."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
