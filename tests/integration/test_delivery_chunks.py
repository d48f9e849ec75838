"""Delivery jobs run in chunks: one claim and one record for several, a slow send holding up no other."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from chimeway import Chimeway, DeliveryResult, Message, Notifier, Recipient
from chimeway.dispatch.jobs import DELIVERY_QUEUE, DELIVERY_WORKER
from chimeway.models import deliveries_table, jobs_table
from chimeway.testing import RecordingChannel


class ChunkHook(Notifier):
    key = "test_chunk_hook"
    channels = ["rec"]
    templates = {"rec": {"body": "n={{ n }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"user:{params['n']}")]


def _statuses(engine: sa.Engine) -> dict[str, str]:
    d = deliveries_table
    with engine.connect() as conn:
        return {str(i): s for i, s in conn.execute(sa.select(d.c.id, d.c.status))}


def _wait_for(check: Any, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def _slow_first(pg_engine: sa.Engine) -> tuple[Chimeway, list[str], threading.Event]:
    """Six webhook-like deliveries; the first one's provider answers only once released."""
    release = threading.Event()

    def respond(message: Message) -> DeliveryResult:
        if message.recipient.id == "user:0":
            release.wait(60)  # a provider that takes its time
        return DeliveryResult.ok()

    app = Chimeway(engine=pg_engine, dispatcher="queue", channels={"rec": RecordingChannel(respond)})
    with Session(pg_engine) as session, session.begin():
        ids = [str(app.trigger(session, ChunkHook, {"n": n}, idempotency_key=f"k{n}").delivery_ids[0]) for n in range(6)]
    return app, ids, release


def test_a_slow_send_holds_up_no_other_delivery_of_its_chunk(pg_engine: sa.Engine) -> None:
    app, ids, release = _slow_first(pg_engine)
    by = app.queue.new_worker_id()
    app.queue.register_worker(by, {DELIVERY_QUEUE: 6})
    claimed = app.queue.claim(DELIVERY_QUEUE, 6, by)
    assert [c.info.args["delivery_id"] for c in claimed] == ids  # the slow one comes first
    outcomes: list[object] = []
    chunk = threading.Thread(target=lambda: outcomes.extend(
        app.delivery_jobs.deliver_chunk([c.info for c in claimed])))
    chunk.start()
    try:
        # The chunk is done with the other five while the first is still in
        # flight: they are sent and recorded, and the slow one's outcome is
        # a future.
        assert _wait_for(lambda: bool(outcomes))
        assert outcomes[1:] == [None] * 5
        slow = outcomes[0]
        assert isinstance(slow, Future) and not slow.done()
        statuses = _statuses(pg_engine)
        assert statuses[ids[0]] == "dispatched" and [statuses[i] for i in ids[1:]] == ["succeeded"] * 5
    finally:
        release.set()
        chunk.join(60)
    assert slow.result(30) is None
    assert set(_statuses(pg_engine).values()) == {"succeeded"}
    app.close()


def test_a_worker_ends_the_jobs_of_a_chunk_while_one_send_is_still_running(pg_engine: sa.Engine) -> None:
    app, ids, release = _slow_first(pg_engine)
    j = jobs_table

    def states() -> dict[str, str]:
        with pg_engine.connect() as conn:
            return {row.args["delivery_id"]: row.state
                    for row in conn.execute(sa.select(j.c.args, j.c.state).where(j.c.worker == DELIVERY_WORKER))}

    stop = threading.Event()
    worker = threading.Thread(target=app.queue.run_worker, kwargs={
        "queues": {DELIVERY_QUEUE: 6}, "poll_interval": 0.05, "stop_event": stop})
    worker.start()
    try:
        # Five jobs completed (their slots free for more work) while the slow one runs.
        assert _wait_for(lambda: [states().get(i) for i in ids[1:]] == ["completed"] * 5)
        now = states()
        assert now.get(ids[0]) == "executing", (now, ids)
        assert _statuses(pg_engine)[ids[0]] == "dispatched"
        release.set()
        assert _wait_for(lambda: set(states().values()) == {"completed"})
    finally:
        release.set()
        stop.set()
        worker.join(60)
    assert set(_statuses(pg_engine).values()) == {"succeeded"}
    app.close()


def test_workers_racing_over_duplicate_jobs_send_each_delivery_once(pg_engine: sa.Engine) -> None:
    rec = RecordingChannel()
    app = Chimeway(engine=pg_engine, dispatcher="queue", channels={"rec": rec})
    with Session(pg_engine) as session, session.begin():
        ids = [d for n in range(120) for d in app.trigger(session, ChunkHook, {"n": n}, idempotency_key=f"k{n}").delivery_ids]
    # A second job for every delivery, as repeated rescues would leave.
    with pg_engine.begin() as conn:
        app.queue.insert_many(conn, [{"worker": DELIVERY_WORKER, "args": {"delivery_id": str(d)},
                                      "queue": DELIVERY_QUEUE} for d in ids])
    stop = threading.Event()
    workers = [threading.Thread(target=app.queue.run_worker, kwargs={
        "queues": {DELIVERY_QUEUE: 20}, "poll_interval": 0.05, "stop_event": stop}) for _ in range(3)]
    for worker in workers:
        worker.start()
    j = jobs_table

    def settled() -> bool:
        with pg_engine.connect() as conn:
            busy = conn.execute(sa.select(sa.func.count()).select_from(j).where(
                j.c.worker == DELIVERY_WORKER, j.c.state.in_(("available", "executing")))).scalar_one()
        return busy == 0 and set(_statuses(pg_engine).values()) == {"succeeded"}

    try:
        assert _wait_for(settled, 60)
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
    sent = Counter(m.delivery_id for m in rec.sent)
    assert sorted(sent) == sorted(ids)
    assert set(sent.values()) == {1}
    d = deliveries_table
    with pg_engine.connect() as conn:
        assert set(conn.execute(sa.select(d.c.attempts)).scalars()) == {1}
        states = Counter(conn.execute(sa.select(j.c.state).where(j.c.worker == DELIVERY_WORKER)).scalars())
    # Every first job completed; a duplicate completed too, or snoozed while the other held the delivery.
    assert states["completed"] >= len(ids)
    assert states["completed"] + states["scheduled"] == 2 * len(ids)
    app.close()


def test_closing_the_app_ends_its_send_threads_and_a_later_chunk_starts_them_again(pg_engine: sa.Engine) -> None:
    before = set(threading.enumerate())
    rec = RecordingChannel()
    app = Chimeway(engine=pg_engine, dispatcher="queue", channels={"rec": rec})
    with Session(pg_engine) as session, session.begin():
        for n in range(4):
            app.trigger(session, ChunkHook, {"n": n}, idempotency_key=f"k{n}")
    assert app.work() == 4
    # The helpers that sent them, and the stall watcher.
    mine = [t for t in threading.enumerate() if t not in before and t.name.startswith("chimeway-send")]
    assert mine
    app.close()
    assert _wait_for(lambda: not any(t.is_alive() for t in mine), 10), mine
    with Session(pg_engine) as session, session.begin():
        app.trigger(session, ChunkHook, {"n": 9}, idempotency_key="after-close")
    assert app.work() == 1
    assert len(rec.sent) == 5
    app.close()
