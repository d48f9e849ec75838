"""Policy fixtures: an app on each backend with a fake clock and a recording email channel."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from chimeway import Chimeway
from chimeway.channels.in_app import InApp
from chimeway.testing import FakeClock, RecordingChannel


@pytest.fixture
def clock() -> FakeClock:
    # 09:00 UTC is 10:00 in Paris: outside the usual quiet hours.
    return FakeClock(datetime(2026, 1, 1, 9, 0, tzinfo=UTC))


@pytest.fixture
def email() -> RecordingChannel:
    return RecordingChannel()


@pytest.fixture
def app(any_engine: sa.Engine, clock: FakeClock, email: RecordingChannel) -> Iterator[Chimeway]:
    app = Chimeway(engine=any_engine, clock=clock, channels={"email": email, "in_app": InApp()}, notify=False)
    yield app
    app.close()
