"""Deliveries left behind by a process killed with SIGKILL are re-driven by recover()."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session
from support import OnlyRec

from chimeway import Chimeway, DeliveryResult
from chimeway.db import create_engine
from chimeway.models import deliveries_table
from chimeway.testing import FakeClock, RecordingChannel

SCRIPT = Path(__file__).with_name("crash_app.py")


def _run_until_killed(url: str, mode: str, marker: Path, lease: float = 60.0) -> None:
    env = {**os.environ, "LEASE": str(lease)}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), url, mode, str(marker)], env=env)
    if mode == "mid_send":
        deadline = time.monotonic() + 60
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the child never reached the channel"
        proc.kill()
    proc.wait(timeout=60)
    assert proc.returncode == -9


def _statuses(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(deliveries_table.c.status)).scalars())


def _lease(engine: sa.Engine) -> tuple[str, datetime]:
    with engine.connect() as conn:
        row = conn.execute(sa.select(deliveries_table.c.lease_holder, deliveries_table.c.lease_expires_at)).one()
    return row.lease_holder, row.lease_expires_at


def _left_in_flight_until_the_lease_runs_out(app: Chimeway, engine: sa.Engine) -> str:
    """The killed child's delivery is dispatched under its lease, and stays so while that lives; its holder."""
    assert _statuses(engine) == ["dispatched"]
    holder, expires = _lease(engine)
    assert holder and str(os.getpid()) not in holder.split(":")[1]
    if app.clock.now() < expires:
        # However old the row, a live lease means its holder may still be sending.
        assert app.recover(older_than=timedelta(0)) == 0
        assert _statuses(engine) == ["dispatched"]
        while app.clock.now() < expires:
            time.sleep(0.1)
    return holder


def test_recover_redrives_a_pending_delivery_its_process_never_sent(any_url: str, any_engine: sa.Engine,
                                                                    tmp_path: Path) -> None:
    # Planned inside a savepoint, the delivery is claimed only after the
    # commit; killed before that, it stays pending.
    _run_until_killed(any_url, "after_commit_in_savepoint", tmp_path / "marker")
    assert _statuses(any_engine) == ["pending"]
    rec = RecordingChannel()
    app = Chimeway(engine=any_engine, channels={"rec": rec})
    # Young rows are left alone: their own process may still be delivering them.
    assert app.recover(older_than=timedelta(minutes=5)) == 0
    assert _statuses(any_engine) == ["pending"]
    assert app.recover(older_than=timedelta(0)) == 1
    assert _statuses(any_engine) == ["succeeded"]
    assert len(rec.sent) == 1
    events = [t.event for t in app.explain(rec.sent[0].delivery_id).timeline]
    assert events[-2:] == ["attempt", "succeeded"]
    assert app.recover(older_than=timedelta(0)) == 0


def test_a_delivery_claimed_in_the_trigger_and_killed_before_its_send_is_sent_once_its_lease_runs_out(
        any_url: str, any_engine: sa.Engine, tmp_path: Path) -> None:
    # The sync dispatcher claims in the trigger's own transaction: a process
    # killed right after the commit leaves the delivery dispatched under a
    # lease nobody extends, never lost.
    _run_until_killed(any_url, "after_commit", tmp_path / "marker", lease=2.0)
    rec = RecordingChannel()
    app = Chimeway(engine=any_engine, channels={"rec": rec})
    _left_in_flight_until_the_lease_runs_out(app, any_engine)
    assert rec.sent == []
    assert app.recover(older_than=timedelta(0)) == 1
    assert _statuses(any_engine) == ["succeeded"] and len(rec.sent) == 1
    events = [t.event for t in app.explain(rec.sent[0].delivery_id).timeline]
    assert events[-3:] == ["lease_expired", "attempt", "succeeded"]
    assert app.recover(older_than=timedelta(0)) == 0


