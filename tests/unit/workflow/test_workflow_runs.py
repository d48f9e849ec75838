"""Workflow runs on SQLite with both dispatchers, driven by a FakeClock and ``app.work()``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from journeys import Fallback, Harness, Mention, Paid
from sqlalchemy.orm import Session

from chimeway import DeliveryResult, Notifier, Recipient
from chimeway.errors import InvalidInputError, InvalidWorkflowError, NotFoundError
from chimeway.models import (
    deliveries_table,
    events_table,
    signals_table,
    workflow_runs_table,
    workflow_transitions_table,
)
from chimeway.testing import RecordingChannel
from chimeway.workflow import deliver, wait


def _trigger(h: Harness, notifier: type[Notifier], key: str, params: Mapping[str, Any] | None = None,
             **options: Any) -> tuple[Any, Any]:
    with Session(h.app.engine) as session, session.begin():
        result = h.app.trigger(session, notifier, dict(params or {}), idempotency_key=key, **options)
    h.app.work()
    return result, result.notification_ids[0]


def _reasons(h: Harness, notification_id: Any) -> list[tuple[str, str]]:
    return [(t.to_state, t.reason) for t in h.app.explain_run(notification_id=notification_id).transitions]


def test_the_mention_journey_escalates_to_the_manager_when_nobody_reads(h: Harness) -> None:
    _, nid = _trigger(h, Mention, "m-1", {"who": "ann", "text": "look", "manager": "user:boss"})
    run = h.app.explain_run(notification_id=nid)
    assert (run.state, run.step) == ("waiting", 1)
    assert run.wait_until == h.clock.now() + timedelta(minutes=30)
    assert h.app.inbox("user:1").unread_count() == 1

    h.clock.advance(minutes=29)
    h.app.work()
    assert h.email.sent == []
    h.clock.advance(minutes=1)
    h.app.work()
    assert [m.recipient.id for m in h.email.sent] == ["user:1"]
    assert h.email.sent[0].fields["subject"] == "ann mentioned you"

    h.clock.advance(hours=4)
    h.app.work()
    assert [m.recipient.id for m in h.sms.sent] == ["user:boss"]
    assert h.sms.sent[0].fields["body"] == "user:boss: ann is waiting"
    assert _reasons(h, nid) == [
        ("active", "started"),
        ("waiting", "delivery_succeeded"),
        ("active", "wait_elapsed"),
        ("waiting", "delivery_succeeded"),
        ("active", "wait_elapsed"),
        ("completed", "delivery_succeeded"),
    ]
    # The escalation has its own notification under the same event; explain names the step.
    sms = h.app.explain(h.sms.sent[0].delivery_id)
    planned = sms.timeline[0]
    assert planned.event == "planned" and planned.detail["step"] == 4
    assert any(t.event == "workflow_step" and t.detail.get("escalated_to") == "user:boss" for t in sms.timeline)


def test_reading_the_in_app_message_stops_the_escalation(h: Harness) -> None:
    _, nid = _trigger(h, Mention, "m-2", {"who": "ann", "text": "look"})
    h.clock.advance(minutes=31)
    h.app.work()
    assert len(h.email.sent) == 1
    h.clock.advance(minutes=5)
    assert h.app.inbox("user:1").mark_read(nid)
    h.app.work()
    run = h.app.explain_run(notification_id=nid)
    assert (run.state, run.step) == ("stopped", 3)
    last = run.transitions[-1]
    assert last.reason == "signal_unless" and last.context["signal"] == "notification.read"
    assert "notification.read from user:1" in last.why
    h.clock.advance(days=1)
    h.app.work()
    assert h.sms.sent == []


def test_a_read_before_the_wait_begins_still_stops_the_run(make_app: Callable[..., Harness]) -> None:
    h = make_app("queue")
    with Session(h.app.engine) as session, session.begin():
        result = h.app.trigger(session, Mention, {"who": "a", "text": "t"}, idempotency_key="early")
    nid = result.notification_ids[0]
    # The signal is committed while the first step is still in flight.
    with Session(h.app.engine) as session, session.begin():
        h.app.track(session, "notification.read", actor="user:1", notification_id=nid)
    h.app.work()
    run = h.app.explain_run(notification_id=nid)
    assert run.state == "stopped"
    assert run.transitions[-1].context.get("arrived_before_wait") is True


def test_signals_only_touch_runs_of_the_same_tenant_actor_and_notification(h: Harness) -> None:
    _, nid_acme = _trigger(h, Mention, "t-1", {"who": "a", "text": "t"}, tenant="acme")
    _, nid_other = _trigger(h, Mention, "t-2", {"who": "a", "text": "t"}, tenant="other")
    _, nid_acme2 = _trigger(h, Mention, "t-3", {"who": "a", "text": "t"}, tenant="acme")
    with Session(h.app.engine) as session, session.begin():
        h.app.track(session, "notification.read", actor="user:2", tenant="acme")
        h.app.track(session, "notification.read", actor="user:1", tenant="third")
        h.app.track(session, "notification.read", actor="user:1")
        h.app.track(session, "notification.read", actor="user:1", tenant="acme", notification_id=nid_acme)
    h.app.work()
    states = {nid: h.app.explain_run(notification_id=nid).state for nid in (nid_acme, nid_other, nid_acme2)}
    assert states == {nid_acme: "stopped", nid_other: "waiting", nid_acme2: "waiting"}
    with h.app.engine.connect() as conn:
        routed = conn.execute(sa.select(signals_table.c.matched, signals_table.c.routed_at)).all()
    assert sorted(r.matched for r in routed) == [0, 0, 0, 1]
    assert all(r.routed_at is not None for r in routed)


def test_a_signal_without_a_notification_reaches_every_waiting_run_of_the_actor(h: Harness) -> None:
    _, a = _trigger(h, Mention, "all-1", {"who": "a", "text": "t"})
    _, b = _trigger(h, Mention, "all-2", {"who": "a", "text": "t"})
    with Session(h.app.engine) as session, session.begin():
        h.app.track(session, "notification.read", actor="user:1")
    h.app.work()
    assert {h.app.explain_run(notification_id=n).state for n in (a, b)} == {"stopped"}


def test_until_resumes_on_the_signal_and_stop_ends_the_run(h: Harness) -> None:
    _, nid = _trigger(h, Paid, "paid-1")
    assert h.app.explain_run(notification_id=nid).state == "waiting"
    with Session(h.app.engine) as session, session.begin():
        h.app.track(session, "order.paid", actor="user:1", payload={"amount": 7, "token": "s3cret"})
    h.app.work()
    assert _reasons(h, nid) == [("waiting", "started"), ("active", "signal_until"), ("stopped", "stop_step")]
    assert h.app.inbox("user:1").unread_count() == 1
    assert h.email.sent == []
    with h.app.engine.connect() as conn:
        payload = conn.execute(sa.select(signals_table.c.payload)).scalar_one()
    assert payload == {"amount": 7, "token": "[redacted]"}


def test_until_times_out_when_the_signal_never_comes(h: Harness) -> None:
    _, nid = _trigger(h, Paid, "paid-2")
    h.clock.advance(days=1)
    h.app.work()
    assert [r for _, r in _reasons(h, nid)][:2] == ["started", "timeout"]


def test_a_failed_delivery_takes_the_failure_branch_then_continues(make_app: Callable[..., Harness]) -> None:
    push = RecordingChannel(lambda m: DeliveryResult.permanent("token unregistered"))
    h = make_app("queue", push=push)
    _, nid = _trigger(h, Fallback, "fb-1")
    run = h.app.explain_run(notification_id=nid)
    assert [t.reason for t in run.transitions] == [
        "started", "delivery_failed", "delivery_succeeded", "delivery_succeeded"]
    branched = run.transitions[1]
    assert branched.context["branch"] == "on_failure" and "on_failure" in branched.why
    assert next(iter(branched.context["deliveries"].values()))["status"] == "cancelled"
    assert run.state == "completed" and len(h.email.sent) == 1
    assert h.app.inbox("user:1").unread_count() == 1


def test_a_successful_delivery_skips_the_failure_branch(h: Harness) -> None:
    _, nid = _trigger(h, Fallback, "fb-2")
    assert h.email.sent == [] and len(h.push.sent) == 1
    assert h.app.explain_run(notification_id=nid).state == "completed"


def test_cancel_run_by_cancellation_key_stops_waiting_runs_and_their_pending_deliveries(h: Harness) -> None:
    _, nid = _trigger(h, Mention, "c-1", {"who": "a", "text": "t", "users": ["user:1", "user:2"]},
                      cancellation_key="thread-9", tenant="acme")
    _, other = _trigger(h, Mention, "c-2", {"who": "a", "text": "t"}, tenant="acme")
    assert h.app.cancel_run(cancellation_key="thread-9", tenant="other") == 0
    assert h.app.cancel_run(cancellation_key="thread-9", tenant="acme") == 2
    assert h.app.cancel_run(cancellation_key="thread-9") == 0
    run = h.app.explain_run(notification_id=nid)
    assert run.state == "cancelled" and run.transitions[-1].context["by"] == {"cancellation_key": "thread-9"}
    h.clock.advance(hours=1)
    h.app.work()
    assert [m.recipient.id for m in h.email.sent] == ["user:1"]  # only the run not cancelled
    assert h.app.cancel_run(notification_id=other) == 1
    with pytest.raises(NotFoundError):
        h.app.cancel_run()


def test_cancel_run_cancels_a_delivery_not_yet_sent(make_app: Callable[..., Harness]) -> None:
    h = make_app("queue")
    with Session(h.app.engine) as session, session.begin():
        result = h.app.trigger(session, Mention, {"who": "a", "text": "t"}, idempotency_key="c-3")
    run_id = h.app.explain_run(notification_id=result.notification_ids[0]).run_id
    assert h.app.cancel_run(run_id) == 1
    h.app.work()
    explanation = h.app.explain(result.delivery_ids[0])
    assert (explanation.status, explanation.reason) == ("cancelled", "workflow_cancelled")
    assert h.app.inbox("user:1").unread_count() == 0


def test_trigger_plans_only_the_first_step_and_a_duplicate_creates_no_second_run(h: Harness) -> None:
    with Session(h.app.engine) as session, session.begin():
        first = h.app.trigger(session, Mention, {"who": "a", "text": "t"}, idempotency_key="dup")
    with Session(h.app.engine) as session, session.begin():
        again = h.app.trigger(session, Mention, {"who": "a", "text": "t"}, idempotency_key="dup")
    assert again.duplicate and again.delivery_ids == first.delivery_ids
    with h.app.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(workflow_runs_table)).scalar() == 1
        steps = conn.execute(sa.select(deliveries_table.c.channel, deliveries_table.c.step)).all()
    assert [tuple(s) for s in steps] == [("in_app", 0)]


def test_rollback_leaves_no_run_no_transition_no_job(make_app: Callable[..., Harness]) -> None:
    h = make_app("queue")
    with Session(h.app.engine) as session:
        session.begin()
        h.app.trigger(session, Paid, {}, idempotency_key="rb")
        h.app.track(session, "order.paid", actor="user:1")
        session.rollback()
    with h.app.engine.connect() as conn:
        for table in (workflow_runs_table, workflow_transitions_table, signals_table, events_table):
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0
    assert h.app.work() == 0


def test_a_channel_the_app_does_not_configure_fails_at_trigger_and_writes_nothing(sqlite_engine: sa.Engine) -> None:
    from chimeway import Chimeway

    app = Chimeway(engine=sqlite_engine, channels={"email": RecordingChannel()})
    with Session(app.engine) as session, session.begin(), \
            pytest.raises(InvalidWorkflowError, match="'sms'"):
        app.trigger(session, Mention, {"who": "a", "text": "t"}, idempotency_key="no-sms")
    with app.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events_table)).scalar() == 0


def test_another_definition_of_a_started_version_is_refused_at_trigger(make_app: Callable[..., Harness]) -> None:
    h = make_app()
    _trigger(h, Mention, "def-1", {"who": "a", "text": "t"})
    from chimeway.models import workflow_definitions_table as d

    with h.app.engine.begin() as conn:
        conn.execute(sa.update(d).values(fingerprint="0" * 64))
    fresh = make_app()
    with Session(fresh.app.engine) as session, session.begin(), \
            pytest.raises(InvalidWorkflowError, match="bump `version`"):
        fresh.app.trigger(session, Mention, {"who": "a", "text": "t"}, idempotency_key="def-2")


def test_a_run_follows_the_steps_it_started_with(make_app: Callable[..., Harness]) -> None:
    class Versioned(Notifier):
        key = "wf_keeps_version"
        templates = {"in_app": {"body": "x"}, "email": {"body": "y"}}
        workflow = [deliver("in_app"), wait(minutes=10), deliver("email")]

        def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
            return [Recipient(id="user:1")]

    h = make_app()
    _, nid = _trigger(h, Versioned, "v-1")

    class Versioned(Notifier):  # type: ignore[no-redef]
        key = "wf_keeps_version"
        version = 2
        templates = {"in_app": {"body": "x"}, "email": {"body": "y"}}
        workflow = [deliver("in_app"), wait(minutes=10)]

        def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
            return [Recipient(id="user:1")]

    h.clock.advance(minutes=10)
    h.app.work()
    run = h.app.explain_run(notification_id=nid)
    assert run.version == 1 and run.state == "completed" and len(h.email.sent) == 1


def test_the_sweep_advances_a_run_whose_hook_was_lost(make_app: Callable[..., Harness]) -> None:
    h = make_app("queue")
    h.app.executor.on_final = None  # as if the process died right after recording the outcome
    _, nid = _trigger(h, Mention, "lost-hook", {"who": "a", "text": "t"})
    assert h.app.explain_run(notification_id=nid).state == "active"
    assert h.app.progress_due() == 0  # too recent: its own process may still advance it
    h.clock.advance(minutes=2)
    assert h.app.progress_due() == 1
    assert h.app.explain_run(notification_id=nid).state == "waiting"


def test_the_sweep_advances_due_waits_and_routes_forgotten_signals(make_app: Callable[..., Harness]) -> None:
    h = make_app()
    _, nid = _trigger(h, Mention, "sweep", {"who": "a", "text": "t"})
    h.clock.advance(minutes=30)
    assert h.app.progress_due() == 1  # without running the wait's own job
    assert len(h.email.sent) == 1
    h.app.work()  # the wait's job finds the run moved on and does nothing
    assert len(h.email.sent) == 1
    with h.app.engine.begin() as conn:
        conn.execute(sa.insert(signals_table).values(
            id=__import__("chimeway.ids", fromlist=["new_id"]).new_id(), tenant="", actor="user:1",
            name="notification.read", notification_id=None, payload={}, created_at=h.clock.now(), matched=0))
    h.clock.advance(minutes=5)
    assert h.app.progress_due() == 1
    assert h.app.explain_run(notification_id=nid).state == "stopped"


def test_progress_run_advances_a_run_once(make_app: Callable[..., Harness]) -> None:
    h = make_app()
    _, nid = _trigger(h, Mention, "once", {"who": "a", "text": "t"})
    run_id = h.app.explain_run(notification_id=nid).run_id
    assert h.app.progress_run(run_id) is False
    h.clock.advance(minutes=30)
    assert h.app.progress_run(run_id) is True
    assert h.app.progress_run(str(run_id)) is False
    with pytest.raises(InvalidInputError):
        h.app.progress_run("nope")


def test_track_refuses_bad_input_before_writing(h: Harness) -> None:
    with Session(h.app.engine) as session, session.begin():
        for kwargs, message in [
            ({"name": "", "actor": "u"}, "signal name"),
            ({"name": "x", "actor": ""}, "actor"),
            ({"name": "x", "actor": "u", "payload": [1]}, "payload must be a dict"),
            ({"name": "x", "actor": "u", "payload": {"a": object()}}, "payload"),
            ({"name": "x", "actor": "u", "notification_id": "bad"}, "notification_id"),
        ]:
            name = kwargs.pop("name")
            with pytest.raises(InvalidInputError, match=message):
                h.app.track(session, name, **kwargs)
    with h.app.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(signals_table)).scalar() == 0


def test_explain_run_renders_the_journey(h: Harness) -> None:
    _, nid = _trigger(h, Mention, "render", {"who": "a", "text": "t"})
    text = str(h.app.explain_run(notification_id=nid))
    assert "1 wait 0:30:00 unless notification.read" in text
    assert "the step's delivery succeeded" in text
    with pytest.raises(NotFoundError):
        h.app.explain_run(__import__("uuid").uuid4())


def test_the_built_in_cron_schedule_runs_the_sweep(make_app: Callable[..., Harness]) -> None:
    from chimeway.models import jobs_table

    h = make_app()
    _, nid = _trigger(h, Mention, "cron-sweep", {"who": "a", "text": "t"})
    with h.app.engine.begin() as conn:  # only the sweep is left to advance the run
        conn.execute(sa.delete(jobs_table))
    h.clock.advance(minutes=31)
    fired = h.app.run_scheduler()
    assert "chimeway.workflow.sweep" in {t.name for t in fired}
    h.app.work()
    assert h.app.explain_run(notification_id=nid).step == 3
    assert len(h.email.sent) == 1


def test_a_later_steps_missing_template_variable_fails_the_trigger_naming_the_step(
        sqlite_engine: sa.Engine) -> None:
    from chimeway import Chimeway
    from chimeway.errors import TemplateRenderError

    class Reminder(Notifier):
        key = "wf_missing_later_var"
        templates = {"in_app": {"body": "hi {{ who }}"}, "email": {"body": "still waiting, {{ manager }}"}}
        workflow = [deliver("in_app"), wait(minutes=10), deliver("email")]

        def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
            return [Recipient(id="user:1")]

    app = Chimeway(engine=sqlite_engine, channels={"email": RecordingChannel()})
    with Session(app.engine) as session, session.begin():
        with pytest.raises(TemplateRenderError, match=r"workflow step 2 \(email\).*manager"):
            app.trigger(session, Reminder, {"who": "ann"}, idempotency_key="later")
        # Nothing was written: the caller's transaction goes on and commits its own work.
        session.execute(sa.text("SELECT 1"))
    with app.engine.connect() as conn:
        for table in (events_table, deliveries_table, workflow_runs_table):
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0


def test_the_first_step_is_rendered_once(sqlite_engine: sa.Engine) -> None:
    from chimeway import Chimeway

    built: list[str] = []

    class Built(Notifier):
        key = "wf_built_once"
        workflow = [deliver("in_app"), wait(minutes=10), deliver("email")]

        def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
            return [Recipient(id="user:1"), Recipient(id="user:2")]

        def build(self, params: Mapping[str, Any], recipient: Recipient, channel: str) -> dict[str, Any]:
            built.append(f"{recipient.id}/{channel}")
            return {"body": f"hello {recipient.id}"}

    app = Chimeway(engine=sqlite_engine, channels={"email": RecordingChannel()})
    with Session(app.engine) as session, session.begin():
        result = app.trigger(session, Built, {}, idempotency_key="once")
    assert sorted(built) == ["user:1/in_app", "user:2/in_app"]
    assert len(result.delivery_ids) == 2
