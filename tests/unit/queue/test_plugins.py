"""Worker plugins: each one alone on a hand-driven clock, and the worker that runs them."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from queue_unit_helpers import job_count

from chimeway.errors import ConfigurationError
from chimeway.queue import JobQueue
from chimeway.queue.plugins import Heartbeat, Lifeline, Plugin, Pruner, check_plugins, job_targets


def _states(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT state, count(*) FROM chimeway_jobs GROUP BY state")).all())


def test_lifeline_rescues_only_jobs_of_workers_whose_heartbeat_went_stale(
    q: JobQueue, sqlite_engine: sa.Engine, clock: Any
) -> None:
    q.register(lambda: None, name="ok")
    with sqlite_engine.begin() as conn:
        q.insert_many(conn, [{"worker": "ok"}] * 3)
    q.register_worker("dead", {"default": 3})
    assert len(q.claim("default", 3, "dead")) == 3
    lifeline = Lifeline(q, stale_after=timedelta(minutes=1))
    assert lifeline.run(clock.now()) == 0
    assert lifeline.run(clock.now() + timedelta(seconds=61)) == 3
    assert _states(sqlite_engine) == {"available": 3}
    assert (lifeline.name, lifeline.interval) == ("lifeline", timedelta(seconds=30))


def test_heartbeat_refreshes_its_worker_and_brings_it_back_after_a_rescue(
    q: JobQueue, sqlite_engine: sa.Engine, clock: Any
) -> None:
    q.register_worker("w1", {"default": 2})
    beat = Heartbeat(q, "w1", {"default": 2})
    later = clock.now() + timedelta(minutes=5)
    assert beat.run(later) == 1
    [worker] = q.live_workers()
    assert (worker.id, worker.heartbeat_at) == ("w1", later)
    q.rescue(now=later + timedelta(minutes=5))  # judged dead: its row goes
    assert q.live_workers() == []
    beat.run(later + timedelta(minutes=6))
    assert [(w.id, dict(w.queues)) for w in q.live_workers()] == [("w1", {"default": 2})]


def test_the_pruner_deletes_every_finished_job_past_its_age_in_many_batches(
    q: JobQueue, sqlite_engine: sa.Engine, clock: Any
) -> None:
    q.register(lambda: None, name="ok")
    with sqlite_engine.begin() as conn:
        q.insert_many(conn, [{"worker": "ok"}] * 23)
        cancelled = q.insert_many(conn, [{"worker": "ok", "schedule_in": 3600}] * 4)
        waiting = q.insert_many(conn, [{"worker": "ok", "schedule_in": 86400 * 30}] * 2)
    for job_id in cancelled:
        q.cancel(job_id)
    assert q.work() == 23
    clock.advance(hours=23)
    with sqlite_engine.begin() as conn:
        q.insert_many(conn, [{"worker": "ok"}] * 2)
    assert q.work() == 2
    pruner = Pruner(sqlite_engine, job_targets(), batch_size=4)
    assert pruner.run(clock.now()) == 0
    clock.advance(hours=2)  # the first 23 are a day old, the last 2 are not
    assert pruner.prune(clock.now()) == {"chimeway_jobs": 23}
    assert _states(sqlite_engine) == {"completed": 2, "cancelled": 4, "scheduled": 2}
    clock.advance(days=7)
    assert pruner.run(clock.now()) == 6
    assert [q.get(i).state for i in waiting] == ["scheduled", "scheduled"]
    assert job_count(sqlite_engine) == 2


def test_a_pruner_pass_stops_at_its_time_limit_and_the_next_carries_on(
    q: JobQueue, sqlite_engine: sa.Engine, clock: Any
) -> None:
    q.register(lambda: None, name="ok")
    with sqlite_engine.begin() as conn:
        q.insert_many(conn, [{"worker": "ok"}] * 10)
    q.work()
    clock.advance(days=2)
    # A limit already spent lets no batch start: the pass is bounded by time, not rows.
    hurried = Pruner(sqlite_engine, job_targets(), batch_size=3, time_limit=timedelta(microseconds=1))
    assert hurried.prune(clock.now(), time_limit=timedelta(0)) == {}
    assert hurried.prune(clock.now(), time_limit=None) == {"chimeway_jobs": 10}


def test_job_ages_are_checked_and_none_keeps_a_state_forever(
    q: JobQueue, sqlite_engine: sa.Engine, clock: Any
) -> None:
    with pytest.raises(ConfigurationError, match="completed jobs' age must be a timedelta"):
        job_targets(completed=-timedelta(seconds=1))
    assert [t.name for t in job_targets(cancelled=None)] == ["jobs.completed", "jobs.discarded"]


class Counting:
    """A plugin that counts its passes."""

    def __init__(self, name: str = "counting", *, fail: bool = False) -> None:
        self.name = name
        self.interval = timedelta(milliseconds=20)
        self.fail = fail
        self.seen: list[datetime] = []
        self.enough = threading.Event()

    def run(self, now: datetime) -> int:
        self.seen.append(now)
        if len(self.seen) >= 3:
            self.enough.set()
        if self.fail:
            raise RuntimeError("broken plugin")
        return 1


def test_a_worker_runs_each_plugin_on_its_own_and_a_failing_one_does_not_stop_the_rest(
    q: JobQueue, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    good, bad = Counting("good"), Counting("bad", fail=True)
    stop = threading.Event()
    thread = threading.Thread(target=q.run_worker, kwargs={
        "queues": {"default": 1}, "poll_interval": 0.05, "stop_event": stop, "plugins": [bad, good]})
    with caplog.at_level(logging.ERROR, logger="chimeway.queue"):
        thread.start()
        try:
            assert good.enough.wait(30)
            assert bad.seen, "the failing plugin ran too"
        finally:
            stop.set()
            thread.join(30)
    assert set(good.seen) == {clock.now()}  # each pass runs at the queue clock's time
    failures = [r for r in caplog.records if getattr(r, "chimeway_event", None) == "worker.plugin_failed"]
    assert failures and "broken plugin" in failures[0].getMessage()


def test_plugins_are_configured_in_one_place_and_checked(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    assert [p.name for p in q.plugins] == ["lifeline", "pruner"]
    assert all(isinstance(p, Plugin) for p in q.plugins)
    mine = Counting()
    q.plugins = [*q.plugins, mine]
    assert q.plugins[-1] is mine
    with pytest.raises(ConfigurationError, match="two plugins are named 'counting'"):
        q.plugins = [mine, Counting()]
    slow = Counting("slow")
    slow.interval = timedelta(0)
    with pytest.raises(ConfigurationError, match="'slow' needs a positive timedelta interval"):
        check_plugins([slow])
    with pytest.raises(ConfigurationError, match="is not a plugin"):
        check_plugins([object()])  # type: ignore[list-item]
    assert [p.name for p in JobQueue(sqlite_engine, plugins=()).plugins] == []
