"""The workflow steps DSL, its validation, and the compiled program.

::

    workflow = [
        deliver("in_app"),
        wait(minutes=30, unless="notification.read"),
        deliver("email"),
        wait(hours=4, unless="notification.read"),
        deliver("sms", to=manager_of),
    ]

A workflow is compiled into a flat *program*: one op per step, each knowing
the index of the op that follows it. A ``deliver`` step's ``on_failure``
steps are appended after the main list and continue with the step after
that ``deliver`` (unless they ``stop()``). The index of an op is the step
number stored on runs, transitions and deliveries.

The program's JSON form is fingerprinted (SHA-256) and stored once per
notifier version, so a run follows the steps it started with after a deploy.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from chimeway.errors import InvalidWorkflowError
from chimeway.values import Recipient

__all__ = [
    "Deliver",
    "DeliverOp",
    "Program",
    "Recipients",
    "Step",
    "Stop",
    "StopOp",
    "Wait",
    "WaitOp",
    "compile_workflow",
    "deliver",
    "program_for",
    "program_from_spec",
    "stop",
    "validate_workflow",
    "wait",
]

Recipients = Callable[[Mapping[str, Any], Recipient], "Recipient | Sequence[Recipient]"]
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
    """

    channel: str
    to: Recipients | None = None
    on_failure: tuple[Step, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Wait:
    """Pause the run.

    Args:
        duration: how long to wait (``None`` with ``until``: until the signal).
        unless: signal names that stop the run if they arrive while waiting.
        until: signal names that end the wait early (the run continues).
        timeout: with ``until``, how long to wait for the signal at most.
    """

    duration: timedelta | None = None
    unless: tuple[str, ...] = ()
    until: tuple[str, ...] = ()

    @property
    def signals(self) -> tuple[str, ...]:
        """Every signal name this wait reacts to."""
        return self.unless + self.until


@dataclass(frozen=True, kw_only=True)
class Stop:
    """End the run here (state ``stopped``)."""


Step = Deliver | Wait | Stop


def deliver(
    channel: str,
    to: Recipients | None = None,
    on_failure: str | Sequence[Step] | None = None,
) -> Deliver:
    """A step that delivers over ``channel``.

    Args:
        channel: a configured channel name (``"in_app"``, ``"email"``, ...).
        to: ``(params, recipient) -> Recipient | list[Recipient]``: deliver to
            these recipients instead (escalation); default the run's recipient.
        on_failure: a channel name, or a list of steps, taken when the
            delivery fails for good; the run then continues after this step.
    """
    if not isinstance(channel, str) or not channel.strip():
        raise InvalidWorkflowError(f"deliver() needs a channel name, got {channel!r}")
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
        _check_steps(branch, f"deliver({channel!r}).on_failure")
    return Deliver(channel=channel, to=to, on_failure=branch)


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
    """
    parts = {"seconds": seconds, "minutes": minutes, "hours": hours, "days": days}
    for name, value in parts.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidWorkflowError(f"wait({name}=...) must be a number, got {value!r}")
        if value < 0:
            raise InvalidWorkflowError(f"wait({name}={value!r}) is negative; a wait must not go back in time")
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
    return Wait(duration=total, unless=unless_names, until=until_names)


def stop() -> Stop:
    """A step that ends the run (state ``stopped``, reason ``stop_step``)."""
    return Stop()


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
        if not isinstance(step, Deliver | Wait | Stop):
            raise InvalidWorkflowError(
                f"{where}[{index}] is a {type(step).__name__}, not a step (use deliver(), wait(), stop())"
            )


# --- the compiled program ----------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DeliverOp:
    """A compiled ``deliver``: ``next`` on success, ``on_failure`` when every delivery failed."""

    index: int
    path: str
    channel: str
    to: Recipients | None
    to_ref: str | None
    on_failure: int | None
    next: int | None


@dataclass(frozen=True, kw_only=True)
class WaitOp:
    """A compiled ``wait``: ``duration`` (``None``: until a signal), signal names, ``next``."""

    index: int
    path: str
    duration: timedelta | None
    unless: tuple[str, ...]
    until: tuple[str, ...]
    next: int | None

    @property
    def signals(self) -> tuple[str, ...]:
        """Every signal name this wait reacts to."""
        return self.unless + self.until


@dataclass(frozen=True, kw_only=True)
class StopOp:
    """A compiled ``stop``."""

    index: int
    path: str


Op = DeliverOp | WaitOp | StopOp


@dataclass(frozen=True, kw_only=True)
class Program:
    """A compiled workflow: ``ops[0]`` runs first; ``next=None`` completes the run.

    Args:
        ops: the steps, by index.
        fingerprint: SHA-256 of ``spec``.
        spec: the JSON form stored in ``chimeway_workflow_definitions``.
    """

    ops: tuple[Op, ...]
    fingerprint: str
    spec: dict[str, Any]

    def describe(self, index: int | None) -> str:
        """A short human description of one step (``"2 deliver email"``).

        Args:
            index: the step index.
        """
        if index is None or not 0 <= index < len(self.ops):
            return "-"
        op = self.ops[index]
        if isinstance(op, DeliverOp):
            return f"{op.path} deliver {op.channel}" + (" (escalation)" if op.to_ref else "")
        if isinstance(op, WaitOp):
            parts = [f"{op.path} wait"]
            if op.duration is not None:
                parts.append(f"{'timeout ' if op.until else ''}{op.duration}")
            if op.unless:
                parts.append("unless " + "|".join(op.unless))
            if op.until:
                parts.append("until " + "|".join(op.until))
            return " ".join(parts)
        return f"{op.path} stop"


def compile_workflow(steps: Sequence[Step]) -> Program:
    """Flatten ``steps`` (and their ``on_failure`` branches) into a ``Program``.

    Args:
        steps: the notifier's ``workflow``.
    """
    _check_steps(steps, "workflow")
    slots: list[dict[str, Any]] = []
    callables: dict[int, Recipients | None] = {}
    pending: list[tuple[Sequence[Step], str, int | None, int]] = []

    def lay_out(seq: Sequence[Step], prefix: str, after: int | None) -> int:
        first = len(slots)
        slots.extend({} for _ in seq)
        for offset, step in enumerate(seq):
            index = first + offset
            nxt = index + 1 if offset + 1 < len(seq) else after
            path = f"{prefix}{offset}"
            if isinstance(step, Deliver):
                callables[index] = step.to
                slots[index] = {"op": "deliver", "path": path, "channel": step.channel,
                                "to": _ref(step.to), "next": nxt, "on_failure": None}
                if step.on_failure:
                    pending.append((step.on_failure, f"{path}.on_failure.", nxt, index))
            elif isinstance(step, Wait):
                slots[index] = {"op": "wait", "path": path, "next": nxt,
                                "seconds": None if step.duration is None else step.duration.total_seconds(),
                                "unless": list(step.unless), "until": list(step.until)}
            else:
                slots[index] = {"op": "stop", "path": path}
        return first

    lay_out(steps, "", None)
    while pending:
        branch, prefix, after, owner = pending.pop(0)
        slots[owner]["on_failure"] = lay_out(branch, prefix, after)
    spec = {"format": 1, "steps": slots}
    return _program(spec, callables)


def program_from_spec(spec: Mapping[str, Any]) -> Program:
    """Rebuild a program from its stored JSON form (``to`` functions imported by name).

    Args:
        spec: a ``chimeway_workflow_definitions.steps`` value.
    """
    callables: dict[int, Recipients | None] = {}
    for index, slot in enumerate(spec.get("steps", [])):
        if slot.get("op") == "deliver" and slot.get("to"):
            callables[index] = _resolve(str(slot["to"]))
    return _program(dict(spec), callables)


def _program(spec: dict[str, Any], callables: Mapping[int, Recipients | None]) -> Program:
    ops: list[Op] = []
    for index, slot in enumerate(spec["steps"]):
        kind = slot["op"]
        if kind == "deliver":
            ops.append(DeliverOp(index=index, path=slot["path"], channel=slot["channel"],
                                 to=callables.get(index), to_ref=slot.get("to"),
                                 on_failure=slot.get("on_failure"), next=slot.get("next")))
        elif kind == "wait":
            seconds = slot.get("seconds")
            ops.append(WaitOp(index=index, path=slot["path"],
                              duration=None if seconds is None else timedelta(seconds=seconds),
                              unless=tuple(slot.get("unless", ())), until=tuple(slot.get("until", ())),
                              next=slot.get("next")))
        else:
            ops.append(StopOp(index=index, path=slot["path"]))
    raw = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return Program(ops=tuple(ops), fingerprint=hashlib.sha256(raw.encode()).hexdigest(), spec=spec)


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
