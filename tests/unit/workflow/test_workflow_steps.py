"""The steps DSL: what a workflow may say, and the errors when it says something wrong."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest

from chimeway import Notifier, Recipient
from chimeway.errors import InvalidWorkflowError
from chimeway.workflow import Deliver, Stop, Wait, deliver, stop, wait
from chimeway.workflow.steps import (
    DeliverOp,
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
    ],
)
def test_invalid_workflows_fail_at_class_definition(steps: Any, message: str) -> None:
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
