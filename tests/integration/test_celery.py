"""The Celery dispatcher against real brokers, real Celery worker processes and a real receiver.

RabbitMQ and Redis run on 127.0.0.1 (``.ci/run`` checks they answer); each
proof uses Celery queues of its own. Deliveries are webhooks to a receiver
that counts every ``webhook-id`` (``msg_<delivery id>``) it sees.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from celery_support import (
    RABBITMQ,
    REDIS,
    CeleryHook,
    CeleryJourney,
    ThrowawayRedis,
    delete_queues,
    drain_ids,
    kill_group,
    make_app,
    message_count,
    require_broker,
    settings,
    start_celery_worker,
    start_chimeway_worker,
    stop,
)
from faults import Receiver, wait_for
from sqlalchemy.orm import Session

from chimeway import Chimeway
from chimeway.models import decisions_table, deliveries_table, outbox_table
from chimeway.planning import TriggerRequest

pytestmark = pytest.mark.postgres

FINAL = {"succeeded", "cancelled", "suppressed"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    sink = Receiver()
    yield sink
    sink.close()


def _statuses(app: Chimeway) -> dict[str, int]:
    d = deliveries_table
    with app.engine.connect() as conn:
        return {str(s): int(n) for s, n in conn.execute(sa.select(d.c.status, sa.func.count()).group_by(d.c.status))}


def _outbox(app: Chimeway) -> list[sa.Row[tuple[object, ...]]]:
    with app.engine.connect() as conn:
        return list(conn.execute(sa.select(outbox_table)).all())


def _commit(app: Chimeway, start: int, count: int, *, fanout: int = 10) -> list[str]:
    """Trigger ``count`` events of ``fanout`` webhooks each, 20 events per transaction."""
    ids: list[str] = []
    requests = [TriggerRequest(params={"n": n, "fanout": fanout}, idempotency_key=f"celery-{n}")
                for n in range(start, start + count)]
    for first in range(0, len(requests), 20):
        with Session(app.engine) as session, session.begin():
            for result in app.trigger_many(session, CeleryHook, requests[first:first + 20]):
                ids += [str(i) for i in result.delivery_ids]
    return ids


def _stopped(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        err = stop(proc)
        if "Traceback" in err or "ERROR" in err:
            print(f"--- worker {proc.pid} stderr:\n{err[-12000:]}")


@pytest.mark.parametrize("broker", [RABBITMQ, REDIS], ids=["rabbitmq", "redis"])
def test_commit_is_delivered_by_a_celery_worker_and_a_rollback_publishes_nothing(
    broker: str, pg_url: str, receiver: Receiver, tmp_path: Path,
) -> None:
    env = settings(url=pg_url, broker=require_broker(broker), receiver=receiver.url)
    app, _ = make_app(env)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with pytest.raises(RuntimeError), Session(app.engine) as session, session.begin():
            app.trigger(session, CeleryHook, {"n": 0, "fanout": 3}, idempotency_key="rolled-back")
            raise RuntimeError("the caller's transaction fails")
        assert message_count(broker, env["CW_QUEUE"]) == 0
        assert _outbox(app) == [] and _statuses(app) == {}

        ids = _commit(app, 1, 2)                       # 20 webhooks, published after the commit
        assert message_count(broker, env["CW_QUEUE"]) == 20
        assert _outbox(app) == []
        with Session(app.engine) as session, session.begin():
            walkers = [app.trigger(session, CeleryJourney, {"n": n}, idempotency_key=f"walk-{n}") for n in (1, 2)]

        # The worker runs deliveries, the workflow timer and the signal router;
        # its embedded beat runs the relay. No Chimeway worker runs.
        procs.append(start_celery_worker(env, name="proof", pool="prefork", concurrency=2, beat_dir=tmp_path))
        wait_for(lambda: all(receiver.counts[i] for i in ids), 60, "the 20 webhooks")
        # Step 3 waits for the signal: two deliveries per walker so far (the timer fired through Celery).
        wait_for(lambda: _statuses(app).get("succeeded", 0) == 24, 60, "the journeys' timers")
        with Session(app.engine) as session, session.begin():
            app.track(session, "go", actor="walker:1")
        wait_for(lambda: _statuses(app).get("succeeded", 0) == 25, 60, "the signal to be routed")
        time.sleep(1.0)
        assert _statuses(app) == {"succeeded": 25}, "walker 2 got no signal: its last step must not run"

        assert {i: receiver.counts[i] for i in ids} == dict.fromkeys(ids, 1)
        x = app.explain(ids[0])
        published = [t.detail for t in x.timeline if t.event == "published"]
        picked = [t.detail for t in x.timeline if t.event == "celery_task"]
        assert published == [{"task_id": ids[0], "by": "after_commit", "reason": "planned", "checkpoint": "celery"}]
        assert len(picked) == 1 and picked[0]["task_id"] == ids[0] and picked[0]["worker"].startswith("proof@")
        assert walkers[0].delivery_ids
    finally:
        _stopped(procs)
        delete_queues(broker, env["CW_QUEUE"], env["CW_RELAY_QUEUE"])
        app.close()


def test_a_commit_while_the_broker_is_down_is_delivered_once_it_returns(
    pg_url: str, receiver: Receiver,
) -> None:
    redis = ThrowawayRedis()
    env = settings(url=pg_url, broker=redis.url, receiver=receiver.url)
    app, _ = make_app(env)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(start_celery_worker(env, name="steady", concurrency=10))
        before = _commit(app, 1, 1)
        wait_for(lambda: _statuses(app) == {"succeeded": 10}, 60, "webhooks sent while the broker is up")
        time.sleep(0.5)                                 # their acknowledgements reach the broker

        redis.stop()
        started = time.monotonic()
        during = _commit(app, 2, 3)                     # 30 webhooks: the broker is away at commit time
        assert time.monotonic() - started < 10, "a broker that is away must not hold the commit"
        rows = _outbox(app)
        assert len(rows) == 30 and all(r.publish_failures == 1 and r.last_error for r in rows)
        time.sleep(1.0)
        assert not any(receiver.counts[i] for i in during)

        redis.start()
        # The relay runs inside `chimeway worker` here (Celery beat is not running).
        procs.append(start_chimeway_worker(env))
        after = _commit(app, 5, 1)

        def done() -> bool:
            # A supervisor's job: Celery workers on Redis sometimes exit while
            # reconnecting (a kombu error in restoring unacknowledged messages).
            if procs[0].poll() is not None:
                print(f"the Celery worker exited ({procs[0].returncode}) after the broker restart; restarted")
                procs[0] = start_celery_worker(env, name="steady", concurrency=10)
            return _statuses(app) == {"succeeded": 50}

        wait_for(done, 90, "every webhook once the broker is back")
        ids = before + during + after
        assert {i: receiver.counts[i] for i in ids} == dict.fromkeys(ids, 1), "each delivery exactly once"
        assert _outbox(app) == []
        relayed = [t.detail for t in app.explain(during[0]).timeline if t.event == "published"]
        assert relayed[0]["by"] == "relay" and relayed[0]["failed_publishes"] >= 1
    finally:
        _stopped(procs)
        app.close()
        redis.stop()


def _in_flight_in_group(app: Chimeway, group: int) -> int:
    """Sends in flight whose lease holder (``host:pid:tag``) is a process of ``group``."""
    d = deliveries_table
    with app.engine.connect() as conn:
        holders = conn.execute(sa.select(d.c.lease_holder).where(d.c.status == "dispatched")).scalars().all()
    count = 0
    for holder in holders:
        with contextlib.suppress(ProcessLookupError, ValueError, IndexError):
            count += os.getpgid(int(str(holder).split(":")[1])) == group
    return count


def test_no_delivery_is_lost_when_a_celery_worker_is_killed_mid_send(
    pg_url: str, tmp_path: Path,
) -> None:
    broker = require_broker(RABBITMQ)
    receiver = Receiver(delay=0.05)
    env = settings(url=pg_url, broker=broker, receiver=receiver.url, lease=2.0)
    app, _ = make_app(env)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        doomed = start_celery_worker(env, name="doomed", pool="prefork", concurrency=8)
        procs += [doomed, start_celery_worker(env, name="survivor", concurrency=30, beat_dir=tmp_path)]
        ids = _commit(app, 0, 100)                      # 1,000 webhooks
        wait_for(lambda: receiver.received() >= 150 and _in_flight_in_group(app, doomed.pid) > 0, 120,
                 "the first sends, some of them by the doomed worker")
        in_flight = _in_flight_in_group(app, doomed.pid)
        kill_group(doomed)                              # the worker and its prefork children, mid-send
        wait_for(lambda: set(_statuses(app)) <= FINAL, 120, "every delivery to be final")
        seen = receiver.snapshot()
        duplicated = sum(n - 1 for n in seen.values() if n > 1)
        with app.engine.connect() as conn:
            taken_back = conn.execute(sa.select(sa.func.count()).where(
                decisions_table.c.event == "lease_expired")).scalar()
        print(f"celery sigkill: {len(ids)} deliveries, {in_flight} in flight in the killed worker, "
              f"{taken_back} taken back when their lease ran out, {duplicated} received twice")
        assert _statuses(app) == {"succeeded": 1000}
        assert [i for i in ids if seen[i] == 0] == []
        assert in_flight > 0 and taken_back, "the kill hit no send in flight: the proof proves nothing"
    finally:
        _stopped(procs)
        delete_queues(broker, env["CW_QUEUE"], env["CW_RELAY_QUEUE"])
        receiver.close()
        app.close()


def test_two_relays_racing_never_publish_a_delivery_twice(pg_url: str, receiver: Receiver) -> None:
    broker = require_broker(REDIS)
    away = settings(url=pg_url, broker="redis://127.0.0.1:1/0", receiver=receiver.url)
    planner, _ = make_app(away)
    ids = _commit(planner, 0, 100)                     # 1,000 rows left in the outbox: nothing answers on port 1
    planner.close()
    env = {**away, "CW_BROKER": broker}
    relays = [make_app(env)[0] for _ in range(2)]
    try:
        for relay_app in relays:
            relay_app.dispatcher.relay.batch_size = 25  # type: ignore[attr-defined]
        counts = [0, 0]
        start = threading.Barrier(2)

        def run(k: int) -> None:
            start.wait()
            counts[k] = relays[k].dispatcher.relay.publish_due()  # type: ignore[attr-defined]

        threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        published = drain_ids(broker, env["CW_QUEUE"])
        print(f"two relays: {counts[0]} + {counts[1]} published")
        assert sorted(published) == sorted(ids), "every delivery published exactly once"
        assert sum(counts) == len(ids) and min(counts) > 0, counts
        assert _outbox(relays[0]) == []
    finally:
        for relay_app in relays:
            relay_app.close()
        delete_queues(broker, env["CW_QUEUE"], env["CW_RELAY_QUEUE"])
