"""Wait timers and signal routers: advanced in batches; a job made pointless is cancelled, not left to run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from journeys import Harness, Race
from sqlalchemy.orm import Session

from chimeway import Notifier, Recipient
from chimeway.models import (
    deliveries_table,
    jobs_table,
    workflow_runs_table,
    workflow_transitions_table,
)
from chimeway.workflow import SIGNAL_QUEUE, WORKFLOW_QUEUE, deliver, wait


class Again(Notifier):
    """Waits at the same step over and over, until told to stop."""

    key = "wf_again"
    templates = {"in_app": {"body": "again"}}
    workflow = [
        wait(minutes=5, name="pause", unless="stop.it"),
        deliver("in_app", on={"succeeded": "pause"}),
    ]

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id="user:1")]


def _many(h: Harness, n: int, prefix: str, users: Callable[[int], str] = lambda i: f"user:{i}") -> list[Any]:
    with Session(h.app.engine) as session, session.begin():
        ids = [h.app.trigger(session, Race, {"user": users(i)}, idempotency_key=f"{prefix}-{i}").notification_ids[0]
               for i in range(n)]
    h.app.work()
    return ids


def _timer_jobs(h: Harness, queue: str = WORKFLOW_QUEUE) -> dict[str, int]:
    j = jobs_table
    with h.app.engine.connect() as conn:
        rows = conn.execute(sa.select(j.c.state, sa.func.count()).where(j.c.queue == queue)
                            .group_by(j.c.state)).all()
    return {state: n for state, n in rows}


def _left_wait(h: Harness) -> dict[str, int]:
    """How many runs left their wait (step 1), by reason: once each."""
    t = workflow_transitions_table
    with h.app.engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.reason, sa.func.count()).where(t.c.from_step == 1)
                            .group_by(t.c.reason)).all()
    return {reason: n for reason, n in rows}


def test_the_sweep_cancels_the_timer_jobs_of_the_runs_it_advanced(make_app: Callable[..., Harness]) -> None:
    h = make_app("queue")
    _many(h, 12, "sweep")
    assert _timer_jobs(h) == {"scheduled": 12}
    h.clock.advance(minutes=30)
    assert h.app.progress_due() == 12
    assert _timer_jobs(h) == {"cancelled": 12}
    # Nothing is left in the queue to find nothing to do.
    assert h.app.work(queues=[WORKFLOW_QUEUE]) == 0
    h.app.work()
    assert _left_wait(h) == {"wait_elapsed": 12} and len(h.email.sent) == 12


def test_one_timer_job_advances_every_due_run_and_cancels_the_jobs_of_the_others(
        make_app: Callable[..., Harness]) -> None:
    h = make_app("queue")
    first, *_ = _many(h, 15, "batch")
    run_id = h.app.explain_run(notification_id=first).run_id
    h.clock.advance(minutes=30)
    assert h.app.workflows.progression_worker(str(run_id), 1) == 15
    assert _timer_jobs(h) == {"cancelled": 15}
    assert h.app.work(queues=[WORKFLOW_QUEUE]) == 0
    h.app.work()
    assert _left_wait(h) == {"wait_elapsed": 15} and len(h.email.sent) == 15


def test_a_timer_job_already_running_is_left_to_finish_and_finds_its_run_moved_on(
        make_app: Callable[..., Harness]) -> None:
    h = make_app("queue")
    _many(h, 3, "running")
    h.clock.advance(minutes=30)
    by = h.app.queue.new_worker_id("test")
    h.app.queue.register_worker(by, {WORKFLOW_QUEUE: 1})
    [claimed] = h.app.queue.claim(WORKFLOW_QUEUE, 1, by)
    assert h.app.progress_due() == 3
    assert _timer_jobs(h) == {"executing": 1, "cancelled": 2}
    result = h.app.queue.execute(claimed)
    h.app.queue.record(claimed, result, by)
    assert result.state == "completed" and _timer_jobs(h) == {"completed": 1, "cancelled": 2}
    h.app.work()
    assert _left_wait(h) == {"wait_elapsed": 3} and len(h.email.sent) == 3


def test_a_signal_that_stops_a_waiting_run_cancels_its_timer_job(make_app: Callable[..., Harness]) -> None:
    h = make_app("queue")
    read, _unread = _many(h, 2, "signal")
    with Session(h.app.engine) as session, session.begin():
        h.app.track(session, "notification.read", actor="user:0", notification_id=read)
    h.app.work()
    assert h.app.explain_run(notification_id=read).state == "stopped"
    assert _timer_jobs(h) == {"cancelled": 1, "scheduled": 1}
    h.clock.advance(minutes=30)
    assert h.app.work(queues=[WORKFLOW_QUEUE]) == 1
    assert _left_wait(h) == {"signal_unless": 1, "wait_elapsed": 1}


def test_cancelling_a_run_cancels_its_timer_job(make_app: Callable[..., Harness]) -> None:
    h = make_app("queue")
    [nid] = _many(h, 1, "cancel")
    assert h.app.cancel_run(notification_id=nid) == 1
    assert _timer_jobs(h) == {"cancelled": 1}


def test_a_run_that_enters_the_same_wait_again_gets_a_timer_of_its_own(h: Harness) -> None:
    with Session(h.app.engine) as session, session.begin():
        nid = h.app.trigger(session, Again, {}, idempotency_key="again").notification_ids[0]
    h.app.work()
    for _ in range(3):
        h.clock.advance(minutes=5)
        # The timer alone moves the run: the sweep is not called.
        h.app.work()
    run = h.app.explain_run(notification_id=nid)
    assert run.state == "waiting"
    assert [t.reason for t in run.transitions].count("wait_elapsed") == 3
    d = deliveries_table
    with h.app.engine.connect() as conn:
        sent = conn.execute(sa.select(d.c.status).where(d.c.channel == "in_app")).scalars().all()
    assert sent == ["succeeded"] * 3


def test_a_batch_of_due_runs_finds_each_run_its_own_signal(make_app: Callable[..., Harness]) -> None:
    h = make_app("queue")
    # Two runs per actor, so a signal of one run's notification must not stop the other.
    nids = _many(h, 12, "mixed", users=lambda i: f"user:{i // 2}")
    by_nid = dict(enumerate(nids))
    h.clock.advance(minutes=29)
    with Session(h.app.engine) as session, session.begin():
        # Recorded before the deadline, still unrouted when it falls due (no router runs).
        h.app.track(session, "notification.read", actor="user:0", notification_id=by_nid[0])
        h.app.track(session, "notification.read", actor="user:1")  # both runs of user:1
        h.app.track(session, "order.paid", actor="user:2")  # a name the wait does not take
        h.app.track(session, "notification.read", actor="user:3", tenant="elsewhere")
    h.clock.advance(minutes=2)
    with Session(h.app.engine) as session, session.begin():
        h.app.track(session, "notification.read", actor="user:4")  # after the deadline
    run_id = h.app.explain_run(notification_id=nids[11]).run_id
    h.app.workflows.progression_worker(str(run_id), 1)
    states = {i: h.app.explain_run(notification_id=nid).state for i, nid in by_nid.items()}
    stopped = {i for i, state in states.items() if state == "stopped"}
    assert stopped == {0, 2, 3}, states
    assert _left_wait(h) == {"signal_unless": 3, "wait_elapsed": 9}
    r, d = workflow_runs_table, deliveries_table
    with h.app.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(r).where(r.c.state == "waiting")).scalar() == 0
        emails = conn.execute(sa.select(sa.func.count()).select_from(d).where(d.c.channel == "email")).scalar()
    assert emails == 9


def test_routing_a_burst_of_signals_cancels_the_router_jobs_of_the_signals_it_routed(
        make_app: Callable[..., Harness]) -> None:
    h = make_app("queue")
    _many(h, 6, "burst")
    with Session(h.app.engine) as session, session.begin():
        first, *_ = [h.app.track(session, "notification.read", actor=f"user:{i}") for i in range(6)]
    assert _timer_jobs(h, SIGNAL_QUEUE) == {"available": 6}
    # One router job routes the whole burst, and the other five jobs go with it.
    assert h.app.workflows.signals.router_worker(str(first)) == 6
    assert _timer_jobs(h, SIGNAL_QUEUE) == {"cancelled": 6}
    assert h.app.work(queues=[SIGNAL_QUEUE]) == 0
    assert _left_wait(h) == {"signal_unless": 6}
    assert _timer_jobs(h) == {"cancelled": 6}
