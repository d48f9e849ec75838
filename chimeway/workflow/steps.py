"""The workflow steps DSL, its validation, and its compilation.

::

    workflow = [
        deliver("email", on={"bounced": "sms_step", "retries_exhausted": deliver("push")}),
        wait(hours=4, unless="notification.read"),
        stop(),
        deliver("sms", name="sms_step"),
    ]

A workflow is compiled into a flat *program* (:mod:`chimeway.workflow.program`):
one op per step, each knowing the index of the op that follows it. A
``deliver`` step's ``on_failure`` and ``on={...}`` branches are appended after
the main list and continue with the step after that ``deliver`` (unless they
``stop()`` or ``goto()`` elsewhere); a route that names a step jumps to it.
The index of an op is the step number stored on runs, transitions and
deliveries.

The program's JSON form is fingerprinted (SHA-256) and stored once per
notifier version, so a run follows the steps (and routes) it started with
after a deploy.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from chimeway.errors import InvalidWorkflowError
from chimeway.workflow.program import (
    FAILURES,
    OUTCOMES,
    DeliverOp,
    GotoOp,
    Op,
    Program,
    Recipients,
    StopOp,
    WaitOp,
    build_program,
    check_can_end,
)

__all__ = [
    "FAILURES",
    "OUTCOMES",
    "Deliver",
    "DeliverOp",
    "Goto",
    "GotoOp",
    "Op",
    "Program",
    "Recipients",
    "Route",
    "Step",
    "Stop",
    "StopOp",
    "Wait",
    "WaitOp",
    "compile_workflow",
    "deliver",
    "goto",
    "program_for",
    "program_from_spec",
    "stop",
    "validate_workflow",
    "wait",
]

MAX_NAME = 200


@dataclass(frozen=True, kw_only=True)
class Deliver:
    """Send the notification over one channel; the run moves on once it is final.

    Args:
        channel: a configured channel name.
        to: ``(params, recipient) -> Recipient | list[Recipient]`` to deliver
            to someone else (escalation to a manager); default the recipient.
        on_failure: steps to take when every delivery of this step ends
            ``cancelled`` (failed for good); a channel name is shorthand for
            ``[deliver(name)]``. The run then continues after this step.
        name: the step's name, for routes and ``goto()`` to jump to.
        on: outcome → the steps that outcome takes (a ``goto`` to jump).
    """

    channel: str
    to: Recipients | None = None
    on_failure: tuple[Step, ...] = ()
    name: str | None = None
    on: tuple[tuple[str, tuple[Step, ...]], ...] = ()

    @property
    def branches(self) -> tuple[tuple[Step, ...], ...]:
        """Every branch of steps this step may take (``on_failure``, then each route)."""
        return tuple(b for b in (self.on_failure, *(steps for _, steps in self.on)) if b)


@dataclass(frozen=True, kw_only=True)
class Wait:
    """Pause the run.

    Args:
        duration: how long to wait (``None`` with ``until``: until the signal).
        unless: signal names that stop the run if they arrive while waiting.
        until: signal names that end the wait early (the run continues).
        name: the step's name, for routes and ``goto()`` to jump to.
    """

    duration: timedelta | None = None
    unless: tuple[str, ...] = ()
    until: tuple[str, ...] = ()
    name: str | None = None

    @property
    def signals(self) -> tuple[str, ...]:
        """Every signal name this wait reacts to."""
        return self.unless + self.until


@dataclass(frozen=True, kw_only=True)
class Stop:
    """End the run here (state ``stopped``)."""


@dataclass(frozen=True, kw_only=True)
class Goto:
    """Continue the run at the step called ``target``."""

    target: str


Step = Deliver | Wait | Stop | Goto
# What an outcome of ``deliver(..., on={...})`` may lead to.
Route = str | Step | Sequence[Step]


def deliver(
    channel: str,
    to: Recipients | None = None,
    on_failure: str | Sequence[Step] | None = None,
    *,
    on: Mapping[str, Route] | None = None,
    name: str | None = None,
) -> Deliver:
    """A step that delivers over ``channel``.

    Args:
        channel: a configured channel name (``"in_app"``, ``"email"``, ...).
        to: ``(params, recipient) -> Recipient | list[Recipient]``: deliver to
            these recipients instead (escalation); default the run's recipient.
        on_failure: a channel name, or a list of steps, taken when the
            delivery fails for good; the run then continues after this step.
        on: where each outcome of the step goes: ``"succeeded"``,
            ``"suppressed"``, ``"bounced"``, ``"retries_exhausted"``,
            ``"permanent"``, or ``"failed"`` (any failure without its own
            route). A value is a step name to jump to (or ``goto(name)``),
            ``stop()``, a step or a list of steps (which then continue after
            this step). An outcome without a route moves on to the next step.
        name: a name other steps' routes and ``goto()`` can jump to.
    """
    if not isinstance(channel, str) or not channel.strip():
        raise InvalidWorkflowError(f"deliver() needs a channel name, got {channel!r}")
    where = f"deliver({channel!r})"
    if to is not None and not callable(to):
        raise InvalidWorkflowError(
            f"deliver({channel!r}, to=...) must be a function (params, recipient) -> Recipient(s)"
        )
    branch: tuple[Step, ...] = ()
    if isinstance(on_failure, str):
        branch = (deliver(on_failure),)
    elif on_failure is not None:
        if not isinstance(on_failure, Sequence) or not on_failure:
            raise InvalidWorkflowError(
                f"deliver({channel!r}, on_failure=...) must be a channel name or a non-empty list of steps"
            )
        branch = tuple(step for step in on_failure if not isinstance(step, str))
        if len(branch) != len(on_failure):
            raise InvalidWorkflowError(
                f"deliver({channel!r}, on_failure=[...]) must list steps; use deliver(name) inside a list"
            )
        _check_steps(branch, f"{where}.on_failure")
    routes = _routes(where, on)
    if branch and any(outcome == "failed" for outcome, _ in routes):
        raise InvalidWorkflowError(
            f"{where} has both on_failure= and on={{'failed': ...}}; they mean the same route, keep one"
        )
    return Deliver(channel=channel, to=to, on_failure=branch, name=_step_name(name, where), on=routes)


def _routes(where: str, on: Mapping[str, Route] | None) -> tuple[tuple[str, tuple[Step, ...]], ...]:
    if on is None:
        return ()
    if not isinstance(on, Mapping) or not on:
        raise InvalidWorkflowError(f"{where}: on=... must be a non-empty dict of outcome → route")
    routes: list[tuple[str, tuple[Step, ...]]] = []
    for outcome, value in on.items():
        if outcome not in OUTCOMES:
            raise InvalidWorkflowError(
                f"{where}: on={{{outcome!r}: ...}} is not an outcome; outcomes: {', '.join(OUTCOMES)}"
            )
        at = f"{where}.on[{outcome!r}]"
        if isinstance(value, str):
            steps: tuple[Step, ...] = (goto(value),)
        elif isinstance(value, Deliver | Wait | Stop | Goto):
            steps = (value,)
        elif isinstance(value, Sequence) and value and not any(isinstance(v, str) for v in value):
            steps = tuple(v for v in value if not isinstance(v, str))
            _check_steps(steps, at)
        else:
            raise InvalidWorkflowError(
                f"{at} must be a step name, stop(), a step or a non-empty list of steps "
                f"(use goto(name) inside a list), got {value!r}"
            )
        routes.append((outcome, steps))
    return tuple(routes)


def _step_name(name: str | None, where: str) -> str | None:
    if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME):
        raise InvalidWorkflowError(f"{where}: name= must be a non-empty string of at most {MAX_NAME} "
                                   f"characters, got {name!r}")
    return name


def wait(
    duration: timedelta | None = None,
    *,
    seconds: float = 0,
    minutes: float = 0,
    hours: float = 0,
    days: float = 0,
    unless: str | Sequence[str] | None = None,
    until: str | Sequence[str] | None = None,
    timeout: timedelta | None = None,
    name: str | None = None,
) -> Wait:
    """A step that waits for time to pass, or for a signal.

    ``wait(minutes=30, unless="notification.read")`` stops the run if the
    signal arrives within 30 minutes and continues otherwise;
    ``wait(until="order.paid", timeout=timedelta(days=1))`` continues as soon
    as the signal arrives, or after the timeout.

    Args:
        duration: how long to wait, as a ``timedelta``.
        seconds: added to the duration.
        minutes: added to the duration.
        hours: added to the duration.
        days: added to the duration.
        unless: signal name(s) that stop the run while it waits.
        until: signal name(s) that end the wait early.
        timeout: with ``until``: the longest wait (default: wait forever).
        name: a name routes and ``goto()`` can jump to.
    """
    parts = {"seconds": seconds, "minutes": minutes, "hours": hours, "days": days}
    for field_, value in parts.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidWorkflowError(f"wait({field_}=...) must be a number, got {value!r}")
        if value < 0:
            raise InvalidWorkflowError(f"wait({field_}={value!r}) is negative; a wait must not go back in time")
    if duration is not None and not isinstance(duration, timedelta):
        raise InvalidWorkflowError(f"wait(duration) must be a timedelta, got {type(duration).__name__}")
    if timeout is not None and not isinstance(timeout, timedelta):
        raise InvalidWorkflowError(f"wait(timeout=...) must be a timedelta, got {type(timeout).__name__}")
    extra = timedelta(**parts)
    total = None if duration is None and not extra else (duration or timedelta(0)) + extra
    unless_names = _signal_names(unless, "unless")
    until_names = _signal_names(until, "until")
    if until_names and total is not None and timeout is not None:
        raise InvalidWorkflowError("wait(until=...) takes timeout=..., or a duration, not both")
    if until_names and timeout is not None:
        total = timeout
    elif timeout is not None:
        raise InvalidWorkflowError("wait(timeout=...) only applies with until=...")
    if total is None and not until_names:
        raise InvalidWorkflowError(
            "wait() needs a duration (minutes=..., hours=...) or until=a signal name"
        )
    if total is not None and total < timedelta(0):
        raise InvalidWorkflowError(f"wait duration {total} is negative")
    if unless_names and until_names and set(unless_names) & set(until_names):
        raise InvalidWorkflowError("a signal cannot be both in unless= and until= of one wait")
    return Wait(duration=total, unless=unless_names, until=until_names, name=_step_name(name, "wait()"))


def stop() -> Stop:
    """A step that ends the run (state ``stopped``, reason ``stop_step``)."""
    return Stop()


def goto(name: str) -> Goto:
    """A step that continues the run at the step called ``name``.

    ``deliver(..., on={"bounced": "sms_step"})`` is shorthand for
    ``on={"bounced": goto("sms_step")}``; inside a list of steps, write
    ``goto()``.

    Args:
        name: the ``name=`` of a ``deliver`` or ``wait`` step of the same workflow.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidWorkflowError(f"goto() needs a step name, got {name!r}")
    return Goto(target=name)


