"""What the delivery path asks of the database: no statement twice, durable claims, jobs that end with their delivery."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from chimeway import Chimeway, Notifier, Recipient
from chimeway.testing import RecordingChannel
from chimeway.workflow import deliver

pytestmark = pytest.mark.postgres


class Plain(Notifier):
    key = "path_plain"
    channels = ["in_app", "rec"]
    templates = {"in_app": {"title": "hi"}, "rec": {"body": "hi"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id="user:1")]


class OnlyRec(Notifier):
    key = "path_only_rec"
    channels = ["rec"]
    templates = {"rec": {"body": "hi"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id="user:3")]


class Flow(Notifier):
    key = "path_flow"
    templates = {"rec": {"body": "step one"}}
    workflow = [deliver("rec"), deliver("rec")]

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id="user:2")]


@contextmanager
def statements(engine: sa.Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)


def touching(seen: Sequence[str], table: str) -> list[str]:
    return [s for s in seen if table in s]


def test_sync_delivery_reads_preferences_once_and_looks_up_no_workflow(pg_engine: sa.Engine) -> None:
    rec = RecordingChannel()
    app = Chimeway(engine=pg_engine, channels={"rec": rec})
    with statements(pg_engine) as seen, Session(pg_engine) as session, session.begin():
        result = app.trigger(session, Plain, {}, idempotency_key="once")
    assert len(rec.sent) == 1
    assert sorted(app.explain(d).status for d in result.delivery_ids) == ["succeeded", "succeeded"]
    # The planning checkpoint read them in the transaction that just
    # committed; the send right after it does not read them again.
    assert len(touching(seen, "chimeway_preferences")) == 1
    assert len(touching(seen, "chimeway_recipient_settings")) == 1
    # Not a workflow's delivery: nothing to look up once it is final.
    assert touching(seen, "chimeway_workflow_deliveries") == []


def test_a_workflow_step_is_checked_before_its_send_and_advances_its_run(pg_engine: sa.Engine) -> None:
    rec = RecordingChannel()
    app = Chimeway(engine=pg_engine, channels={"rec": rec})
    with statements(pg_engine) as seen, Session(pg_engine) as session, session.begin():
        app.trigger(session, Flow, {}, idempotency_key="flow")
    # Both steps went out: the final outcome of the first advanced the run.
    assert [m.fields["body"] for m in rec.sent] == ["step one", "step one"]
    assert touching(seen, "chimeway_workflow_deliveries")
    # Workflow steps are planned without the planning checkpoint: each is
    # checked in its claim transaction, so preferences are read per step.
    assert len(touching(seen, "chimeway_preferences")) >= 2


def test_queue_deliveries_are_checked_again_before_send(pg_engine: sa.Engine) -> None:
    rec = RecordingChannel()
    app = Chimeway(engine=pg_engine, dispatcher="queue", channels={"rec": rec})
    with Session(pg_engine) as session, session.begin():
        app.trigger(session, Plain, {}, idempotency_key="queued")
    with statements(pg_engine) as seen:
        app.work()
    assert len(rec.sent) == 1
    assert touching(seen, "chimeway_preferences")


def test_the_claim_waits_for_the_disk(pg_engine: sa.Engine) -> None:
    # A claim a database crash could undo would let the record of its send
    # find the delivery pending again (see the next test): the claim is durable.
    app = Chimeway(engine=pg_engine, channels={"rec": RecordingChannel()})
    with Session(pg_engine) as session, session.begin():
        result = app.trigger(session, Plain, {}, idempotency_key="durable")
    ids = [uuid.UUID(str(d)) for d in result.delivery_ids]
    with pg_engine.begin() as conn:
        conn.execute(sa.text("UPDATE chimeway_deliveries SET status = 'pending'"))
    settings: list[str] = []

    def during_claim(conn: Connection, claimed: Sequence[uuid.UUID]) -> None:
        settings.append(str(conn.exec_driver_sql("SHOW synchronous_commit").scalar()))

    claimed = app.executor.claim(ids, on_claimed=during_claim)
    assert settings == ["on"]
    outcomes = app.executor.record([app.executor.send(c) for c in claimed])
    assert sorted(o.status for o in outcomes) == ["succeeded", "succeeded"]


class ClaimUndone(RecordingChannel):
    """Sends, but first puts its delivery back to ``pending``: a claim a crash undid, or an operator's re-drive."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__()
        self.engine = engine
        self.undone = 0

    def send(self, message: Any) -> Any:
        if not self.undone:
            self.undone += 1
            with self.engine.begin() as conn:
                conn.execute(sa.text("UPDATE chimeway_deliveries SET status = 'pending', lease_holder = NULL "
                                     "WHERE id = :id"), {"id": message.delivery_id})
        return super().send(message)


def test_a_delivery_job_ends_only_once_its_delivery_is_final(pg_engine: sa.Engine) -> None:
    from chimeway.testing import drain

    rec = ClaimUndone(pg_engine)
    app = Chimeway(engine=pg_engine, dispatcher="queue", channels={"rec": rec})
    with Session(pg_engine) as session, session.begin():
        result = app.trigger(session, OnlyRec, {}, idempotency_key="undone")
    (delivery_id,) = result.delivery_ids
    first = drain(app, "chimeway_delivery", with_scheduled=False)
    # The send went out but its record found the delivery pending again: the
    # job must not complete, or nothing would ever send it.
    assert app.explain(delivery_id).status == "pending"
    assert first.snoozed == 1 and first.completed == 0, first
    drain(app, "chimeway_delivery")
    assert app.explain(delivery_id).status == "succeeded"
    assert len(rec.sent) == 2      # at least once: the same receiver-side id twice
    assert {m.delivery_id for m in rec.sent} == {delivery_id}


def test_a_workflow_step_stopped_before_its_send_moves_its_run_on_at_once(pg_engine: sa.Engine) -> None:
    rec = RecordingChannel()
    app = Chimeway(engine=pg_engine, dispatcher="queue", channels={"rec": rec})
    with Session(pg_engine) as session, session.begin():
        result = app.trigger(session, Flow, {}, idempotency_key="stopped")
    # Opted out after the trigger: the first step is stopped in its claim.
    app.preferences("user:2").set(enabled=False, notifier=Flow)
    app.work()
    run = app.explain_run(notification_id=result.notification_ids[0])
    assert rec.sent == []
    # Both steps were suppressed and the run finished within this one drain,
    # not at the workflow sweep a minute later.
    assert run.state == "completed", run
    assert sorted(run.deliveries) == [0, 1]
    assert {app.explain(d).status for ids in run.deliveries.values() for d in ids} == {"suppressed"}
