"""Outcome routing: each way a step can end sends the run where its ``on={...}`` says."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from journeys import Harness, Routed
from sqlalchemy.orm import Session

from chimeway import Chimeway, DeliveryResult, Notifier, Recipient
from chimeway.models import workflow_definitions_table
from chimeway.testing import RecordingChannel
from chimeway.workflow import deliver, stop, wait
from chimeway.workflow import steps as workflow_steps

EMAIL = {
    "succeeded": None,
    "bounced": lambda m: DeliveryResult.bounced("550 5.1.1 no such user"),
    "retries_exhausted": lambda m: DeliveryResult.temporary("503 try later"),
    "permanent": lambda m: DeliveryResult.permanent("401 bad credentials"),
}


def _start(h: Harness, key: str = "r-1") -> Any:
    with Session(h.app.engine) as session, session.begin():
        result = h.app.trigger(session, Routed, {}, idempotency_key=key)
    h.app.work()
    return result.notification_ids[0]


def _retry_due(h: Harness, dispatcher: str) -> None:
    """Let a delivery's retry fall due and run it (a queue job, or recover() for sync)."""
    h.clock.advance(minutes=1)
    h.app.work()
    if dispatcher == "sync":
        h.app.recover(older_than=timedelta(0))


def _journey(h: Harness, nid: Any) -> list[tuple[str, str, str]]:
    return [(t.to_state, t.reason, t.step) for t in h.app.explain_run(notification_id=nid).transitions]


def _sent(h: Harness) -> dict[str, int]:
    counts = {"email": len(h.email.sent), "sms": len(h.sms.sent), "push": len(h.push.sent)}
    counts["in_app"] = h.app.inbox("user:1").unread_count()
    return counts


def nobody(params: Mapping[str, Any], recipient: Recipient) -> list[Recipient]:
    return []


