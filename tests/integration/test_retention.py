"""Retention: every kind of row goes after its age, unfinished work never, in batches, beside triggers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from support import count_rows

from chimeway import Chimeway, DeliveryResult, Notifier, Recipient, Retention
from chimeway.db import create_engine
from chimeway.errors import ConfigurationError, NotFoundError
from chimeway.models import (
    cap_usage_table,
    cron_ticks_table,
    dedupe_marks_table,
    digest_items_table,
    digests_table,
    provider_events_table,
    signals_table,
    workflow_runs_table,
)
from chimeway.planning import TriggerRequest
from chimeway.retention import event_target
from chimeway.testing import FakeClock, RecordingChannel
from chimeway.workflow import deliver, wait


class Kept(Notifier):
    key = "retention_note"
    channels = ["rec", "in_app"]
    templates = {"rec": {"body": "n={{ n }}"}, "in_app": {"title": "t", "body": "n={{ n }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=str(params.get("user", "user:1")))]


class Stuck(Notifier):
    key = "retention_stuck"
    channels = ["flaky"]
    templates = {"flaky": {"body": "n={{ n }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id="user:2")]


class Waits(Notifier):
    key = "retention_waits"
    templates = {"rec": {"body": "step"}}
    workflow = [deliver("rec"), wait(days=200, unless="done"), deliver("rec")]

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id="user:3")]


def _flaky(message: Any) -> DeliveryResult:
    return DeliveryResult.temporary("try later")


@pytest.fixture
def make(any_url: str) -> Iterator[Callable[..., tuple[Chimeway, FakeClock]]]:
    apps: list[Chimeway] = []

    def build(**ages: Any) -> tuple[Chimeway, FakeClock]:
        clock = FakeClock()
        app = Chimeway(any_url, clock=clock, retention=Retention(**ages),
                       channels={"rec": RecordingChannel(), "flaky": RecordingChannel(_flaky)})
        apps.append(app)
        return app, clock

    yield build
    for app in apps:
        app.close()


def _trigger(app: Chimeway, notifier: type[Notifier], key: str, **params: Any) -> Any:
    with Session(app.engine) as session, session.begin():
        return app.trigger(session, notifier, params, idempotency_key=key)


def _bookkeeping(app: Chimeway, now: datetime) -> None:
    """One row of each kind the ages of signals, provider reports, policy and ticks apply to."""
    with app.engine.begin() as conn:
        conn.execute(sa.insert(signals_table), [
            {"id": uuid.uuid4(), "tenant": "", "actor": "user:9", "name": "unrouted", "payload": {},
             "created_at": now, "routed_at": None, "matched": 0},
        ])
        conn.execute(sa.insert(provider_events_table), [
            {"id": uuid.uuid4(), "channel": "rec", "provider_event_id": "pe-1", "delivery_id": None,
             "status": "delivered", "received_at": now},
        ])
        conn.execute(sa.insert(cap_usage_table), [
            {"id": uuid.uuid4(), "tenant": "", "recipient_id": "user:1", "channel": "rec",
             "notifier_key": Kept.key, "delivery_id": uuid.uuid4(), "at": now},
        ])
        conn.execute(sa.insert(dedupe_marks_table), [
            {"tenant": "", "notifier_key": Kept.key, "recipient_id": "user:1", "dedupe_key": "k",
             "event_id": uuid.uuid4(), "at": now, "expires_at": now + timedelta(hours=1)},
        ])
        digest = uuid.uuid4()
        conn.execute(sa.insert(digests_table), [
            {"id": digest, "tenant": "", "notifier_key": Kept.key, "recipient_id": "user:1", "channel": "rec",
             "digest_key": "d", "status": "flushed", "delivery_id": uuid.uuid4(), "item_count": 1,
             "opened_at": now, "flush_at": now, "flushed_at": now},
            {"id": uuid.uuid4(), "tenant": "", "notifier_key": Kept.key, "recipient_id": "user:1", "channel": "rec",
             "digest_key": "d", "status": "open", "delivery_id": uuid.uuid4(), "item_count": 0,
             "opened_at": now, "flush_at": now + timedelta(days=400), "flushed_at": None},
        ])
        conn.execute(sa.insert(digest_items_table), [
            {"id": uuid.uuid4(), "digest_id": digest, "event_id": uuid.uuid4(), "notification_id": uuid.uuid4(),
             "delivery_id": uuid.uuid4(), "params": {}, "at": now},
        ])
        conn.execute(sa.insert(cron_ticks_table), [
            {"name": "nightly", "tick_at": now - timedelta(days=1), "inserted_at": now},
            {"name": "nightly", "tick_at": now, "inserted_at": now},
        ])


def _runs(app: Chimeway) -> list[Any]:
    with app.engine.connect() as conn:
        return list(conn.execute(sa.select(workflow_runs_table.c.state, workflow_runs_table.c.finished_at)))


def test_every_kind_of_row_goes_after_its_age_and_unfinished_work_never(make: Any) -> None:
    app, clock = make()
    done = _trigger(app, Kept, "done", n=1)
    stuck = _trigger(app, Stuck, "stuck", n=2)
    waiting = _trigger(app, Waits, "waits")
    with Session(app.engine) as session, session.begin():
        app.track(session, "elsewhere", actor="user:1")  # routed at once (nobody waits for it)
    _bookkeeping(app, clock.now())
    did = app.trace(done.event_id).deliveries[0].delivery_id
    assert app.explain(did).status == "succeeded"
    assert [d.status for d in app.trace(stuck.event_id).deliveries] == ["failed"]
    assert [r.state for r in _runs(app)] == ["waiting"]
    before = count_rows(app.engine)

    # Nothing is past its age yet (dedupe marks go once expired).
    clock.advance(minutes=61)
    assert app.prune() == {"chimeway_jobs": 0, "chimeway_events": 0, "chimeway_workflow_runs": 0,
                           "chimeway_signals": 0, "chimeway_provider_events": 0, "chimeway_cap_usage": 0,
                           "chimeway_dedupe_marks": 1, "chimeway_digests": 0, "chimeway_cron_ticks": 0}

    # Policy bookkeeping after 2 days, ticks after 7 (the schedule's latest stays),
    # routed signals and provider reports after 30; events not yet.
    clock.advance(days=31)
    deleted = {t: n for t, n in app.prune().items() if n}
    assert deleted == {"chimeway_cap_usage": 1, "chimeway_digests": 1, "chimeway_digest_items": 1,
                       "chimeway_cron_ticks": 1, "chimeway_signals": 1, "chimeway_provider_events": 1}
    rows = count_rows(app.engine)
    assert rows["chimeway_signals"] == 1          # the unrouted one
    assert rows["chimeway_digests"] == 1          # the open one
    assert rows["chimeway_cron_ticks"] == 1       # the schedule's latest
    assert rows["chimeway_events"] == before["chimeway_events"] == 3

    # After 90 days only the event whose deliveries are final and whose runs are
    # finished goes, with everything that hangs off it.
    clock.advance(days=60)
    deleted = {t: n for t, n in app.prune().items() if n}
    assert (deleted["chimeway_events"], deleted["chimeway_notifications"], deleted["chimeway_deliveries"]) == (1, 1, 2)
    assert deleted["chimeway_attempts"] >= 1
    assert set(deleted) <= {"chimeway_events", "chimeway_notifications", "chimeway_deliveries", "chimeway_attempts",
                            "chimeway_delivery_decisions"}
    with pytest.raises(NotFoundError):
        app.explain(did)
    with pytest.raises(NotFoundError):
        app.trace(done.event_id)
    assert [d.status for d in app.trace(stuck.event_id).deliveries] == ["failed"]
    assert app.trace(waiting.event_id).event_id == waiting.event_id
    # The key can be used again: a new event, not a duplicate.
    again = _trigger(app, Kept, "done", n=1)
    assert not again.duplicate and again.event_id != done.event_id

    # Once its run finishes, the old event goes with the run and its transitions.
    with Session(app.engine) as session, session.begin():
        app.track(session, "done", actor="user:3")
    [(state, finished_at)] = _runs(app)
    assert finished_at is not None, state
    deleted = {t: n for t, n in app.prune().items() if n}
    assert deleted["chimeway_events"] == 1 and deleted["chimeway_workflow_runs"] == 1
    assert deleted["chimeway_workflow_transitions"] >= 2
    assert count_rows(app.engine)["chimeway_workflow_runs"] == 0
    with pytest.raises(NotFoundError):
        app.trace(waiting.event_id)


def test_finished_runs_go_after_their_own_age_and_none_keeps_a_kind_forever(make: Any) -> None:
    app, clock = make(events=None, workflow_runs=timedelta(days=1), signals=None)
    _trigger(app, Waits, "w1")
    with Session(app.engine) as session, session.begin():
        app.track(session, "done", actor="user:3")
    clock.advance(hours=23)
    assert app.prune()["chimeway_workflow_runs"] == 0
    clock.advance(hours=2)
    deleted = app.prune()
    assert deleted["chimeway_workflow_runs"] == 1 and deleted["chimeway_workflow_transitions"] >= 2
    clock.advance(days=3650)
    app.prune()
    rows = count_rows(app.engine)
    assert (rows["chimeway_events"], rows["chimeway_deliveries"], rows["chimeway_signals"]) == (1, 1, 1)
    assert "events" not in [t.name for t in app.pruner.targets]


def test_one_pass_removes_everything_past_its_age_however_many_batches(make: Any) -> None:
    app, clock = make(batch_size=4)
    for round_ in range(2):
        with Session(app.engine) as session, session.begin():
            app.trigger_many(session, Kept, [
                TriggerRequest(params={"n": i, "user": f"user:{i}"}, idempotency_key=f"k{round_}-{i}")
                for i in range(23)
            ])
    clock.advance(days=91)
    _trigger(app, Kept, "young", n=0)
    # app.prune(): one pass, no time limit.
    first = app.prune()
    assert (first["chimeway_events"], first["chimeway_notifications"], first["chimeway_deliveries"]) == (46, 46, 92)
    rows = count_rows(app.engine)
    assert (rows["chimeway_events"], rows["chimeway_deliveries"]) == (1, 2)
    # A worker's pass (bounded by Retention.time_limit) does the same.
    for i in range(23):
        _trigger(app, Kept, f"later-{i}", n=i)
    clock.advance(days=91)
    assert app.pruner.run(clock.now()) >= 24 * 4
    assert count_rows(app.engine)["chimeway_events"] == 0


@pytest.mark.postgres
def test_a_prune_batch_in_progress_blocks_neither_a_trigger_nor_another_worker(pg_url: str) -> None:
    clock = FakeClock()
    apps = [Chimeway(engine=create_engine(pg_url), clock=clock, channels={"rec": RecordingChannel()})
            for _ in range(2)]
    app, other = apps
    try:
        for i in range(6):
            _trigger(app, Kept, f"old-{i}", n=i, user=f"user:{i}")
        clock.advance(days=91)
        target = event_target(timedelta(days=90))
        with app.pruner.engine.begin() as conn:
            batch = target.prune_batch(conn, clock.now(), 3, None)
            assert batch.deleted["chimeway_events"] == 3
            # The batch's transaction is open and holds its rows. Meanwhile, in
            # other threads: a trigger commits, and another worker's pass prunes
            # the rest (skipping the locked rows) — neither waits for this one.
            results: dict[str, Any] = {}

            def trigger() -> None:
                results["trigger"] = _trigger(other, Kept, "new", n=99, user="user:0")

            def prune() -> None:
                results["prune"] = other.prune()

            for work in (trigger, prune):
                thread = threading.Thread(target=work)
                thread.start()
                thread.join(60)
                assert not thread.is_alive(), f"{work.__name__} waited for the open prune batch"
        assert not results["trigger"].duplicate
        assert results["prune"]["chimeway_events"] == 3
        assert count_rows(app.engine)["chimeway_events"] == 1
    finally:
        for a in apps:
            a.close()


@pytest.mark.parametrize(("ages", "field"), [
    ({"events": timedelta(days=-1)}, "Retention.events"),
    ({"signals": 30}, "Retention.signals"),
    ({"completed_jobs": "1d"}, "Retention.completed_jobs"),
    ({"policy": timedelta(0)}, "Retention.policy"),
    ({"interval": timedelta(0)}, "Retention.interval"),
    ({"time_limit": None}, "Retention.time_limit"),
    ({"batch_size": 0}, "Retention.batch_size"),
])
def test_a_bad_retention_value_is_refused_naming_its_field(ages: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field.replace(".", r"\.")):
        Retention(**ages)


def test_the_app_refuses_what_is_not_a_retention(sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"retention must be a chimeway\.Retention"):
        Chimeway(sqlite_url, retention={"events": timedelta(days=1)})  # type: ignore[arg-type]


APP = textwrap.dedent('''
    import os
    from chimeway import Chimeway, Retention
    from chimeway.testing import RecordingChannel

    app = Chimeway(os.environ["NOTIFY_DB"], channels={"rec": RecordingChannel()},
                   retention=Retention(batch_size=7))
''')


def test_the_prune_command_deletes_what_is_past_its_age_and_says_how_much(any_url: str, tmp_path: Path) -> None:
    (tmp_path / "retention_cli_app.py").write_text(APP)
    old = FakeClock(datetime(2020, 1, 1, tzinfo=UTC))
    app = Chimeway(any_url, clock=old, channels={"rec": RecordingChannel()})
    try:
        with Session(app.engine) as session, session.begin():
            app.trigger_many(session, Kept, [TriggerRequest(params={"n": i}, idempotency_key=f"c{i}")
                                             for i in range(30)])
    finally:
        app.close()
    env = {**os.environ, "NOTIFY_DB": any_url}
    cli = [sys.executable, "-m", "chimeway.cli", "prune"]
    done = subprocess.run([*cli, "--app", "retention_cli_app:app"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ["chimeway_events", "30"] in [line.split() for line in done.stdout.splitlines()], done.stdout
    assert "deleted " in done.stdout.splitlines()[-1]
    again = subprocess.run([*cli, "--database-url", any_url, "--json"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["total"] == 0
