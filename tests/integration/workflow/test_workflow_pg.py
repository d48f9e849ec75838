"""Workflow proofs on a real database: racing callers, racing signals, a killed worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from journeys import Mention, Race, Routed
from sqlalchemy.orm import Session
from wf_batch_proc import Tick
from wf_crash_notifiers import Crashy

from chimeway import Chimeway, DeliveryResult
from chimeway.db import create_engine
from chimeway.models import (
    deliveries_table,
    jobs_table,
    signals_table,
    workflow_deliveries_table,
    workflow_runs_table,
    workflow_transitions_table,
)
from chimeway.testing import FakeClock, RecordingChannel
from chimeway.workflow import steps as workflow_steps

pytestmark = pytest.mark.postgres
SCRIPT = Path(__file__).with_name("wf_crash_proc.py")
BATCH_SCRIPT = Path(__file__).with_name("wf_batch_proc.py")


@pytest.fixture
def pg_app(pg_url: str) -> Iterator[Callable[..., tuple[Chimeway, FakeClock, RecordingChannel, RecordingChannel]]]:
    apps: list[Chimeway] = []

    def make(dispatcher: str = "sync") -> tuple[Chimeway, FakeClock, RecordingChannel, RecordingChannel]:
        clock = FakeClock()
        email, sms = RecordingChannel(), RecordingChannel()
        app = Chimeway(engine=create_engine(pg_url, pool_size=20, max_overflow=20), clock=clock,
                       dispatcher=dispatcher, channels={"email": email, "sms": sms})
        apps.append(app)
        return app, clock, email, sms

    yield make
    for app in apps:
        app.engine.dispose()


def _trigger(app: Chimeway, notifier: Any, key: str, **options: Any) -> Any:
    with Session(app.engine) as session, session.begin():
        result = app.trigger(session, notifier, {"who": "a", "text": "t"}, idempotency_key=key, **options)
    app.work()
    return result.notification_ids[0]


def _transitions(app: Chimeway, run_id: Any) -> list[Any]:
    t = workflow_transitions_table
    with app.engine.connect() as conn:
        return list(conn.execute(sa.select(t).where(t.c.run_id == run_id).order_by(t.c.seq)).all())


def _together(workers: list[Callable[[], Any]]) -> list[Any]:
    barrier = threading.Barrier(len(workers))
    results: list[Any] = [None] * len(workers)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = workers[i]()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


@pytest.mark.parametrize("dispatcher", ["sync", "queue"])
def test_ten_threads_advance_a_due_run_exactly_once(pg_app: Any, dispatcher: str) -> None:
    app, clock, email, _ = pg_app(dispatcher)
    nid = _trigger(app, Race, "ten")
    run_id = app.explain_run(notification_id=nid).run_id
    clock.advance(minutes=30)
    results = _together([lambda: app.progress_run(run_id, step=1)] * 10)
    assert results.count(True) == 1
    app.work()
    elapsed = [t for t in _transitions(app, run_id) if t.from_step == 1]
    assert [t.reason for t in elapsed] == ["wait_elapsed"]
    assert len(email.sent) == 1
    assert app.explain_run(run_id).state == "completed"


def test_processes_and_threads_racing_over_many_due_runs_advance_each_once(pg_url: str) -> None:
    runs = 300
    app = Chimeway(engine=create_engine(pg_url, pool_size=20, max_overflow=20), dispatcher="queue",
                   channels={"email": RecordingChannel()})
    # Two processes, each with a worker running the runs' timer jobs and a
    # sweep, race this process's sweeps, timer job calls and single-run
    # advances over the same runs as they fall due.
    procs = [subprocess.Popen([sys.executable, str(BATCH_SCRIPT), pg_url, str(runs), "60"], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                              cwd=BATCH_SCRIPT.parent)
             for _ in range(2)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    with Session(app.engine) as session, session.begin():
        nids = [app.trigger(session, Tick, {"user": f"user:{i}", "n": i}, idempotency_key=f"tick-{i}")
                .notification_ids[0] for i in range(runs)]
    r = workflow_runs_table
    with app.engine.connect() as conn:
        run_of = dict(conn.execute(sa.select(r.c.notification_id, r.c.id)).all())
    run_ids = [run_of[nid] for nid in nids]

    def waiting() -> int:
        with app.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(r).where(r.c.state == "waiting"))
                       .scalar_one())

    def until_none_waits(step: Callable[[int], int]) -> Callable[[], int]:
        def loop() -> int:
            moved, i = 0, 0
            deadline = time.monotonic() + 60
            while waiting() and time.monotonic() < deadline:
                n = step(i)
                moved += n
                i += 1
                if not n:
                    time.sleep(0.005)
            return moved
        return loop

    moved = _together([
        until_none_waits(lambda i: app.progress_due()),
        until_none_waits(lambda i: app.progress_due(limit=7)),
        until_none_waits(lambda i: app.workflows.progression_worker(str(run_ids[(i * 37) % runs]), 0)),
        until_none_waits(lambda i: int(app.progress_run(run_ids[(i * 53) % runs], step=0))),
    ])
    outs = [proc.communicate(timeout=90)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert waiting() == 0
    # No two callers counted the same advance (the processes' timer jobs advanced the rest).
    assert sum(moved) + sum(int(out.strip()) for out in outs) <= runs
    t, link, d, j = workflow_transitions_table, workflow_deliveries_table, deliveries_table, jobs_table
    with app.engine.connect() as conn:
        left = conn.execute(sa.select(t.c.run_id, t.c.reason).where(t.c.from_step == 0)).all()
        emails = conn.execute(sa.select(link.c.run_id, sa.func.count()).join(d, d.c.id == link.c.delivery_id)
                              .where(d.c.channel == "email").group_by(link.c.run_id)).all()
        timers = conn.execute(sa.select(j.c.state).where(j.c.queue == "chimeway_workflows")).scalars().all()
    assert sorted(run_id for run_id, _ in left) == sorted(run_ids)
    assert {reason for _, reason in left} == {"wait_elapsed"}
    assert sorted(run_id for run_id, _ in emails) == sorted(run_ids) and {n for _, n in emails} == {1}
    # No timer job is left waiting: each ran, or was cancelled by the advance that made it pointless.
    assert len(timers) == runs and set(timers) <= {"completed", "cancelled"}
    app.engine.dispose()


def test_a_failed_step_is_routed_once_from_its_stored_definition(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    failing = RecordingChannel(lambda m: DeliveryResult.permanent("401 bad credentials"))
    push, sms = RecordingChannel(), RecordingChannel()
    old = Chimeway(engine=create_engine(pg_url, pool_size=20, max_overflow=20), clock=clock, dispatcher="queue",
                   channels={"email": failing, "push": push, "sms": sms})
    with Session(old.engine) as session, session.begin():
        nid = old.trigger(session, Routed, {}, idempotency_key="routed-pg").notification_ids[0]
    run_id = old.explain_run(notification_id=nid).run_id
    old.engine.dispose()
    # A deploy that no longer declares this version; its final-outcome hook
    # is lost too, so ten callers race to route the failed step.
    monkeypatch.delitem(workflow_steps._PROGRAMS, (Routed.key, Routed.version))
    new = Chimeway(engine=create_engine(pg_url, pool_size=20, max_overflow=20), clock=clock, dispatcher="queue",
                   channels={"email": failing, "push": push, "sms": sms})
    try:
        new.executor.on_final = None
        new.work()
        assert new.explain_run(run_id).state == "active" and len(failing.calls) == 1
        results = _together([lambda: new.progress_run(run_id, step=0)] * 10)
        assert results.count(True) == 1
        new.executor.on_final = new.workflows.on_final
        new.work()
        run = new.explain_run(run_id)
        assert [(t.reason, t.step) for t in run.transitions] == [
            ("started", "0 deliver email"),
            ("delivery_failed", "0.on.permanent.0 deliver push"),
            ("delivery_succeeded", "2 [done] wait 1:00:00 unless notification.read"),
        ]
        assert run.transitions[1].context["route"] == "permanent"
        assert len(push.sent) == 1 and sms.sent == []
    finally:
        new.engine.dispose()


def test_a_read_racing_the_due_wait_has_exactly_one_outcome(pg_app: Any) -> None:
    app, clock, email, _ = pg_app("sync")
    outcomes: dict[str, int] = {}
    for i in range(30):
        email.clear()
        nid = _trigger(app, Race, f"race-{i}")
        run_id = app.explain_run(notification_id=nid).run_id
        clock.advance(minutes=30)

        def read(nid: Any = nid) -> None:
            with Session(app.engine) as session, session.begin():
                app.track(session, "notification.read", actor="user:1", notification_id=nid)

        def advance(run_id: Any = run_id, delay: float = (i % 6) * 0.001) -> bool:
            # Staggered starts let the read win some rounds and lose others.
            time.sleep(delay)
            return app.progress_run(run_id)

        _together([read, advance])
        app.work()
        left = [t for t in _transitions(app, run_id) if t.from_step == 1]
        assert len(left) == 1, [t.reason for t in left]
        reason = left[0].reason
        outcomes[reason] = outcomes.get(reason, 0) + 1
        run = app.explain_run(run_id)
        if reason == "signal_unless":
            assert run.state == "stopped" and email.sent == []
            assert left[0].context["signal"] == "notification.read"
        else:
            assert reason == "wait_elapsed"
            assert run.state == "completed" and len(email.sent) == 1
        with app.engine.connect() as conn:
            routed = conn.execute(sa.select(signals_table.c.routed_at, signals_table.c.matched)
                                  .where(signals_table.c.notification_id == nid)).one()
        assert routed.routed_at is not None
        assert routed.matched == (1 if reason == "signal_unless" else 0)
    assert sum(outcomes.values()) == 30


def test_a_signal_recorded_before_the_deadline_wins_however_late_it_is_routed(pg_app: Any) -> None:
    app, clock, email, _ = pg_app("queue")
    for i in range(20):
        email.clear()
        nid = _trigger(app, Race, f"late-{i}")
        run_id = app.explain_run(notification_id=nid).run_id
        clock.advance(minutes=29)
        # Committed a minute before the deadline; its router job waits in a backlog.
        with Session(app.engine) as session, session.begin():
            app.track(session, "notification.read", actor="user:1", notification_id=nid)
        clock.advance(minutes=2)

        def timer(delay: float = (i % 5) * 0.002) -> int:
            time.sleep(delay)
            return app.work(queues=["chimeway_workflows"])

        def router(delay: float = ((i + 2) % 5) * 0.002) -> int:
            time.sleep(delay)
            return app.work(queues=["chimeway_signals"])

        _together([timer, router])
        app.work()
        left = [t for t in _transitions(app, run_id) if t.from_step == 1]
        assert [t.reason for t in left] == ["signal_unless"], [t.reason for t in left]
        assert app.explain_run(run_id).state == "stopped"
        assert email.sent == [], "the escalation went out although the read came before the deadline"


@pytest.mark.parametrize("dispatcher", ["sync", "queue"])
def test_signals_of_another_tenant_or_actor_never_touch_a_run(pg_app: Any, dispatcher: str) -> None:
    app, _, _, _ = pg_app(dispatcher)
    nid = _trigger(app, Race, "iso", tenant="acme")

    def noise(i: int) -> Callable[[], None]:
        def send() -> None:
            with Session(app.engine) as session, session.begin():
                app.track(session, "notification.read", actor="user:1", tenant=f"other-{i}")
                app.track(session, "notification.read", actor=f"user:{i + 2}", tenant="acme")
                app.track(session, "notification.read", actor="user:1", tenant="acme",
                          notification_id=__import__("uuid").uuid4())
        return send

    _together([noise(i) for i in range(8)])
    app.work()
    app.progress_due(stale_after=timedelta(0))
    run = app.explain_run(notification_id=nid)
    assert run.state == "waiting" and [t.reason for t in run.transitions] == ["started", "delivery_succeeded"]
    with app.engine.connect() as conn:
        counts = conn.execute(sa.select(sa.func.count(), sa.func.sum(signals_table.c.matched),
                                        sa.func.count(signals_table.c.routed_at))).one()
    assert tuple(counts) == (24, 0, 24)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("dispatcher", ["sync", "queue"])
def test_the_whole_mention_journey(request: pytest.FixtureRequest, backend: str, dispatcher: str) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    clock = FakeClock()
    email, sms = RecordingChannel(), RecordingChannel()
    app = Chimeway(engine=create_engine(url), clock=clock, dispatcher=dispatcher,
                   channels={"email": email, "sms": sms})
    with Session(app.engine) as session, session.begin():
        result = app.trigger(session, Mention, {"who": "ann", "text": "look", "users": ["user:1", "user:2"],
                                                "manager": "user:boss"}, idempotency_key="journey")
    app.work()
    read_by = result.notification_ids[1]
    clock.advance(minutes=30)
    app.work()
    assert sorted(m.recipient.id for m in email.sent) == ["user:1", "user:2"]
    clock.advance(hours=1)
    assert app.inbox("user:2").mark_read(read_by)
    app.work()
    clock.advance(hours=3)
    app.work()
    assert [m.recipient.id for m in sms.sent] == ["user:boss"]
    states = {app.explain_run(notification_id=n).state for n in result.notification_ids}
    assert states == {"completed", "stopped"}
    stopped = app.explain_run(notification_id=read_by)
    assert stopped.transitions[-1].reason == "signal_unless"
    app.engine.dispose()


def test_a_worker_killed_mid_progression_leaves_the_run_to_be_advanced_once(pg_url: str, tmp_path: Path) -> None:
    app = Chimeway(engine=create_engine(pg_url), dispatcher="queue", channels={"email": RecordingChannel()})
    with Session(app.engine) as session, session.begin():
        nid = app.trigger(session, Crashy, {}, idempotency_key="crash").notification_ids[0]
    app.work(queues=["chimeway_delivery"])
    run_id = app.explain_run(notification_id=nid).run_id
    assert app.explain_run(run_id).state == "waiting"
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), pg_url, str(marker)],
                            env={**os.environ, "PYTHONPATH": str(SCRIPT.parent)}, cwd=SCRIPT.parent)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the worker never reached the progression"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -9
    # The killed transaction rolled back: the run still waits, nothing was half-written.
    run = app.explain_run(run_id)
    assert run.state == "waiting" and run.step == 1
    assert app.progress_due() == 1
    # The killed worker's job is rescued and runs again: it finds the run moved on.
    app.queue.rescue(stale_after=timedelta(0))
    app.work()
    elapsed = [t for t in _transitions(app, run_id) if t.from_step == 1]
    assert [t.reason for t in elapsed] == ["wait_elapsed"]
    with app.engine.connect() as conn:
        emails = conn.execute(sa.select(deliveries_table.c.recipient_id, deliveries_table.c.status)
                              .where(deliveries_table.c.channel == "email")).all()
    assert [tuple(e) for e in emails] == [("user:lead", "succeeded")]
    assert app.explain_run(run_id).state == "completed"
    app.engine.dispose()