@pytest.fixture(params=["sync", "queue"])
def dispatcher(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_succeeded_jumps_to_its_named_step(make_app: Callable[..., Harness], dispatcher: str) -> None:
    h = make_app(dispatcher)
    nid = _start(h)
    assert _journey(h, nid) == [("active", "started", "0 deliver email"),
                                ("waiting", "delivery_succeeded", "2 [done] wait 1:00:00 unless notification.read")]
    moved = h.app.explain_run(notification_id=nid).transitions[1]
    assert moved.context["route"] == "succeeded" and "on['succeeded'] route" in moved.why
    h.clock.advance(hours=1)
    h.app.work()
    assert h.app.explain_run(notification_id=nid).state == "completed"
    assert _sent(h) == {"email": 1, "sms": 0, "push": 0, "in_app": 1}


def test_bounced_stops_the_run(make_app: Callable[..., Harness], dispatcher: str) -> None:
    h = make_app(dispatcher, email=RecordingChannel(EMAIL["bounced"]))
    nid = _start(h)
    run = h.app.explain_run(notification_id=nid)
    assert (run.state, [t.reason for t in run.transitions]) == ("stopped", ["started", "stop_step"])
    stopped = run.transitions[-1]
    assert stopped.step == "0.on.bounced.0 stop"
    assert stopped.context["failure"] == "bounced" and stopped.context["route"] == "bounced"
    assert stopped.context["after"] == "delivery_failed"
    assert "by the on['bounced'] route" in stopped.why
    delivery = next(iter(stopped.context["deliveries"].values()))
    assert delivery["status"] == "cancelled" and delivery["reason"].startswith("bounced:")
    h.clock.advance(hours=2)
    h.app.work()
    assert _sent(h) == {"email": 0, "sms": 0, "push": 0, "in_app": 0}


def test_suppressed_jumps_to_the_sms_step(make_app: Callable[..., Harness], dispatcher: str) -> None:
    h = make_app(dispatcher)
    h.app.preferences("user:1").set(channel="email", enabled=False)
    nid = _start(h)
    # Stopped by the pre-send checkpoint, the email is final all the same:
    # the run moves on at once, not at the next sweep.
    h.app.work()
    assert h.app.progress_due() == 0
    journey = _journey(h, nid)
    assert journey == [("active", "started", "0 deliver email"),
                       ("active", "delivery_suppressed", "1 [sms_step] deliver sms"),
                       ("waiting", "delivery_succeeded", "2 [done] wait 1:00:00 unless notification.read")]
    routed = h.app.explain_run(notification_id=nid).transitions[1]
    assert routed.context["route"] == "suppressed" and routed.context["outcome"] == "suppressed"
    assert next(iter(routed.context["deliveries"].values()))["reason"] == "opted_out"
    h.clock.advance(hours=1)
    h.app.work()
    assert _sent(h) == {"email": 0, "sms": 1, "push": 0, "in_app": 1}


def test_a_step_with_nobody_to_deliver_to_is_suppressed_and_routed_at_once(
        make_app: Callable[..., Harness]) -> None:
    class NoOne(Notifier):
        key = "wf_route_no_one"
        templates = {"email": {"body": "e"}, "sms": {"body": "s"}}
        workflow = [deliver("email", to=nobody, on={"suppressed": "text"}), stop(), deliver("sms", name="text")]

        def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
            return [Recipient(id="user:1")]

    h = make_app()
    with Session(h.app.engine) as session, session.begin():
        nid = h.app.trigger(session, NoOne, {}, idempotency_key="no-one").notification_ids[0]
    run = h.app.explain_run(notification_id=nid)
    assert run.state == "completed" and len(h.sms.sent) == 1
    assert run.transitions[1].context["route"] == "suppressed"


def test_retries_exhausted_takes_its_branch_then_continues(make_app: Callable[..., Harness],
                                                           dispatcher: str) -> None:
    email = RecordingChannel(EMAIL["retries_exhausted"])
    h = make_app(dispatcher, max_attempts=2, email=email)
    nid = _start(h)
    assert h.app.explain_run(notification_id=nid).state == "active"  # attempt 1 failed; a retry is due
    _retry_due(h, dispatcher)
    assert len(email.calls) == 2
    journey = _journey(h, nid)
    assert [reason for _, reason, _ in journey] == [
        "started", "delivery_failed", "delivery_succeeded", "delivery_succeeded"]
    assert [step for _, _, step in journey][1:] == [
        "0.on.retries_exhausted.0 deliver push", "1 [sms_step] deliver sms",
        "2 [done] wait 1:00:00 unless notification.read"]
    failed = h.app.explain_run(notification_id=nid).transitions[1]
    assert failed.context["failure"] == "retries_exhausted" and failed.context["route"] == "retries_exhausted"
    assert "(retries exhausted)" in failed.why
    h.clock.advance(hours=1)
    h.app.work()
    assert _sent(h) == {"email": 0, "sms": 1, "push": 1, "in_app": 1}


def test_permanent_failure_takes_its_list_and_jumps(make_app: Callable[..., Harness], dispatcher: str) -> None:
    h = make_app(dispatcher, email=RecordingChannel(EMAIL["permanent"]))
    nid = _start(h)
    assert _journey(h, nid) == [
        ("active", "started", "0 deliver email"),
        ("active", "delivery_failed", "0.on.permanent.0 deliver push"),
        ("waiting", "delivery_succeeded", "2 [done] wait 1:00:00 unless notification.read"),
    ]
    # A read during the wait still stops the run, whichever route led there.
    with Session(h.app.engine) as session, session.begin():
        h.app.track(session, "notification.read", actor="user:1")
    h.app.work()
    assert h.app.explain_run(notification_id=nid).state == "stopped"
    assert _sent(h) == {"email": 0, "sms": 0, "push": 1, "in_app": 0}


def test_an_unrouted_outcome_moves_on_and_on_failure_still_applies(make_app: Callable[..., Harness]) -> None:
    class Partly(Notifier):
        key = "wf_partly_routed"
        templates = {"email": {"body": "e"}, "sms": {"body": "s"}, "push": {"body": "p"}}
        workflow = [deliver("email", on={"bounced": stop()}, on_failure="push"), deliver("sms")]

        def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
            return [Recipient(id="user:1")]

    h = make_app("queue", email=RecordingChannel(EMAIL["permanent"]))
    with Session(h.app.engine) as session, session.begin():
        nid = h.app.trigger(session, Partly, {}, idempotency_key="p-1").notification_ids[0]
    h.app.work()
    run = h.app.explain_run(notification_id=nid)
    assert run.state == "completed" and len(h.push.sent) == len(h.sms.sent) == 1
    failed = run.transitions[1]
    assert failed.context["branch"] == "on_failure" and "route" not in failed.context


def test_a_route_back_to_a_step_that_ends_at_once_stops_the_run(make_app: Callable[..., Harness]) -> None:
    class Spin(Notifier):
        key = "wf_route_spin"
        templates = {"email": {"body": "e"}}
        workflow = [deliver("email", to=nobody, name="again", on={"suppressed": "again"})]

        def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
            return [Recipient(id="user:1")]

    h = make_app()
    with Session(h.app.engine) as session, session.begin():
        nid = h.app.trigger(session, Spin, {}, idempotency_key="spin").notification_ids[0]
    run = h.app.explain_run(notification_id=nid)
    assert run.state == "stopped" and run.transitions[-1].reason == "route_loop"
    assert [t.reason for t in run.transitions] == ["started", "route_loop"]  # the step is not run twice
    assert run.transitions[-1].context["route"] == "suppressed"


def test_a_run_started_before_a_deploy_follows_its_stored_routes(
        make_app: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch) -> None:
    h = make_app("queue", email=RecordingChannel(EMAIL["permanent"]))
    with Session(h.app.engine) as session, session.begin():
        nid = h.app.trigger(session, Routed, {}, idempotency_key="deploy").notification_ids[0]
    with h.app.engine.connect() as conn:
        spec = conn.execute(sa.select(workflow_definitions_table.c.steps)
                            .where(workflow_definitions_table.c.notifier_key == Routed.key)).scalar_one()
    assert spec["steps"][0]["routes"] == {"succeeded": 2, "bounced": 4, "suppressed": 1,
                                          "retries_exhausted": 5, "permanent": 6}
    # The new deploy no longer declares this version; a fresh process only has the stored spec.
    monkeypatch.delitem(workflow_steps._PROGRAMS, (Routed.key, Routed.version))
    fresh = Chimeway(engine=h.app.engine, clock=h.clock, dispatcher="queue",
                     channels={"email": RecordingChannel(EMAIL["permanent"]), "sms": h.sms, "push": h.push})
    try:
        fresh.work()
        run = fresh.explain_run(notification_id=nid)
        assert [t.step for t in run.transitions][1:] == [
            "0.on.permanent.0 deliver push", "2 [done] wait 1:00:00 unless notification.read"]
        assert len(h.push.sent) == 1 and h.sms.sent == []
    finally:
        fresh.close()


def test_explain_run_prints_the_route(make_app: Callable[..., Harness]) -> None:
    h = make_app("sync", email=RecordingChannel(EMAIL["bounced"]))
    nid = _start(h)
    text = str(h.app.explain_run(notification_id=nid))
    assert "0 deliver email" in text and "0.on.bounced.0 stop" in text
    assert "stopped   [0.on.bounced.0 stop]  the workflow reached stop() by the on['bounced'] route" in text


def test_wait_steps_can_be_named_and_jumped_to() -> None:
    program = workflow_steps.compile_workflow([
        deliver("email", on={"failed": "later"}), stop(), wait(hours=2, name="later"), deliver("sms")])
    assert program.describe(2) == "2 [later] wait 2:00:00"
