"""The async verbs on SQLite (aiosqlite): configuration, errors, the event loop stays free."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from chimeway import Chimeway, DeliveryResult, Message, Notifier, Recipient
from chimeway.aio import AsyncInbox, create_async_engine, sync_url
from chimeway.errors import ConfigurationError, InvalidInputError, NotFoundError
from chimeway.models import events_table
from chimeway.testing import RecordingChannel

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class UnitPing(Notifier):
    key = "async_unit_ping"
    channels = ["in_app", "slow"]
    templates = {"in_app": {"title": "Ping {{ n }}"}, "slow": {"body": "ping {{ n }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"user:{params['user']}")]


def _slow(message: Message) -> DeliveryResult:
    time.sleep(0.5)
    return DeliveryResult.ok()


@pytest.fixture
def slow() -> RecordingChannel:
    return RecordingChannel(_slow)


@pytest.fixture
def async_sqlite_url(sqlite_url: str) -> str:
    return sqlite_url.replace("sqlite:", "sqlite+aiosqlite:", 1)


@pytest.fixture
async def engine(async_sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(async_sqlite_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def app(engine: AsyncEngine, slow: RecordingChannel) -> AsyncIterator[Chimeway]:
    with Chimeway.from_async_engine(engine, channels={"slow": slow}) as app:
        yield app


# -- engines ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite+aiosqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("postgresql+psycopg://u:secret@h:5433/db", "postgresql+psycopg://u:secret@h:5433/db"),
        ("postgresql+psycopg_async://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+asyncpg://u:pw@h/db", "postgresql+psycopg://u:pw@h/db"),
    ],
)
def test_sync_url_maps_async_drivers_to_chimeways_sync_driver(url: str, expected: str) -> None:
    assert sync_url(url) == expected


def test_sync_url_of_an_engine_keeps_the_password() -> None:
    engine = create_async_engine("postgresql+psycopg://u:secret@h/db")
    assert sync_url(engine) == "postgresql+psycopg://u:secret@h/db"


def test_sync_url_refuses_in_memory_sqlite_and_unknown_drivers() -> None:
    with pytest.raises(ConfigurationError, match="in-memory"):
        sync_url("sqlite+aiosqlite://")
    with pytest.raises(ConfigurationError, match="mysql\\+aiomysql"):
        sync_url("mysql+aiomysql://u@h/db")


def test_create_async_engine_configures_sqlite_like_the_sync_engine(async_sqlite_url: str) -> None:
    async def pragmas() -> tuple[str, int]:
        engine = create_async_engine(async_sqlite_url)
        try:
            async with engine.connect() as conn:
                mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one()
                fks = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one()
        finally:
            await engine.dispose()
        return str(mode), int(fks)

    assert asyncio.run(pragmas()) == ("wal", 1)


async def test_a_sync_facade_of_an_async_engine_is_refused(engine: AsyncEngine) -> None:
    with Chimeway(engine=engine.sync_engine) as app:
        async with AsyncSession(engine) as session, session.begin():
            with pytest.raises(ConfigurationError, match="from_async_engine"):
                await app.trigger_async(session, UnitPing, {"user": 1, "n": 1}, idempotency_key="k")


async def test_a_sync_session_is_refused_by_the_async_verbs(app: Chimeway, async_sqlite_url: str) -> None:
    with Session(app.engine) as session:
        with pytest.raises(ConfigurationError, match="AsyncSession or AsyncConnection"):
            await app.trigger_async(session, UnitPing, {"user": 1, "n": 1}, idempotency_key="k")
        with pytest.raises(ConfigurationError, match="AsyncSession or AsyncConnection"):
            app.inbox_async("user:1", session=session)


async def test_bad_input_fails_before_anything_is_written(app: Chimeway, engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session, session.begin():
        with pytest.raises(InvalidInputError):
            await app.trigger_async(session, UnitPing, {"user": 1, "n": 1}, idempotency_key=" ")
    with app.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events_table)).scalar_one() == 0
    with pytest.raises(InvalidInputError):
        app.inbox_async("")


# -- the event loop stays free --------------------------------------------------


async def test_a_slow_channel_after_commit_does_not_block_the_event_loop(
    app: Chimeway, engine: AsyncEngine, slow: RecordingChannel
) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    async with AsyncSession(engine) as session:
        await app.trigger_async(session, UnitPing, {"user": 1, "n": 1}, idempotency_key="slow")
        before = ticks
        await session.commit()
        # The commit waited for the slow send; the ticker ran meanwhile.
        ticks_during_commit = ticks - before
    stop.set()
    await ticker
    assert len(slow.sent) == 1
    assert ticks_during_commit > 0


async def test_cancelling_a_request_during_delivery_keeps_the_commit_and_the_delivery(
    app: Chimeway, engine: AsyncEngine, slow: RecordingChannel
) -> None:
    committing = asyncio.Event()

    async def request() -> None:
        async with AsyncSession(engine) as session:
            await app.trigger_async(session, UnitPing, {"user": 1, "n": 1}, idempotency_key="cancel")
            committing.set()
            await session.commit()

    task = asyncio.create_task(request())
    await committing.wait()
    await asyncio.sleep(0.2)  # inside the slow send
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if slow.sent:
            break
        await asyncio.sleep(0.05)
    assert len(slow.sent) == 1
    with app.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events_table)).scalar_one() == 1


# -- inbox, explain, trace without a session ------------------------------------


async def test_inbox_without_a_session_runs_in_chimeways_own_transactions(
    app: Chimeway, engine: AsyncEngine
) -> None:
    async with AsyncSession(engine) as session, session.begin():
        result = await app.trigger_async(session, UnitPing, {"user": 7, "n": 3}, idempotency_key="i")
    inbox = app.inbox_async("user:7")
    assert isinstance(inbox, AsyncInbox)
    page = await inbox.list()
    assert [item.title for item in page.items] == ["Ping 3"]
    assert (await inbox.get(result.notification_ids[0])).title == "Ping 3"
    assert await inbox.mark_read(result.notification_ids[0]) is True
    assert await inbox.unread_count() == 0
    with pytest.raises(NotFoundError):
        await app.inbox_async("user:8").mark_read(result.notification_ids[0])

    explanation = await app.explain_async(result.delivery_ids[0])
    assert explanation.status == "succeeded"
    trace = await app.trace_async(result.event_id)
    assert trace == await asyncio.to_thread(app.trace, result.event_id)


# -- the worker -------------------------------------------------------------------


async def test_run_worker_delivers_and_stops_when_its_task_is_cancelled(
    async_sqlite_url: str, engine: AsyncEngine
) -> None:
    channel = RecordingChannel()
    with Chimeway.from_async_engine(engine, dispatcher="queue", channels={"slow": channel}) as app:
        async with AsyncSession(engine) as session, session.begin():
            result = await app.trigger_async(session, UnitPing, {"user": 1, "n": 1}, idempotency_key="w")
        assert channel.sent == []
        worker = asyncio.create_task(app.run_worker(poll_interval=0.05, shutdown_grace=2.0))
        for _ in range(200):
            statuses = {(await app.explain_async(d)).status for d in result.delivery_ids}
            if statuses == {"succeeded"}:
                break
            await asyncio.sleep(0.05)
        assert statuses == {"succeeded"}
        assert len(channel.sent) == 1
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
        assert not [t for t in threading.enumerate() if t.name == "chimeway-worker"]


async def test_run_worker_owns_its_stop_event(app: Chimeway) -> None:
    with pytest.raises(ConfigurationError, match="stop_event"):
        await app.run_worker(stop_event=threading.Event())


def test_from_async_engine_accepts_an_async_url(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    with Chimeway.from_async_engine(url) as app:
        assert app.engine.url.drivername == "sqlite"
        assert app.engine.url.database == str(tmp_path / "x.db")
        assert not app.engine.dialect.is_async
