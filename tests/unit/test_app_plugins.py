"""The app's plugins: configured in one place, the delivery rescue alone on a fake clock."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from support import OnlyRec

from chimeway import Chimeway
from chimeway.errors import ConfigurationError
from chimeway.testing import FakeClock, RecordingChannel


class Nightly:
    name = "nightly_report"
    interval = timedelta(hours=24)

    def run(self, now: datetime) -> int:
        return 0


def test_the_app_configures_every_workers_plugins_in_one_place(sqlite_engine: sa.Engine) -> None:
    extra = Nightly()
    app = Chimeway(engine=sqlite_engine, lease_ttl=timedelta(seconds=40), plugins=[extra])
    assert [p.name for p in app.plugins] == ["lifeline", "pruner", "cron", "delivery_rescue", "nightly_report"]
    assert app.queue.plugins == app.plugins and app.plugins[-1] is extra
    assert app.rescue.interval == timedelta(seconds=10)  # lease_ttl / 4
    assert app.pruner.interval == timedelta(minutes=1)
    with pytest.raises(ConfigurationError, match="two plugins are named 'cron'"):
        Chimeway(engine=sqlite_engine, plugins=[type("Mine", (Nightly,), {"name": "cron"})()])


def test_the_delivery_rescue_plugin_alone_re_drives_what_a_crash_left(sqlite_engine: sa.Engine) -> None:
    clock = FakeClock()
    rec = RecordingChannel()
    app = Chimeway(engine=sqlite_engine, clock=clock, channels={"rec": rec}, lease_ttl=timedelta(seconds=30))
    with Session(app.engine) as session, session.begin():
        did = app.trigger(session, OnlyRec, {"n": 1}, idempotency_key="left").delivery_ids[0]
        session.info["chimeway.after_commit"].clear()  # killed right after the commit
    rescue = app.rescue
    assert rescue.name == "delivery_rescue"
    assert rescue.run(clock.now()) == 0
    clock.advance(seconds=31)
    assert rescue.run(clock.now()) == 1
    assert app.work() == 1
    assert [m.delivery_id for m in rec.sent] == [did]
