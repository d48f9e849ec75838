"""Workflow unit fixtures: an app on a fresh SQLite file with a fake clock and recording channels."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))

from journeys import Harness

from chimeway import Chimeway
from chimeway.testing import FakeClock, RecordingChannel


@pytest.fixture
def make_app(sqlite_engine: sa.Engine) -> Iterator[Callable[..., Harness]]:
    apps: list[Chimeway] = []

    def make(dispatcher: str = "sync", max_attempts: int = 5, **channels: RecordingChannel) -> Harness:
        clock = FakeClock()
        chans = {"email": RecordingChannel(), "sms": RecordingChannel(), "push": RecordingChannel(), **channels}
        app = Chimeway(engine=sqlite_engine, clock=clock, dispatcher=dispatcher, channels=chans,
                       max_attempts=max_attempts)
        apps.append(app)
        return Harness(app=app, clock=clock, email=chans["email"], sms=chans["sms"], push=chans["push"])

    yield make
    for app in apps:
        app.close()


@pytest.fixture(params=["sync", "queue"])
def h(request: pytest.FixtureRequest, make_app: Callable[..., Harness]) -> Harness:
    """An app with each dispatcher in turn."""
    return make_app(str(request.param))