def _signal_names(value: str | Sequence[str] | None, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, Sequence) or not names:
        raise InvalidWorkflowError(f"wait({where}=...) must be a signal name or a non-empty list of names")
    for name in names:
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise InvalidWorkflowError(f"wait({where}=...) has an invalid signal name {name!r}")
    return tuple(dict.fromkeys(names))


def _check_steps(steps: Sequence[Any], where: str) -> None:
    if isinstance(steps, str | bytes) or not isinstance(steps, Sequence):
        raise InvalidWorkflowError(f"{where} must be a list of steps, got {type(steps).__name__}")
    if not steps:
        raise InvalidWorkflowError(f"{where} is an empty list of steps")
    for index, step in enumerate(steps):
        if not isinstance(step, Deliver | Wait | Stop | Goto):
            raise InvalidWorkflowError(
                f"{where}[{index}] is a {type(step).__name__}, not a step (use deliver(), wait(), stop(), goto())"
            )


# --- compiling ---------------------------------------------------------------


def compile_workflow(steps: Sequence[Step]) -> Program:
    """Flatten ``steps`` (and their branches) into a ``Program``; resolve jumps; check it can end.

    Args:
        steps: the notifier's ``workflow``.

    Raises:
        InvalidWorkflowError: a name used twice, a jump to a name no step
            has, or a loop no outcome can leave — naming the step.
    """
    _check_steps(steps, "workflow")
    slots: list[dict[str, Any]] = []
    callables: dict[int, Recipients | None] = {}
    # (branch, path prefix, index after it, owning deliver, outcome or None for on_failure)
    pending: list[tuple[Sequence[Step], str, int | None, int, str | None]] = []
    names: dict[str, int] = {}
    # (slot, outcome or None for a goto step, target name, description for errors)
    jumps: list[tuple[int, str | None, str, str]] = []

    def lay_out(seq: Sequence[Step], prefix: str, after: int | None) -> int:
        first = len(slots)
        slots.extend({} for _ in seq)
        for offset, step in enumerate(seq):
            index = first + offset
            nxt = index + 1 if offset + 1 < len(seq) else after
            path = f"{prefix}{offset}"
            name = getattr(step, "name", None)
            if name is not None:
                if name in names:
                    raise InvalidWorkflowError(
                        f"step {path} is named {name!r}, like step {slots[names[name]]['path']}; "
                        "step names must be unique"
                    )
                names[name] = index
            if isinstance(step, Deliver):
                callables[index] = step.to
                slot: dict[str, Any] = {"op": "deliver", "path": path, "channel": step.channel,
                                        "to": _ref(step.to), "next": nxt, "on_failure": None}
                if step.on_failure:
                    pending.append((step.on_failure, f"{path}.on_failure.", nxt, index, None))
                for outcome, branch in step.on:
                    if len(branch) == 1 and isinstance(branch[0], Goto):
                        jumps.append((index, outcome, branch[0].target,
                                      f"step {path} (deliver {step.channel}): on[{outcome!r}]"))
                    else:
                        pending.append((branch, f"{path}.on.{outcome}.", nxt, index, outcome))
                # Keys appear only when used, so workflows declared before
                # routes existed keep their stored fingerprints.
                if step.on:
                    slot["routes"] = {}
            elif isinstance(step, Wait):
                slot = {"op": "wait", "path": path, "next": nxt,
                        "seconds": None if step.duration is None else step.duration.total_seconds(),
                        "unless": list(step.unless), "until": list(step.until)}
            elif isinstance(step, Goto):
                slot = {"op": "goto", "path": path, "target": None}
                jumps.append((index, None, step.target, f"step {path}: goto({step.target!r})"))
            else:
                slot = {"op": "stop", "path": path}
            if name is not None:
                slot["name"] = name
            slots[index] = slot
        return first

    lay_out(steps, "", None)
    while pending:
        branch, prefix, after, owner, outcome = pending.pop(0)
        first = lay_out(branch, prefix, after)
        if outcome is None:
            slots[owner]["on_failure"] = first
        else:
            slots[owner]["routes"][outcome] = first
    for index, outcome, target, where in jumps:
        if target not in names:
            raise InvalidWorkflowError(
                f"{where} jumps to {target!r}, but no step has that name "
                f"(named steps: {', '.join(map(repr, sorted(names))) or 'none'})"
            )
        if outcome is None:
            slots[index]["target"] = names[target]
        else:
            slots[index]["routes"][outcome] = names[target]
    program = build_program({"format": 1, "steps": slots}, callables)
    check_can_end(program)
    return program


