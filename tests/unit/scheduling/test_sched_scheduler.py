"""The scheduler on SQLite under a FakeClock: ticks, catch-up, names, listing, workers."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from chimeway import Chimeway
from chimeway.errors import (
    ConfigurationError,
    InvalidInputError,
    InvalidScheduleError,
    ParamsNotJSONError,
)
from chimeway.models import CronTick, Job
from chimeway.queue import JobInfo
from chimeway.testing import FakeClock, all_enqueued, assert_enqueued, drain


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ticks(app: Chimeway, name: str) -> list[datetime]:
    with app.engine.connect() as conn:
        rows = conn.execute(sa.select(CronTick.tick_at).where(CronTick.name == name).order_by(CronTick.tick_at))
        return [r.replace(tzinfo=UTC) if r.tzinfo is None else r for r in rows.scalars()]


def jobs_of(app: Chimeway, worker: str) -> list[Job]:
    with app.engine.connect() as conn:
        return list(conn.execute(sa.select(Job).where(Job.worker == worker).order_by(Job.id)).all())


def test_each_tick_fires_once(app: Chimeway, clock: FakeClock) -> None:
    seen: list[tuple[int, datetime]] = []

    @app.job(name="test.ping")
    def ping(n: int, job: JobInfo) -> None:
        seen.append((n, job.scheduled_at))

    app.cron("*/5 * * * *", ping, args={"n": 7})
    for _ in range(12):  # one hour in 5-minute steps, scheduler asked twice each time
        assert len(app.run_scheduler()) == 1
        assert app.run_scheduler() == []
        app.work()
        clock.advance(minutes=5)
    assert len(seen) == 12
    assert [t for _, t in seen] == [at(2026, 1, 5, 9, 0) + timedelta(minutes=5 * i) for i in range(12)]
    assert {n for n, _ in seen} == {7}
    assert len(ticks(app, "test.ping")) == 12


def test_between_ticks_nothing_fires(app: Chimeway, clock: FakeClock) -> None:
    app.cron("0 * * * *", "test.elsewhere")
    assert [t.at for t in app.run_scheduler()] == [at(2026, 1, 5, 9, 0)]
    for _ in range(59):
        clock.advance(minutes=1)
        assert app.run_scheduler() == []
    clock.advance(minutes=1)
    assert [t.at for t in app.run_scheduler()] == [at(2026, 1, 5, 10, 0)]


def test_two_apps_on_one_database_fire_each_tick_once(sqlite_url: str, clock: FakeClock) -> None:
    with Chimeway(sqlite_url, clock=clock) as a, Chimeway(sqlite_url, clock=clock) as b:
        for node in (a, b):
            node.scheduler.remove("chimeway.workflow.sweep")
            node.cron("* * * * *", "test.tick")
        fired = []
        for minute in range(10):
            now = at(2026, 1, 5, 9, minute)
            fired += a.run_scheduler(now) + b.run_scheduler(now)
        assert sorted(t.at for t in fired) == [at(2026, 1, 5, 9, m) for m in range(10)]
        assert len(all_enqueued(a, worker="test.tick")) == 10


def test_missed_ticks_default_to_the_latest_only(app: Chimeway, clock: FakeClock) -> None:
    app.cron("*/5 * * * *", "test.job")
    app.run_scheduler()
    clock.advance(hours=3, minutes=2)  # no worker for three hours
    assert [t.at for t in app.run_scheduler()] == [at(2026, 1, 5, 12, 0)]
    assert app.run_scheduler() == []


def test_missed_ticks_within_the_window_are_caught_up(app: Chimeway, clock: FakeClock) -> None:
    app.cron("*/5 * * * *", "test.job", catch_up=timedelta(minutes=30))
    app.run_scheduler()
    clock.advance(hours=3, minutes=2)
    fired = [t.at for t in app.run_scheduler()]
    assert fired == [at(2026, 1, 5, 11, 35) + timedelta(minutes=5 * i) for i in range(6)]
    assert len(all_enqueued(app, worker="test.job")) == 7


def test_a_new_schedule_does_not_fire_a_stale_tick(app: Chimeway, clock: FakeClock) -> None:
    clock.set(at(2026, 1, 5, 9, 30))
    app.cron("0 8 * * *", "test.daily")
    assert app.run_scheduler() == []
    clock.set(at(2026, 1, 6, 8, 0, 20))
    assert [t.at for t in app.run_scheduler()] == [at(2026, 1, 6, 8, 0)]


def test_daylight_saving_in_a_named_zone(app: Chimeway, clock: FakeClock) -> None:
    app.cron("30 2 * * *", "test.berlin", timezone="Europe/Berlin")
    app.cron("0 * * * *", "test.hourly", timezone="Europe/Berlin")
    clock.set(at(2026, 3, 27, 0, 0))
    fired: list[Any] = []
    while clock.now() < at(2026, 3, 31, 0, 0):  # spring forward on the 29th
        fired += app.run_scheduler()
        clock.advance(minutes=10)
    daily = [t.at.astimezone(app.scheduler.schedules["test.berlin"].cron.zone) for t in fired if t.name == "test.berlin"]
    assert [d.strftime("%d %H:%M") for d in daily] == ["27 02:30", "28 02:30", "30 02:30"]
    hourly_29 = [t.at for t in fired if t.name == "test.hourly" and at(2026, 3, 28, 23) <= t.at < at(2026, 3, 29, 22)]
    assert len(hourly_29) == 23  # the 23-hour day
    clock.set(at(2026, 10, 23, 0, 0))
    fired = []
    while clock.now() < at(2026, 10, 27, 0, 0):  # fall back on the 25th
        fired += app.run_scheduler()
        clock.advance(minutes=10)
    # The first run after the jump catches up the latest missed tick (the 22nd).
    daily = [t.at for t in fired if t.name == "test.berlin"]
    assert daily == [at(2026, 10, 22, 0, 30), at(2026, 10, 23, 0, 30), at(2026, 10, 24, 0, 30), at(2026, 10, 25, 0, 30), at(2026, 10, 26, 1, 30)]
    hourly_25 = [t.at for t in fired if t.name == "test.hourly" and at(2026, 10, 24, 22) <= t.at < at(2026, 10, 25, 23)]
    assert len(hourly_25) == 24  # wall-clock 02:00 fires once on the 25-hour day
    assert len(set(t.at for t in fired)) == len(fired)


def test_plain_function_target(app: Chimeway, clock: FakeClock) -> None:
    calls: list[tuple[int, str]] = []

    def cleanup(days: int, tick: str) -> None:
        calls.append((days, tick))

    schedule = app.cron("@daily", cleanup, args={"days": 30}, name="cleanup")
    assert schedule.worker == f"{cleanup.__module__}.{cleanup.__qualname__}"
    clock.set(at(2026, 1, 6, 0, 0))
    app.run_scheduler()
    assert_enqueued(app, worker=cleanup, args={"days": 30, "tick": "2026-01-06T00:00:00+00:00"}, queue="default")
    assert drain(app, "default").completed == 1
    assert calls == [(30, "2026-01-06T00:00:00+00:00")]


def test_names_must_be_unique(app: Chimeway) -> None:
    app.cron("* * * * *", "test.a")
    app.cron("* * * * *", "test.a")  # the same definition again (module re-import) is fine
    with pytest.raises(ConfigurationError, match="already registered"):
        app.cron("*/2 * * * *", "test.a")
    app.cron("*/2 * * * *", "test.a", name="test.a.every-two")
    assert set(app.scheduler.schedules) == {"test.a", "test.a.every-two"}


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"schedule": "60 * * * *"}, InvalidScheduleError, "cron expression"),
        ({"timezone": "Atlantis/Capital"}, InvalidScheduleError, "timezone 'Atlantis/Capital'"),
        ({"args": {"when": datetime(2026, 1, 1)}}, ParamsNotJSONError, "args.when"),
        ({"args": {1: "x"}}, ParamsNotJSONError, "key 1"),
        ({"name": "x" * 201}, InvalidInputError, "cron name"),
        ({"catch_up": 5}, InvalidScheduleError, "catch_up"),
        ({"target": 42}, InvalidInputError, "target"),
        ({"queue": "nowhere"}, InvalidInputError, "queue 'nowhere' is not declared"),
    ],
)
def test_bad_input_at_registration(app: Chimeway, kwargs: dict[str, Any], error: type[Exception], words: str) -> None:
    options: dict[str, Any] = {"schedule": "* * * * *", "target": "test.job", **kwargs}
    with pytest.raises(error, match=words):
        app.cron(options.pop("schedule"), options.pop("target"), **options)
    assert app.scheduler.schedules == {}


def test_listing_for_the_cli(app: Chimeway, clock: FakeClock) -> None:
    app.cron("*/15 * * * *", "test.report", timezone="Europe/Berlin", name="report")
    [row] = app.cron_schedules()
    assert row == {"name": "report", "kind": "job", "schedule": "*/15 * * * *", "timezone": "Europe/Berlin",
                   "target": "test.report", "last_tick": None, "next_run": at(2026, 1, 5, 9, 15)}
    app.run_scheduler()
    [row] = app.cron_schedules()
    assert row["last_tick"] == at(2026, 1, 5, 9, 0)


def test_old_ticks_are_pruned_but_the_latest_is_kept(app: Chimeway, clock: FakeClock) -> None:
    app.cron("0 * * * *", "test.hourly")
    app.cron("0 0 1 1 *", "test.yearly", catch_up=timedelta(days=400))
    app.run_scheduler(at(2026, 1, 1, 0, 0, 10))
    for hour in range(1, 48):
        app.run_scheduler(at(2026, 1, 1, 0, 0) + timedelta(hours=hour))
    assert len(ticks(app, "test.hourly")) == 48
    app.scheduler.prune(at(2026, 1, 2, 12, 0))
    assert ticks(app, "test.hourly")[0] == at(2026, 1, 2, 12, 0)
    assert ticks(app, "test.yearly") == [at(2026, 1, 1, 0, 0)]


def test_a_running_worker_fires_cron_jobs(app: Chimeway, clock: FakeClock) -> None:
    ran = threading.Event()

    @app.job(name="test.worker_ping")
    def ping() -> None:
        ran.set()

    app.cron("* * * * *", ping)
    stop = threading.Event()
    thread = threading.Thread(target=app.queue.run_worker,
                              kwargs={"queues": {"default": 2}, "poll_interval": 0.05, "stop_event": stop})
    thread.start()
    try:
        assert ran.wait(10), "the worker never ran the scheduler"
        clock.advance(minutes=1)
        deadline = time.monotonic() + 10
        while len(jobs_of(app, "test.worker_ping")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(15)
    assert [t for t in ticks(app, "test.worker_ping")] == [at(2026, 1, 5, 9, 0), at(2026, 1, 5, 9, 1)]


def test_the_workflow_sweep_is_a_built_in_schedule(sqlite_url: str, clock: FakeClock) -> None:
    with Chimeway(sqlite_url, clock=clock) as app:
        [row] = app.cron_schedules()
        assert (row["name"], row["kind"], row["schedule"]) == ("chimeway.workflow.sweep", "builtin", "* * * * *")
        [tick] = app.run_scheduler()
        assert app.work() == 1
        [job] = jobs_of(app, "chimeway.workflow.ProgressionWorker")
        assert (job.id, job.queue, job.state, job.args) == (tick.job_id, "chimeway_workflows", "completed", {})
        app.scheduler.remove("chimeway.workflow.sweep")
        assert app.cron_schedules() == []
        with pytest.raises(InvalidInputError, match="no cron schedule named 'x'"):
            app.scheduler.remove("x")


def test_a_schedule_that_cannot_fire_does_not_hold_up_the_others(app: Chimeway, monkeypatch: pytest.MonkeyPatch) -> None:
    app.cron("* * * * *", "test.first", name="a-first")
    app.cron("* * * * *", "test.second", name="b-second")
    real = app.queue.enqueue

    def enqueue(session: Any, worker: str, *args: Any, **kwargs: Any) -> int | None:
        if worker == "test.first":
            raise RuntimeError("refused")
        return real(session, worker, *args, **kwargs)

    monkeypatch.setattr(app.queue, "enqueue", enqueue)
    with pytest.raises(RuntimeError, match="refused"):
        app.run_scheduler()
    assert ticks(app, "a-first") == []  # its tick row rolled back with the failed enqueue
    assert ticks(app, "b-second") == [at(2026, 1, 5, 9, 0)]


def test_the_cron_plugin_fires_due_ticks_once_per_tick(app: Chimeway, clock: FakeClock) -> None:
    from chimeway.cron import Cron

    [plugin] = [p for p in app.plugins if p.name == "cron"]
    assert isinstance(plugin, Cron) and plugin.interval == timedelta(seconds=1)
    app.cron("*/5 * * * *", "test.job")
    assert plugin.run(clock.now()) == 1
    assert plugin.run(clock.now()) == 0  # that tick has fired
    assert plugin.run(at(2026, 1, 5, 9, 5, 1)) == 1
    assert [j.scheduled_at for j in jobs_of(app, "test.job")] == [at(2026, 1, 5, 9, 0), at(2026, 1, 5, 9, 5)]
