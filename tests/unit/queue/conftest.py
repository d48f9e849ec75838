"""Queue unit fixtures: a SQLite database, a hand-driven clock and a JobQueue on both."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from chimeway.queue import JobQueue


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self) -> None:
        self.current = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def advance(self, **kwargs: float) -> None:
        self.current += timedelta(**kwargs)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def q(sqlite_engine: sa.Engine, clock: ManualClock) -> Iterator[JobQueue]:
    # A linear backoff keeps schedules exact; the default's jitter is tested on its own.
    yield JobQueue(sqlite_engine, clock=clock, backoff=lambda attempt: 10.0 * attempt)
