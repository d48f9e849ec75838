"""Scheduling unit fixtures: an app on a fresh SQLite file driven by a FakeClock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sched_support import AppBase

from chimeway import Chimeway
from chimeway.cron import workflow_sweep_schedule
from chimeway.testing import FakeClock, RecordingChannel

SWEEP = workflow_sweep_schedule().name


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 1, 5, 9, 0, tzinfo=UTC))


@pytest.fixture
def rec() -> RecordingChannel:
    return RecordingChannel()


@pytest.fixture
def app(sqlite_url: str, clock: FakeClock, rec: RecordingChannel) -> Iterator[Chimeway]:
    with Chimeway(sqlite_url, clock=clock, channels={"rec": rec}) as chimeway:
        AppBase.metadata.create_all(chimeway.engine)
        # Tests count ticks exactly; the built-in workflow sweep has its own test.
        chimeway.scheduler.remove(SWEEP)
        yield chimeway
