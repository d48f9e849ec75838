"""Cron expressions: parsing, bad input, time zones and daylight-saving transitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from chimeway.cron import CATCH_UP_LIMIT, CronExpression
from chimeway.errors import InvalidInputError, InvalidScheduleError

BERLIN = ZoneInfo("Europe/Berlin")


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(ticks: list[datetime]) -> list[str]:
    return [t.astimezone(BERLIN).strftime("%m-%d %H:%M%z") for t in ticks]


@pytest.mark.parametrize(
    ("expression", "after", "first"),
    [
        ("*/5 * * * *", at(2026, 1, 1, 9, 1), at(2026, 1, 1, 9, 5)),
        ("0 8 * * mon-fri", at(2026, 1, 2, 9, 0), at(2026, 1, 5, 8, 0)),  # Friday → Monday
        ("* * * * * 30", at(2026, 1, 1, 9, 0), at(2026, 1, 1, 9, 0, 30)),  # seconds last
        ("@hourly", at(2026, 1, 1, 9, 1), at(2026, 1, 1, 10, 0)),
        ("@daily", at(2026, 1, 1, 9, 0), at(2026, 1, 2, 0, 0)),
        ("@midnight", at(2026, 1, 1, 9, 0), at(2026, 1, 2, 0, 0)),
        ("@weekly", at(2026, 1, 1, 9, 0), at(2026, 1, 4, 0, 0)),
        ("@monthly", at(2026, 1, 1, 9, 0), at(2026, 2, 1, 0, 0)),
        ("@yearly", at(2026, 1, 1, 9, 0), at(2027, 1, 1, 0, 0)),
    ],
)
def test_forms_of_expression(expression: str, after: datetime, first: datetime) -> None:
    assert CronExpression(expression).next_after(after) == first


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("61 * * * *", "is not valid"),
        ("* * *", "has 3 fields"),
        ("* * * * * * *", "has 7 fields"),
        ("bogus", "has 1 fields"),
        ("", "non-empty"),
        ("@reboot", "unknown alias"),
        ("0 8 * * 8", "is not valid"),
        ("0 0 31 2 *", "never matches"),
    ],
)
def test_bad_expressions_name_the_expression(expression: str, words: str) -> None:
    with pytest.raises(InvalidScheduleError, match=words) as info:
        CronExpression(expression)
    assert isinstance(info.value, InvalidInputError)


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../etc/passwd", "Europe/"])
def test_unknown_time_zone(zone: str) -> None:
    with pytest.raises(InvalidScheduleError, match="timezone"):
        CronExpression("* * * * *", zone)


def test_fields_are_wall_clock_in_the_zone() -> None:
    cron = CronExpression("0 8 * * *", "Europe/Berlin")
    # 08:00 in Berlin is 07:00 UTC in winter and 06:00 UTC in summer.
    assert cron.next_after(at(2026, 1, 10, 0, 0)) == at(2026, 1, 10, 7, 0)
    assert cron.next_after(at(2026, 7, 10, 0, 0)) == at(2026, 7, 10, 6, 0)


def test_spring_forward_skips_the_missing_hour() -> None:
    # 2026-03-29 02:00 CET jumps to 03:00 CEST: 02:30 does not exist that day.
    daily = CronExpression("30 2 * * *", "Europe/Berlin")
    ticks = list(daily.ticks_between(at(2026, 3, 27, 12), at(2026, 3, 30, 12)))
    assert local(ticks) == ["03-28 02:30+0100", "03-30 02:30+0200"]
    half_hourly = CronExpression("*/30 * * * *", "Europe/Berlin")
    ticks = list(half_hourly.ticks_between(at(2026, 3, 29, 0, 0), at(2026, 3, 29, 1, 30)))
    assert local(ticks) == ["03-29 01:30+0100", "03-29 03:00+0200", "03-29 03:30+0200"]
    assert ticks[1] - ticks[0] == timedelta(minutes=30)


def test_fall_back_repeated_hour_fires_once() -> None:
    # 2026-10-25 03:00 CEST goes back to 02:00 CET: 02:00-02:59 happens twice.
    daily = CronExpression("30 2 * * *", "Europe/Berlin")
    ticks = list(daily.ticks_between(at(2026, 10, 24, 12), at(2026, 10, 26, 12)))
    assert local(ticks) == ["10-25 02:30+0200", "10-26 02:30+0100"]
    half_hourly = CronExpression("*/30 * * * *", "Europe/Berlin")
    ticks = list(half_hourly.ticks_between(at(2026, 10, 24, 23, 0), at(2026, 10, 25, 2, 30)))
    assert local(ticks) == [
        "10-25 01:30+0200", "10-25 02:00+0200", "10-25 02:30+0200",
        "10-25 03:00+0100", "10-25 03:30+0100",
    ]


def test_latest_during_the_repeated_hour_is_the_first_pass() -> None:
    cron = CronExpression("*/30 * * * *", "Europe/Berlin")
    second_pass = at(2026, 10, 25, 1, 20)  # 02:20 CET, the second time round
    assert local([cron.latest(second_pass)]) == ["10-25 02:30+0200"]
    assert local([cron.next_after(second_pass)]) == ["10-25 03:00+0100"]


def test_latest_includes_a_tick_exactly_at_now() -> None:
    assert CronExpression("*/5 * * * *").latest(at(2026, 1, 1, 9, 5)) == at(2026, 1, 1, 9, 5)
    assert CronExpression("* * * * * *").latest(at(2026, 1, 1, 9, 0, 7)) == at(2026, 1, 1, 9, 0, 7)


def test_due_when_never_ticked_fires_only_a_fresh_tick() -> None:
    cron = CronExpression("0 8 * * *")
    assert cron.due(at(2026, 1, 1, 8, 0, 30), None, None) == [at(2026, 1, 1, 8, 0)]
    assert cron.due(at(2026, 1, 1, 9, 30), None, None) == []
    assert cron.due(at(2026, 1, 1, 9, 30), None, timedelta(days=3)) == []


def test_due_catches_up_only_the_latest_missed_tick_by_default() -> None:
    cron = CronExpression("*/5 * * * *")
    since = at(2026, 1, 1, 9, 0)
    assert cron.due(at(2026, 1, 1, 9, 3), since, None) == []
    assert cron.due(at(2026, 1, 1, 11, 2), since, None) == [at(2026, 1, 1, 11, 0)]


def test_due_catches_up_within_a_window() -> None:
    cron = CronExpression("*/5 * * * *")
    since = at(2026, 1, 1, 9, 0)
    due = cron.due(at(2026, 1, 1, 11, 2), since, timedelta(minutes=20))
    assert due == [at(2026, 1, 1, 10, 45), at(2026, 1, 1, 10, 50), at(2026, 1, 1, 10, 55), at(2026, 1, 1, 11, 0)]
    assert cron.due(at(2026, 1, 1, 9, 12), since, timedelta(hours=1)) == [at(2026, 1, 1, 9, 5), at(2026, 1, 1, 9, 10)]


def test_catch_up_never_floods() -> None:
    cron = CronExpression("* * * * *")
    due = cron.due(at(2026, 1, 10), at(2026, 1, 1), timedelta(days=30))
    assert len(due) == CATCH_UP_LIMIT
    assert due[-1] == at(2026, 1, 10)
