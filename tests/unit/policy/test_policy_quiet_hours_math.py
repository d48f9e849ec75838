"""Quiet-hours arithmetic on local wall-clock time, including DST gaps and folds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chimeway.errors import InvalidScheduleError
from chimeway.quiet_hours import QuietHours, local_to_utc, quiet_until, zone

PARIS = zone("Europe/Paris")
NEW_YORK = zone("America/New_York")
NIGHT = QuietHours.parse("22:00", "07:00")


@pytest.mark.parametrize(
    ("now", "until"),
    [
        (datetime(2026, 1, 10, 21, 0, tzinfo=UTC), datetime(2026, 1, 11, 6, 0, tzinfo=UTC)),   # 22:00 local: inside
        (datetime(2026, 1, 10, 20, 59, tzinfo=UTC), None),                                      # 21:59 local
        (datetime(2026, 1, 11, 5, 59, tzinfo=UTC), datetime(2026, 1, 11, 6, 0, tzinfo=UTC)),   # 06:59 local
        (datetime(2026, 1, 11, 6, 0, tzinfo=UTC), None),                                        # 07:00 local: over
        (datetime(2026, 3, 29, 0, 30, tzinfo=UTC), datetime(2026, 3, 29, 5, 0, tzinfo=UTC)),   # spring forward night
        (datetime(2026, 3, 29, 1, 30, tzinfo=UTC), datetime(2026, 3, 29, 5, 0, tzinfo=UTC)),   # after the jump
        (datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 25, 6, 0, tzinfo=UTC)),  # 02:30 CEST, first
        (datetime(2026, 10, 25, 1, 30, tzinfo=UTC), datetime(2026, 10, 25, 6, 0, tzinfo=UTC)),  # 02:30 CET, second
    ],
)
def test_overnight_window_in_paris(now: datetime, until: datetime | None) -> None:
    assert quiet_until(now, NIGHT, PARIS) == until


def test_daytime_window() -> None:
    lunch = QuietHours.parse("12:00", "14:00")
    assert quiet_until(datetime(2026, 7, 1, 10, 30, tzinfo=UTC), lunch, PARIS) == datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    assert quiet_until(datetime(2026, 7, 1, 9, 59, tzinfo=UTC), lunch, PARIS) is None


def test_end_inside_a_spring_forward_gap_ends_at_the_jump() -> None:
    # 02:30 does not exist in Paris on 2026-03-29; clocks jump at 01:00 UTC.
    assert local_to_utc(datetime(2026, 3, 29, 2, 30), PARIS) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    window = QuietHours.parse("23:00", "02:30")
    assert quiet_until(datetime(2026, 3, 28, 23, 0, tzinfo=UTC), window, PARIS) == datetime(
        2026, 3, 29, 1, 0, tzinfo=UTC)


def test_end_inside_a_fall_back_fold_ends_at_its_first_occurrence() -> None:
    assert local_to_utc(datetime(2026, 10, 25, 2, 30), PARIS) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert local_to_utc(datetime(2026, 11, 1, 1, 30), NEW_YORK) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)


def test_new_york_spring_forward() -> None:
    # 2026-03-08 02:00 EST → 03:00 EDT; 07:00 EDT is 11:00 UTC.
    assert quiet_until(datetime(2026, 3, 8, 4, 0, tzinfo=UTC), NIGHT, NEW_YORK) == datetime(
        2026, 3, 8, 11, 0, tzinfo=UTC)


@pytest.mark.parametrize(("start", "end"), [("7", "08:00"), ("22:00", "24:00"), ("10:00", "10:00"), (None, "07:00")])
def test_bad_windows_are_refused(start: object, end: object) -> None:
    with pytest.raises(InvalidScheduleError):
        QuietHours.parse(start, end)  # type: ignore[arg-type]


def test_unknown_zone_is_refused() -> None:
    with pytest.raises(InvalidScheduleError, match="Mars/Olympus"):
        zone("Mars/Olympus")