def program_from_spec(spec: Mapping[str, Any]) -> Program:
    """Rebuild a program from its stored JSON form (``to`` functions imported by name).

    Args:
        spec: a ``chimeway_workflow_definitions.steps`` value.
    """
    callables: dict[int, Recipients | None] = {}
    for index, slot in enumerate(spec.get("steps", [])):
        if slot.get("op") == "deliver" and slot.get("to"):
            callables[index] = _resolve(str(slot["to"]))
    return build_program(dict(spec), callables)


def _ref(fn: Recipients | None) -> str | None:
    if fn is None:
        return None
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}:{name}"


def _resolve(ref: str) -> Recipients | None:
    # Best effort: module-level functions resolve; lambdas and closures do not,
    # and the engine then stops the run with a reason instead of guessing.
    module_name, _, qualname = ref.partition(":")
    if "<" in qualname:
        return None
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except Exception:  # importing user code may fail in any way; the run records it
        return None
    return target if callable(target) else None


# --- registration --------------------------------------------------------------

_PROGRAMS: dict[tuple[str, int], Program] = {}
_LOCK = threading.Lock()


def validate_workflow(cls: Any) -> Program:
    """Check a notifier's ``workflow`` when its class is defined, and register it.

    Args:
        cls: the ``Notifier`` subclass (its ``key``, ``version``, ``workflow``,
            ``templates`` and whether it overrides ``build``).

    Raises:
        InvalidWorkflowError: the steps are malformed, a delivering step has
            no way to render its channel, or the same key and version were
            already defined with different steps.
    """
    steps = cls.workflow
    where = f"notifier {cls.__qualname__}"
    if steps is None:
        raise InvalidWorkflowError(f"{where} has no workflow")
    try:
        program = compile_workflow(list(steps) if isinstance(steps, tuple) else steps)
    except InvalidWorkflowError as exc:
        raise InvalidWorkflowError(f"{where}: {exc}") from None
    builds = overrides_build(cls)
    for op in program.ops:
        if isinstance(op, DeliverOp) and not builds and op.channel not in cls.templates:
            raise InvalidWorkflowError(
                f"{where}: step {op.path} delivers over {op.channel!r}, but the notifier has no "
                f"templates for it (templates: {', '.join(sorted(cls.templates)) or 'none'}) and no build()"
            )
    key = (cls.key, cls.version)
    with _LOCK:
        existing = _PROGRAMS.get(key)
        if existing is not None and existing.fingerprint != program.fingerprint:
            raise InvalidWorkflowError(
                f"{where}: notifier {cls.key!r} version {cls.version} was already defined with "
                "different workflow steps; bump `version` when the steps change"
            )
        _PROGRAMS[key] = program
    return program


def overrides_build(cls: Any) -> bool:
    """Whether a notifier class defines its own ``build()`` (instead of templates only).

    Args:
        cls: the ``Notifier`` subclass.
    """
    return "build" in {name for klass in cls.__mro__[:-1] for name in vars(klass) if klass.__name__ != "Notifier"}


def program_for(key: str, version: int) -> Program | None:
    """The program registered in this process for a notifier version, if any.

    Args:
        key: the notifier key.
        version: the notifier version.
    """
    return _PROGRAMS.get((key, version))
