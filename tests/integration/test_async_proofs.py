"""The foundation's behavioural proofs, through the async API.

Each runs on PostgreSQL with psycopg's and asyncpg's async modes and on
SQLite with aiosqlite: idempotency, rollback leaves nothing and sends
nothing, one event from many concurrent callers of one key, inbox
transitions in and out of the caller's transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from chimeway import Chimeway, DeliveryResult, Message, Notifier, Recipient
from chimeway.aio import create_async_engine
from chimeway.models import deliveries_table, events_table, notifications_table
from chimeway.testing import RecordingChannel

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ProofShipped(Notifier):
    key = "async_proof_shipped"
    channels = ["in_app", "hook"]
    templates = {
        "in_app": {"title": "Order {{ order_id }} shipped", "body": "to {{ user }}"},
        "hook": {"body": "order {{ order_id }}"},
    }

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"user:{u}") for u in params.get("users", [params.get("user")])]


@pytest.fixture(params=["psycopg", "asyncpg", "aiosqlite"])
def async_url(request: pytest.FixtureRequest) -> str:
    if request.param == "aiosqlite":
        return str(request.getfixturevalue("sqlite_url")).replace("sqlite:", "sqlite+aiosqlite:", 1)
    url = make_url(str(request.getfixturevalue("pg_url")))
    return url.set(drivername=f"postgresql+{request.param}").render_as_string(hide_password=False)


@pytest.fixture
async def engine(async_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(async_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def hook() -> RecordingChannel:
    return RecordingChannel()


@pytest.fixture
async def app(engine: AsyncEngine, hook: RecordingChannel) -> AsyncIterator[Chimeway]:
    with Chimeway.from_async_engine(engine, channels={"hook": hook}) as app:
        yield app


def _count(app: Chimeway, table: sa.Table) -> int:
    with app.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


async def test_commit_delivers_and_explains(app: Chimeway, engine: AsyncEngine, hook: RecordingChannel) -> None:
    async with AsyncSession(engine) as session, session.begin():
        result = await app.trigger_async(session, ProofShipped, {"order_id": 7, "user": 42},
                                         idempotency_key="order-7", tenant="acme")
        assert hook.sent == []  # nothing leaves before the commit
    assert not result.duplicate
    assert [m.fields["body"] for m in hook.sent] == ["order 7"]
    statuses = [(await app.explain_async(d)).status for d in result.delivery_ids]
    assert statuses == ["succeeded", "succeeded"]
    trace = await app.trace_async(result.event_id)
    assert trace == await asyncio.to_thread(app.trace, result.event_id)


async def test_same_key_twice_is_one_event(app: Chimeway, engine: AsyncEngine, hook: RecordingChannel) -> None:
    results = []
    for _ in range(2):
        async with AsyncSession(engine) as session, session.begin():
            results.append(await app.trigger_async(
                session, ProofShipped, {"order_id": 1, "user": 1}, idempotency_key="same", tenant="acme"
            ))
    assert [r.duplicate for r in results] == [False, True]
    assert results[0].event_id == results[1].event_id
    assert _count(app, events_table) == 1
    assert len(hook.sent) == 1


async def test_rollback_leaves_no_rows_and_sends_nothing(
    app: Chimeway, engine: AsyncEngine, hook: RecordingChannel
) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with AsyncSession(engine) as session, session.begin():
            await app.trigger_async(session, ProofShipped, {"order_id": 2, "user": 1}, idempotency_key="rb")
            raise Boom
    async with engine.connect() as conn:
        await app.trigger_async(conn, ProofShipped, {"order_id": 3, "user": 1}, idempotency_key="rb2")
        await conn.rollback()
    async with AsyncSession(engine) as session:
        await app.trigger_async(session, ProofShipped, {"order_id": 4, "user": 1}, idempotency_key="rb3")
        # Closing without commit rolls back too.
    await asyncio.sleep(0.05)
    for table in (events_table, notifications_table, deliveries_table):
        assert _count(app, table) == 0
    assert hook.calls == []
    assert (await app.inbox_async("user:1").list()).items == ()


async def test_async_connection_commit_delivers(app: Chimeway, engine: AsyncEngine, hook: RecordingChannel) -> None:
    async with engine.begin() as conn:
        result = await app.trigger_async(conn, ProofShipped, {"order_id": 5, "user": 9}, idempotency_key="conn")
    assert len(hook.sent) == 1
    assert (await app.explain_async(result.delivery_ids[0])).status == "succeeded"


async def test_ten_concurrent_sessions_on_one_key_make_one_event(
    app: Chimeway, engine: AsyncEngine, hook: RecordingChannel
) -> None:
    start = asyncio.Event()

    async def one() -> Any:
        async with AsyncSession(engine) as session, session.begin():
            await start.wait()
            return await app.trigger_async(
                session, ProofShipped, {"order_id": 9, "user": 3}, idempotency_key="race", tenant="acme"
            )

    tasks = [asyncio.create_task(one()) for _ in range(10)]
    await asyncio.sleep(0.05)
    start.set()
    results = await asyncio.gather(*tasks)
    assert sorted(r.duplicate for r in results) == [False] + [True] * 9
    assert len({r.event_id for r in results}) == 1
    assert _count(app, events_table) == 1
    assert _count(app, deliveries_table) == 2
    assert len(hook.sent) == 1


async def test_inbox_transitions(app: Chimeway, engine: AsyncEngine) -> None:
    ids = []
    for n in range(3):
        async with AsyncSession(engine) as session, session.begin():
            result = await app.trigger_async(session, ProofShipped, {"order_id": n, "user": 5},
                                             idempotency_key=f"inbox-{n}", tenant="acme")
            ids.append(result.notification_ids[0])
    inbox = app.inbox_async("user:5", "acme")
    assert await inbox.unread_count() == 3
    first = await inbox.list(limit=2)
    second = await inbox.list(limit=2, cursor=first.next_cursor)
    assert [i.id for i in first.items + second.items] == ids[::-1]
    assert second.next_cursor is None
    assert await app.inbox_async("user:5").unread_count() == 0  # another tenant

    assert await inbox.mark_seen(ids[0]) is True
    assert await inbox.mark_seen(ids[0]) is False
    assert await inbox.mark_read(ids[0]) is True
    assert await inbox.mark_read(ids[0]) is False
    item = await inbox.get(ids[0])
    assert item.seen_at is not None and item.read_at is not None
    assert await inbox.archive(ids[1]) is True
    assert [i.id for i in (await inbox.list()).items] == [ids[2], ids[0]]
    assert await inbox.unread_count() == 1
    # archived items are marked read too: "all" means every unread item
    assert await inbox.mark_all_read() == 2
    assert await inbox.unread_count() == 0


async def test_inbox_in_the_callers_transaction_follows_it(app: Chimeway, engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session, session.begin():
        result = await app.trigger_async(session, ProofShipped, {"order_id": 1, "user": 6},
                                         idempotency_key="tx-inbox")
    nid = result.notification_ids[0]

    async with AsyncSession(engine) as session, session.begin():
        assert await app.inbox_async("user:6", session=session).mark_read(nid) is True
        await session.rollback()
    assert await app.inbox_async("user:6").unread_count() == 1

    async with engine.connect() as conn, conn.begin():
        in_tx = app.inbox_async("user:6", session=conn)
        assert await in_tx.mark_read(nid) is True
        assert await in_tx.unread_count() == 0
    assert await app.inbox_async("user:6").unread_count() == 0


async def test_a_slow_channel_does_not_stall_other_requests(engine: AsyncEngine) -> None:
    def slow(message: Message) -> DeliveryResult:
        time.sleep(0.5)
        return DeliveryResult.ok()

    hook = RecordingChannel(slow)
    with Chimeway.from_async_engine(engine, channels={"hook": hook}) as app:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        async with AsyncSession(engine) as session:
            await app.trigger_async(session, ProofShipped, {"order_id": 1, "user": 1}, idempotency_key="slow")
            before = ticks
            await session.commit()
            during = ticks - before
        ticker.cancel()
        assert len(hook.sent) == 1
        assert during > 0


async def test_queue_dispatcher_with_an_async_worker(engine: AsyncEngine) -> None:
    hook = RecordingChannel()
    with Chimeway.from_async_engine(engine, dispatcher="queue", channels={"hook": hook}) as app:
        async with AsyncSession(engine) as session, session.begin():
            result = await app.trigger_async(session, ProofShipped, {"order_id": 1, "user": 1},
                                             idempotency_key="queued")
        worker = asyncio.create_task(app.run_worker(poll_interval=0.05, shutdown_grace=2.0))
        statuses: set[str] = set()
        for _ in range(200):
            statuses = {(await app.explain_async(d)).status for d in result.delivery_ids}
            if statuses == {"succeeded"}:
                break
            await asyncio.sleep(0.05)
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
        assert statuses == {"succeeded"}
        assert len(hook.sent) == 1


async def test_track_async_follows_the_callers_transaction(app: Chimeway, engine: AsyncEngine) -> None:
    if not hasattr(app, "track_async"):
        pytest.skip("this Chimeway has no track()")
    from chimeway.models import metadata

    signals = metadata.tables["chimeway_signals"]
    async with AsyncSession(engine) as session:
        await app.track_async(session, "order.paid", actor="user:1", tenant="acme")
        await session.rollback()
    assert _count(app, signals) == 0
    async with engine.begin() as conn:
        signal_id = await app.track_async(conn, "order.paid", actor="user:1", tenant="acme")
    with app.engine.connect() as conn:
        assert conn.execute(sa.select(signals.c.name).where(signals.c.id == signal_id)).scalar_one() == "order.paid"
