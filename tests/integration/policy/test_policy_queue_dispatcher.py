"""The policy through the queue dispatcher: jobs run at ``not_before``, checkpoints re-check."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from policy_support import Activity, Comment, delivery, fire

from chimeway import Chimeway
from chimeway.channels.in_app import InApp
from chimeway.testing import FakeClock, RecordingChannel


@pytest.fixture
def queued(any_engine: sa.Engine, clock: FakeClock, email: RecordingChannel) -> Iterator[Chimeway]:
    app = Chimeway(engine=any_engine, clock=clock, channels={"email": email, "in_app": InApp()},
                   dispatcher="queue", notify=False)
    yield app
    app.close()


def test_quiet_hours_job_waits_for_window_end(queued: Chimeway, clock: FakeClock, email: RecordingChannel) -> None:
    queued.recipient_settings("user:1").set(timezone="Europe/Paris", quiet_hours=("22:00", "07:00"))
    clock.set(datetime(2026, 2, 28, 22, 30, tzinfo=UTC))
    result = fire(queued, Comment, {"post": "p", "text": "t"})
    queued.work(until_empty=True)
    assert delivery(queued, result, "in_app").status == "succeeded"
    assert email.sent == []
    clock.set(datetime(2026, 3, 1, 6, 0, tzinfo=UTC))
    queued.work(until_empty=True)
    assert [m.delivery_id for m in email.sent] == [delivery(queued, result, "email").id]


def test_digest_carrier_job_renders_then_sends(queued: Chimeway, clock: FakeClock, email: RecordingChannel) -> None:
    fire(queued, Activity, {"project": "x", "who": "ann"})
    fire(queued, Activity, {"project": "x", "who": "bob"})
    queued.work(until_empty=True)
    assert email.sent == []
    clock.advance(hours=1)
    queued.work(until_empty=True)  # the carrier's job: renders the digest, snoozes a second
    clock.advance(seconds=1)
    queued.work(until_empty=True)
    [sent] = email.sent
    assert sent.fields["subject"] == "2 new comments"
    assert queued.flush_digests() == 0


def test_flush_digests_enqueues_the_carrier(queued: Chimeway, clock: FakeClock, email: RecordingChannel) -> None:
    fire(queued, Activity, {"project": "x", "who": "ann"})
    clock.advance(hours=1, seconds=-1)
    queued.work(until_empty=True)
    clock.advance(seconds=1)
    assert queued.flush_digests() == 1
    queued.work(until_empty=True)
    assert [m.fields["subject"] for m in email.sent] == ["1 new comments"]
