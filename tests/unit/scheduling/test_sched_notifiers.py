"""Scheduled notifiers: a Notifier with ``schedule`` triggered once per tick."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sched_support import DailyReport, Reminder

from chimeway import Chimeway, Notifier, Recipient
from chimeway.errors import InvalidInputError, InvalidScheduleError
from chimeway.models import Event, Job
from chimeway.testing import FakeClock, RecordingChannel


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def events(app: Chimeway) -> list[Any]:
    with app.engine.connect() as conn:
        return list(conn.execute(sa.select(Event.idempotency_key, Event.tenant, Event.params)
                                 .order_by(Event.created_at)).all())


def test_triggered_every_morning_in_the_zone(app: Chimeway, clock: FakeClock, rec: RecordingChannel) -> None:
    app.schedule(DailyReport, timezone="Europe/Berlin")
    clock.set(at(2026, 1, 6, 6, 0))
    for _ in range(3 * 24 * 6):  # three days in 10-minute steps
        app.run_scheduler()
        app.work()
        clock.advance(minutes=10)
    # 08:00 in Berlin is 07:00 UTC in January.
    assert [m.fields["body"] for m in rec.sent] == [
        "Report for 2026-01-06", "Report for 2026-01-07", "Report for 2026-01-08",
    ]
    assert [e.idempotency_key for e in events(app)] == [
        f"schedule:notifier:sched_test_daily_report:{day}" for day in (
            "2026-01-06T07:00:00+00:00", "2026-01-07T07:00:00+00:00", "2026-01-08T07:00:00+00:00")
    ]


def test_a_rerun_of_the_tick_job_does_not_notify_twice(app: Chimeway, clock: FakeClock, rec: RecordingChannel) -> None:
    app.schedule(DailyReport, tenant="acme")
    clock.set(at(2026, 1, 6, 8, 0))
    [tick] = app.run_scheduler()
    app.work()
    assert tick.job_id is not None
    app.queue.retry(tick.job_id)
    app.work()
    assert len(rec.sent) == 1
    assert [(e.tenant, e.params) for e in events(app)] == [("acme", {"day": "2026-01-06"})]


def test_cron_with_a_notifier_overrides_its_schedule(app: Chimeway, clock: FakeClock, rec: RecordingChannel) -> None:
    app.cron("0 9 * * *", DailyReport, name="report-at-nine")
    assert app.run_scheduler() != []
    app.work()
    assert [e.idempotency_key for e in events(app)] == ["schedule:report-at-nine:2026-01-05T09:00:00+00:00"]


def test_failing_params_are_retried_by_the_job(app: Chimeway, clock: FakeClock, rec: RecordingChannel) -> None:
    failures = [RuntimeError("report source down")]

    class Flaky(Notifier):
        key = "sched_test_flaky_report"
        channels = ["rec"]
        templates = {"rec": {"body": "ok"}}
        schedule = "0 9 * * *"

        def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
            return [Recipient(id="user:ops")]

        def params_for_schedule(self, tick: datetime) -> Mapping[str, Any]:
            if failures:
                raise failures.pop()
            return {}

    app.schedule(Flaky)
    app.run_scheduler()
    app.work()
    assert rec.sent == []
    with app.engine.connect() as conn:
        state = conn.execute(sa.select(Job.state).where(Job.worker == "chimeway.scheduled_notifier")).scalar_one()
    assert state == "retryable"
    clock.advance(timedelta(minutes=5))
    app.work()
    assert len(rec.sent) == 1


def test_bad_input(app: Chimeway) -> None:
    with pytest.raises(InvalidScheduleError, match="has no `schedule`"):
        app.schedule(Reminder)
    with pytest.raises(InvalidInputError, match="Notifier subclass"):
        app.schedule(dict)  # type: ignore[arg-type]
    with pytest.raises(InvalidScheduleError, match="timezone 'Nowhere/Land'"):
        app.schedule(DailyReport, timezone="Nowhere/Land")
    with pytest.raises(InvalidInputError, match="tenant"):
        app.schedule(DailyReport, tenant=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="params_for_schedule"):
        app.cron("* * * * *", DailyReport, args={"day": "x"})
    assert app.cron_schedules() == []
