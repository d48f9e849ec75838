"""The steps DSL: what a workflow may say, and the errors when it says something wrong."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest

from chimeway import Notifier, Recipient
from chimeway.errors import InvalidWorkflowError
from chimeway.workflow import Deliver, Goto, Stop, Wait, deliver, goto, stop, wait
from chimeway.workflow.engine import step_outcome
from chimeway.workflow.steps import (
    DeliverOp,
    GotoOp,
    StopOp,
    WaitOp,
    compile_workflow,
    program_for,
    program_from_spec,
)


def test_wait_durations_add_up_and_signals_are_tuples() -> None:
    w = wait(minutes=30, unless="notification.read")
    assert w == Wait(duration=timedelta(minutes=30), unless=("notification.read",))
    assert wait(timedelta(hours=1), minutes=5).duration == timedelta(hours=1, minutes=5)
    assert wait(days=1, hours=2).duration == timedelta(days=1, hours=2)
    assert wait(until=["a", "b"]).duration is None
    assert wait(until="paid", timeout=timedelta(days=1)) == Wait(duration=timedelta(days=1), until=("paid",))
    assert wait(hours=1, until="paid").duration == timedelta(hours=1)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: wait(), "needs a duration"),
        (lambda: wait(unless="x"), "needs a duration"),
        (lambda: wait(minutes=-1), "negative"),
        (lambda: wait(timedelta(minutes=-5)), "negative"),
        (lambda: wait(minutes=5, timeout=timedelta(1)), "only applies with until"),
        (lambda: wait(minutes=5, until="x", timeout=timedelta(1)), "not both"),
        (lambda: wait(minutes=5, unless=[]), "non-empty"),
        (lambda: wait(minutes=5, unless=[""]), "invalid signal name"),
        (lambda: wait(minutes=5, unless="x", until="x"), "both in unless= and until="),
        (lambda: wait(minutes="5"), "must be a number"),  # type: ignore[arg-type]
        (lambda: wait(30), "must be a timedelta"),  # type: ignore[arg-type]
        (lambda: deliver(""), "needs a channel name"),
        (lambda: deliver("email", to="boss"), "must be a function"),  # type: ignore[arg-type]
        (lambda: deliver("email", on_failure=[]), "non-empty list"),
        (lambda: deliver("email", on_failure=["sms"]), "must list steps"),
        (lambda: deliver("email", on={"bounce": stop()}), r"on=\{'bounce': ...\} is not an outcome; outcomes: succeeded"),
        (lambda: deliver("email", on={}), "non-empty dict"),
        (lambda: deliver("email", on={"bounced": ["sms_step"]}), "use goto"),
        (lambda: deliver("email", on={"bounced": 3}), r"on\['bounced'\] must be a step name"),  # type: ignore[dict-item]
        (lambda: deliver("email", on={"failed": stop()}, on_failure="sms"), "both on_failure= and on="),
        (lambda: deliver("email", name=""), "name= must be a non-empty string"),
        (lambda: wait(minutes=1, name=7), "name= must be a non-empty string"),  # type: ignore[arg-type]
        (lambda: goto(""), "needs a step name"),
    ],
)
def test_malformed_steps_are_refused(build: Any, message: str) -> None:
    with pytest.raises(InvalidWorkflowError, match=message):
        build()


def test_compile_flattens_failure_branches_after_the_main_list() -> None:
    program = compile_workflow([
        deliver("push", on_failure=[deliver("sms"), wait(minutes=1)]),
        deliver("in_app"),
        stop(),
    ])
    ops = program.ops
    assert [type(op) for op in ops] == [DeliverOp, DeliverOp, StopOp, DeliverOp, WaitOp]
    push = ops[0]
    assert isinstance(push, DeliverOp)
    assert push.next == 1 and push.on_failure == 3
    assert ops[3].path == "0.on_failure.0"
    # The failure branch continues with the step after its deliver.
    assert isinstance(ops[4], WaitOp) and ops[4].next == 1
    assert program.describe(4) == "0.on_failure.1 wait 0:01:00"


def test_the_fingerprint_follows_the_steps_and_the_spec_round_trips() -> None:
    a = compile_workflow([deliver("in_app"), wait(minutes=30, unless="notification.read")])
    b = compile_workflow([deliver("in_app"), wait(minutes=30, unless="notification.read")])
    c = compile_workflow([deliver("in_app"), wait(minutes=31, unless="notification.read")])
    assert a.fingerprint == b.fingerprint != c.fingerprint
    again = program_from_spec(a.spec)
    assert again.fingerprint == a.fingerprint and again.ops == a.ops


def _escalate(params: Mapping[str, Any], recipient: Recipient) -> Recipient:
    return Recipient(id="boss")


def test_a_module_level_recipient_function_resolves_from_the_stored_spec() -> None:
    program = compile_workflow([deliver("sms", to=_escalate)])
    op = program_from_spec(program.spec).ops[0]
    assert isinstance(op, DeliverOp) and op.to is _escalate
    lam = compile_workflow([deliver("sms", to=lambda p, r: r)])
    op2 = program_from_spec(lam.spec).ops[0]
    assert isinstance(op2, DeliverOp) and op2.to is None and op2.to_ref is not None


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "empty list"),
        ("deliver", "must be a list of steps"),
        ([deliver("in_app"), "wait"], r"workflow\[1\] is a str"),
        ([deliver("fax")], "no templates for it"),
        ([deliver("in_app", on={"suppressed": "sms_step"})],
         r"Bad: step 0 \(deliver in_app\): on\['suppressed'\] jumps to 'sms_step', but no step has that name"),
        ([deliver("in_app", name="a"), deliver("in_app", name="a")], "step 1 is named 'a', like step 0"),
        ([deliver("in_app", on={"bounced": [deliver("in_app", name="x")]}), goto("y")],
         r"step 1: goto\('y'\) jumps to 'y', but no step has that name \(named steps: 'x'\)"),
        ([deliver("in_app", name="e", on={"succeeded": "e", "failed": "e", "suppressed": "e"})],
         r"can never end: step\(s\) 0 \[e\] deliver in_app loop"),
        ([deliver("in_app", name="a"), wait(hours=1), goto("a")],
         r"can never end: step\(s\) 0 \[a\] deliver in_app, 1 wait 1:00:00, 2 goto a loop"),
    ],
)
def test_invalid_workflows_fail_at_class_definition(steps: Any, message: str) -> None:
    # Every message names the notifier and the step at fault.
    with pytest.raises(InvalidWorkflowError, match=message):
        class Bad(Notifier):
            key = "wf_bad_definition"
            templates = {"in_app": {"body": "x"}}
            workflow = steps


def test_a_notifier_with_build_may_deliver_over_any_channel_name() -> None:
    class Built(Notifier):
        key = "wf_built_any_channel"
        workflow = [deliver("fax")]

        def build(self, params: Mapping[str, Any], recipient: Recipient, channel: str) -> dict[str, Any]:
            return {"body": "x"}

    program = program_for("wf_built_any_channel", 1)
    assert program is not None and isinstance(program.ops[0], DeliverOp)


def test_redefining_a_version_with_other_steps_is_an_error_until_the_version_is_bumped() -> None:
    class First(Notifier):
        key = "wf_versioned"
        templates = {"in_app": {"body": "x"}}
        workflow = [deliver("in_app")]

    with pytest.raises(InvalidWorkflowError, match="bump `version`"):
        class First(Notifier):  # type: ignore[no-redef]
            key = "wf_versioned"
            templates = {"in_app": {"body": "x"}}
            workflow = [deliver("in_app"), wait(minutes=1)]

    class First(Notifier):  # type: ignore[no-redef]
        key = "wf_versioned"
        version = 2
        templates = {"in_app": {"body": "x"}}
        workflow = [deliver("in_app"), wait(minutes=1)]

    v1, v2 = program_for("wf_versioned", 1), program_for("wf_versioned", 2)
    assert v1 is not None and v2 is not None and v1.fingerprint != v2.fingerprint


def test_step_values_are_frozen() -> None:
    step = deliver("email")
    assert isinstance(step, Deliver) and isinstance(stop(), Stop)
    with pytest.raises(AttributeError):
        step.channel = "sms"  # type: ignore[misc]


def test_routes_compile_to_op_indexes_and_round_trip_through_the_stored_spec() -> None:
    program = compile_workflow([
        deliver("email", name="first", on={"bounced": stop(), "suppressed": "text",
                                           "permanent": [deliver("push"), goto("first")]}),
        wait(hours=1, unless="notification.read"),
        deliver("sms", name="text"),
    ])
    email = program.ops[0]
    assert isinstance(email, DeliverOp) and email.name == "first"
    assert email.routes == {"bounced": 3, "suppressed": 2, "permanent": 4}
    assert isinstance(program.ops[3], StopOp) and program.ops[3].path == "0.on.bounced.0"
    assert isinstance(program.ops[5], GotoOp) and program.ops[5].target == 0
    assert program.describe(5) == "0.on.permanent.1 goto first"
    # The push branch continues after its deliver unless it jumps.
    push = program.ops[4]
    assert isinstance(push, DeliverOp) and push.next == 5
    again = program_from_spec(json.loads(json.dumps(program.spec)))
    assert again.fingerprint == program.fingerprint and again.ops == program.ops


def test_each_outcome_finds_its_route_then_failed_then_on_failure_then_next() -> None:
    program = compile_workflow([
        deliver("email", on={"bounced": stop(), "failed": "b"}), deliver("sms", name="b"),
        deliver("push", on_failure="email"), deliver("in_app", on={"retries_exhausted": "b"}),
    ])
    email, _, push, in_app = (op for op in program.ops[:4] if isinstance(op, DeliverOp))
    assert email.route("bounced") == ("bounced", 4)
    assert email.route("permanent") == email.route("failed") == ("failed", 1)
    assert email.route("succeeded") == email.route("suppressed") == (None, 1)
    assert push.route("retries_exhausted") == ("on_failure", 5) and push.route("succeeded") == (None, 3)
    assert in_app.route("permanent") == (None, None) and in_app.route("retries_exhausted") == ("retries_exhausted", 1)


@pytest.mark.parametrize(
    ("statuses", "reason", "kind", "route"),
    [
        ([("succeeded", None), ("cancelled", "bounced: 550")], "delivery_succeeded", None, None),
        ([("suppressed", "opted_out")], "delivery_suppressed", None, "suppressed"),
        ([("cancelled", "bounced: 550 no such user")], "delivery_failed", "bounced", "bounced"),
        ([("cancelled", "retries_exhausted: 503")], "delivery_failed", "retries_exhausted", "failed"),
        ([("cancelled", "permanent: 401")], "delivery_failed", "permanent", "failed"),
        ([("cancelled", "invalid_message: no body")], "delivery_failed", "permanent", "failed"),
        ([("cancelled", "bounced: x"), ("suppressed", "opted_out")], "delivery_failed", "bounced", "bounced"),
        ([("cancelled", "bounced: x"), ("cancelled", "permanent: y")], "delivery_failed", "failed", "failed"),
    ],
)
def test_a_steps_outcome_comes_from_its_deliveries(statuses: list[tuple[str, str | None]], reason: str,
                                                   kind: str | None, route: str | None) -> None:
    op = compile_workflow([deliver("email", on={"bounced": stop(), "failed": stop(), "suppressed": stop()}),
                           deliver("sms")]).ops[0]
    assert isinstance(op, DeliverOp)
    got, context, _ = step_outcome(op, {str(i): {"status": st, "reason": why} for i, (st, why) in enumerate(statuses)})
    assert (got, context.get("failure"), context.get("route")) == (reason, kind, route)


def test_a_workflow_without_routes_keeps_its_stored_fingerprint() -> None:
    # Runs started before routes existed follow their stored definition: the
    # same steps must still compile to the same fingerprint.
    program = compile_workflow([
        deliver("push", on_failure=[deliver("sms"), wait(minutes=1)]), deliver("in_app"),
        wait(until="x", timeout=timedelta(days=1)), wait(minutes=3, unless="y"), stop(), deliver("email"),
    ])
    assert "routes" not in json.dumps(program.spec) and '"name"' not in json.dumps(program.spec)
    assert program.fingerprint == "8fa36cc93ddcbe8900b5e2bc1a02d018376ff9a7b65c0e809bb8d09baaf796d0"


def test_goto_and_named_steps_are_values() -> None:
    assert goto("x") == Goto(target="x")
    assert deliver("sms", name="s").name == "s" and wait(minutes=1, name="w").name == "w"