def test_recover_resends_once_the_killed_holders_lease_runs_out(any_url: str, any_engine: sa.Engine,
                                                                tmp_path: Path) -> None:
    _run_until_killed(any_url, "mid_send", tmp_path / "marker", lease=2.0)
    rec = RecordingChannel()
    app = Chimeway(engine=any_engine, channels={"rec": rec})
    holder = _left_in_flight_until_the_lease_runs_out(app, any_engine)
    assert app.recover(older_than=timedelta(0)) == 1
    assert _statuses(any_engine) == ["succeeded"]
    assert len(rec.sent) == 1
    explanation = app.explain(rec.sent[0].delivery_id)
    events = [t.event for t in explanation.timeline]
    assert events[-3:] == ["lease_expired", "attempt", "succeeded"] and explanation.attempts == 2
    expired = next(t for t in explanation.timeline if t.event == "lease_expired")
    assert expired.detail["holder"] == holder
    assert expired.detail["summary"].startswith(f"re-sent: lease of {holder} expired at")
    assert app.recover(older_than=timedelta(0)) == 0


def test_recover_retries_failed_deliveries_when_due_then_gives_up(sqlite_engine: sa.Engine) -> None:
    clock = FakeClock()
    rec = RecordingChannel(lambda m: DeliveryResult.temporary("HTTP 503", error_class="http_503"))
    app = Chimeway(engine=sqlite_engine, channels={"rec": rec}, clock=clock, max_attempts=3)
    with Session(app.engine) as session, session.begin():
        delivery_id = app.trigger(session, OnlyRec, {"n": 1}, idempotency_key="retry").delivery_ids[0]
    assert app.explain(delivery_id).status == "failed"
    assert app.recover(older_than=timedelta(0)) == 0  # not due yet (backoff)
    clock.advance(minutes=1)
    assert app.recover(older_than=timedelta(0)) == 1
    clock.advance(hours=1)
    assert app.recover(older_than=timedelta(0)) == 1
    explanation = app.explain(delivery_id)
    assert explanation.status == "cancelled"
    assert explanation.reason == "retries_exhausted: HTTP 503"
    assert len(rec.calls) == 3
    clock.advance(hours=5)
    assert app.recover(older_than=timedelta(0)) == 0


RECOVER_APP = '''
import os
from chimeway import Chimeway, Notifier, Recipient
from chimeway.testing import RecordingChannel

# This process has no "webhook" channel: it must leave such deliveries alone.
app = Chimeway(os.environ["NOTIFY_DB"], channels={"rec": RecordingChannel()})
'''


def test_the_recover_command_refuses_without_an_app_and_never_cancels_what_it_cannot_send(
        sqlite_url: str, tmp_path: Path) -> None:
    from chimeway.channels import Webhook

    class Hook(OnlyRec):
        key = "test_recover_cli_hook"
        channels = ["webhook"]
        templates = {"webhook": {"body": "n={{ n }}"}}

    # A queue-dispatcher app plans a webhook delivery; no worker ever runs it.
    planner = Chimeway(sqlite_url, dispatcher="queue",
                       channels={"webhook": Webhook(url="http://127.0.0.1:9/x", secret="s")})
    with Session(planner.engine) as session, session.begin():
        delivery_id = planner.trigger(session, Hook, {"n": 1}, idempotency_key="cli").delivery_ids[0]
    planner.close()
    env = {**os.environ, "NOTIFY_DB": sqlite_url, "PYTHONPATH": str(tmp_path)}
    cli = [sys.executable, "-m", "chimeway.cli", "recover", "--older-than", "0"]

    bare = subprocess.run([*cli, "--database-url", sqlite_url], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert bare.returncode == 2
    assert bare.stderr.strip().startswith("chimeway: error: chimeway recover needs --app")
    assert "Traceback" not in bare.stderr

    (tmp_path / "recover_app.py").write_text(RECOVER_APP)
    done = subprocess.run([*cli, "--app", "recover_app:app"], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "re-drove 0 deliveries" in done.stdout
    assert "left 1 alone on channel 'webhook': this app does not configure it" in done.stdout
    with create_engine(sqlite_url).connect() as conn:
        status = conn.execute(sa.select(deliveries_table.c.status)
                              .where(deliveries_table.c.id == delivery_id)).scalar_one()
    assert status == "pending"
