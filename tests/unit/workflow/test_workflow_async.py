"""``track_async`` records a signal in the caller's AsyncSession and routes it after the commit."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from journeys import Paid
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from chimeway import Chimeway
from chimeway.aio import create_async_engine
from chimeway.models import signals_table
from chimeway.testing import FakeClock, RecordingChannel

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def engine(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(sqlite_url.replace("sqlite:", "sqlite+aiosqlite:", 1))
    yield engine
    await engine.dispose()


async def test_track_async_routes_after_commit_and_a_rollback_leaves_nothing(engine: AsyncEngine) -> None:
    with Chimeway.from_async_engine(engine, clock=FakeClock(), channels={"email": RecordingChannel()}) as app:
        async with AsyncSession(engine) as session, session.begin():
            result = await app.trigger_async(session, Paid, {}, idempotency_key="async-paid")
        nid = result.notification_ids[0]
        async with AsyncSession(engine) as session:
            await session.begin()
            await app.track_async(session, "order.paid", actor="user:1")
            await session.rollback()
        with app.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(signals_table)).scalar_one() == 0
        async with AsyncSession(engine) as session, session.begin():
            signal_id = await app.track_async(session, "order.paid", actor="user:1")
        run = app.explain_run(notification_id=nid)
        assert run.state == "stopped" and run.transitions[1].context["signal_id"] == str(signal_id)
