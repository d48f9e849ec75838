"""Quiet hours: a local-time window during which deliveries wait.

All arithmetic is done on local wall-clock dates and converted with
``zoneinfo`` at the end, so a window ending at 07:00 ends at 07:00 local on
the day clocks change. A local end time that does not exist (inside a
spring-forward gap) ends at the moment the clocks jump; one that exists twice
(fall-back) ends at its first occurrence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from chimeway.errors import InvalidScheduleError

__all__ = ["QuietHours", "check_timezone", "local_to_utc", "quiet_until", "zone"]


@dataclass(frozen=True, kw_only=True)
class QuietHours:
    """A daily local window ``[start, end)``; ``start > end`` crosses midnight.

    Args:
        start: local start time.
        end: local end time.
    """

    start: time
    end: time

    @classmethod
    def parse(cls, start: str, end: str) -> QuietHours:
        """Build from ``"HH:MM"`` strings.

        Args:
            start: e.g. ``"22:00"``.
            end: e.g. ``"07:00"``.
        """
        window = cls(start=_parse_time(start, "start"), end=_parse_time(end, "end"))
        if window.start == window.end:
            raise InvalidScheduleError(f"quiet_hours start and end are both {start!r}; the window would be empty")
        return window

    @property
    def start_text(self) -> str:
        """The start as ``HH:MM``."""
        return self.start.strftime("%H:%M")

    @property
    def end_text(self) -> str:
        """The end as ``HH:MM``."""
        return self.end.strftime("%H:%M")

    def __str__(self) -> str:
        return f"{self.start_text}-{self.end_text}"


def _parse_time(value: object, name: str) -> time:
    if not isinstance(value, str):
        raise InvalidScheduleError(f"quiet_hours {name} must be an 'HH:MM' string, got {value!r}")
    try:
        parsed = datetime.strptime(value.strip(), "%H:%M")
    except ValueError:
        raise InvalidScheduleError(f"quiet_hours {name} must be an 'HH:MM' string, got {value!r}") from None
    return parsed.time()


def zone(name: str | None) -> ZoneInfo:
    """The ``ZoneInfo`` for ``name`` (``UTC`` when ``None``).

    Args:
        name: an IANA time zone name.
    """
    if name is None:
        return ZoneInfo("UTC")
    check_timezone(name)
    return ZoneInfo(name)


def check_timezone(name: object) -> None:
    """Raise ``InvalidScheduleError`` unless ``name`` is a known IANA time zone.

    Args:
        name: the value to check.
    """
    if not isinstance(name, str) or not name:
        raise InvalidScheduleError(f"timezone must be an IANA name such as 'Europe/Paris', got {name!r}")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidScheduleError(f"timezone {name!r} is not a known IANA time zone") from None


def local_to_utc(naive: datetime, tz: ZoneInfo) -> datetime:
    """The first UTC instant at which the wall clock in ``tz`` reads ``naive`` or later.

    Args:
        naive: a local wall-clock time without ``tzinfo``.
        tz: the zone.
    """
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == naive:
        return first
    # ``naive`` falls in a gap: the answer is the transition instant, which
    # lies between the two fold interpretations; search it to the second.
    other = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    low, high = int(min(first, other).timestamp()), int(max(first, other).timestamp())
    while high - low > 1:
        mid = (low + high) // 2
        if datetime.fromtimestamp(mid, tz).replace(tzinfo=None) >= naive:
            high = mid
        else:
            low = mid
    return datetime.fromtimestamp(high, UTC)


def quiet_until(now: datetime, window: QuietHours, tz: ZoneInfo) -> datetime | None:
    """When the quiet window containing ``now`` ends (UTC), or ``None`` outside it.

    Args:
        now: an aware instant.
        window: the daily local window.
        tz: the recipient's zone.
    """
    local = now.astimezone(tz)
    wall = local.time().replace(tzinfo=None)
    day = local.date()
    if window.start < window.end:
        inside = window.start <= wall < window.end
        end_day = day
    else:
        inside = wall >= window.start or wall < window.end
        end_day = day if wall < window.end else day + timedelta(days=1)
    if not inside:
        return None
    end = local_to_utc(datetime.combine(end_day, window.end), tz)
    # A gap can put the computed end before ``now`` (the wall clock jumped
    # past the end time); the window is then already over.
    return end if end > now else None
