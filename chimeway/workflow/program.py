"""The compiled form of a workflow: a flat list of ops, its JSON spec, its fingerprint.

One op per step, each knowing the index of the op that follows it. A
``deliver`` op also knows where each of its *outcomes* goes (its routes); a
``goto`` op jumps to a named step. The spec is the JSON form stored once per
notifier version in ``chimeway_workflow_definitions``; a run started before a
deploy is rebuilt from it (:func:`build_program`), routes and all.

This module knows nothing of the DSL a notifier writes (``chimeway.workflow.steps``
compiles that into a spec); it holds what both a fresh compile and a stored
spec become, and the check that every path through a program can end.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from chimeway.errors import InvalidWorkflowError
from chimeway.values import Recipient

__all__ = [
    "FAILURES",
    "OUTCOMES",
    "DeliverOp",
    "GotoOp",
    "Op",
    "Program",
    "Recipients",
    "StopOp",
    "WaitOp",
    "build_program",
    "check_can_end",
]

Recipients = Callable[[Mapping[str, Any], Recipient], "Recipient | Sequence[Recipient]"]

# How a step failed for good, from the cancelled deliveries' reasons.
FAILURES = ("bounced", "retries_exhausted", "permanent")
# Every outcome a deliver step can route on; ``failed`` is any of FAILURES.
OUTCOMES = ("succeeded", "suppressed", *FAILURES, "failed")


@dataclass(frozen=True, kw_only=True)
class DeliverOp:
    """A compiled ``deliver``.

    Args:
        index: its position in the program.
        path: where it was declared (``"2"``, ``"0.on.bounced.0"``).
        channel: the channel name.
        to: the recipient function, when importable.
        to_ref: ``module:qualname`` of ``to``.
        on_failure: where any failure goes (the ``on_failure=`` branch).
        next: the op after it (``None``: the run completes).
        name: the step's name, if it has one.
        routes: outcome → op index, from ``on={...}``.
    """

    index: int
    path: str
    channel: str
    to: Recipients | None
    to_ref: str | None
    on_failure: int | None
    next: int | None
    name: str | None = None
    routes: Mapping[str, int] = field(default_factory=dict)

    def route(self, outcome: str) -> tuple[str | None, int | None]:
        """Which route an outcome takes and the op it leads to.

        An outcome's own route wins; a failure without one takes the
        ``failed`` route, then ``on_failure``; anything else moves on to
        ``next``.

        Args:
            outcome: one of :data:`OUTCOMES`.

        Returns:
            the route taken (an outcome, ``"on_failure"``, or ``None`` for
            the default) and the op index (``None``: the run completes).
        """
        if outcome in self.routes:
            return outcome, self.routes[outcome]
        if outcome in FAILURES or outcome == "failed":
            if "failed" in self.routes:
                return "failed", self.routes["failed"]
            if self.on_failure is not None:
                return "on_failure", self.on_failure
        return None, self.next


@dataclass(frozen=True, kw_only=True)
class WaitOp:
    """A compiled ``wait``: ``duration`` (``None``: until a signal), signal names, ``next``."""

    index: int
    path: str
    duration: timedelta | None
    unless: tuple[str, ...]
    until: tuple[str, ...]
    next: int | None
    name: str | None = None

    @property
    def signals(self) -> tuple[str, ...]:
        """Every signal name this wait reacts to."""
        return self.unless + self.until


@dataclass(frozen=True, kw_only=True)
class StopOp:
    """A compiled ``stop``."""

    index: int
    path: str


@dataclass(frozen=True, kw_only=True)
class GotoOp:
    """A compiled ``goto``: the run continues at ``target``."""

    index: int
    path: str
    target: int


Op = DeliverOp | WaitOp | StopOp | GotoOp


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
        """A short human description of one step (``"2 deliver email"``, ``"4 [sms_step] deliver sms"``).

        Args:
            index: the step index.
        """
        if index is None or not 0 <= index < len(self.ops):
            return "-"
        op = self.ops[index]
        if isinstance(op, DeliverOp):
            return (f"{_label(op.path, op.name)} deliver {op.channel}"
                    + (" (escalation)" if op.to_ref else ""))
        if isinstance(op, WaitOp):
            parts = [f"{_label(op.path, op.name)} wait"]
            if op.duration is not None:
                parts.append(f"{'timeout ' if op.until else ''}{op.duration}")
            if op.unless:
                parts.append("unless " + "|".join(op.unless))
            if op.until:
                parts.append("until " + "|".join(op.until))
            return " ".join(parts)
        if isinstance(op, GotoOp):
            target = self.ops[op.target]
            name = getattr(target, "name", None)
            return f"{op.path} goto {name or target.path}"
        return f"{op.path} stop"


def _label(path: str, name: str | None) -> str:
    return f"{path} [{name}]" if name else path


def build_program(spec: dict[str, Any], callables: Mapping[int, Recipients | None]) -> Program:
    """A program from its JSON spec; the fingerprint is the spec's SHA-256.

    Args:
        spec: ``{"format": 1, "steps": [...]}``.
        callables: the ``to`` function of each escalating deliver op, by index.
    """
    ops: list[Op] = []
    for index, slot in enumerate(spec["steps"]):
        kind = slot["op"]
        if kind == "deliver":
            ops.append(DeliverOp(index=index, path=slot["path"], channel=slot["channel"],
                                 to=callables.get(index), to_ref=slot.get("to"),
                                 on_failure=slot.get("on_failure"), next=slot.get("next"),
                                 name=slot.get("name"), routes=dict(slot.get("routes") or {})))
        elif kind == "wait":
            seconds = slot.get("seconds")
            ops.append(WaitOp(index=index, path=slot["path"],
                              duration=None if seconds is None else timedelta(seconds=seconds),
                              unless=tuple(slot.get("unless", ())), until=tuple(slot.get("until", ())),
                              next=slot.get("next"), name=slot.get("name")))
        elif kind == "goto":
            ops.append(GotoOp(index=index, path=slot["path"], target=int(slot["target"])))
        else:
            ops.append(StopOp(index=index, path=slot["path"]))
    raw = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return Program(ops=tuple(ops), fingerprint=hashlib.sha256(raw.encode()).hexdigest(), spec=spec)


def _successors(op: Op) -> Iterator[int | None]:
    if isinstance(op, DeliverOp):
        for outcome in OUTCOMES:
            yield op.route(outcome)[1]
    elif isinstance(op, WaitOp):
        yield op.next
    elif isinstance(op, GotoOp):
        yield op.target


def check_can_end(program: Program) -> None:
    """Refuse a program with a loop that no outcome, signal or stop can leave.

    A run ends by running past its last step, at a ``stop()``, or when an
    ``unless=`` signal arrives during a wait. Every step a run can reach must
    have some path to one of those; a loop of jumps and steps with no way out
    would send and wait forever.

    Args:
        program: a freshly compiled program.

    Raises:
        InvalidWorkflowError: naming the steps caught in the loop.
    """
    ops = program.ops
    reachable: set[int] = set()
    todo: list[int | None] = [0]
    while todo:
        index = todo.pop()
        if index is None or index in reachable:
            continue
        reachable.add(index)
        todo.extend(_successors(ops[index]))
    can_end = {op.index for op in ops
               if isinstance(op, StopOp) or (isinstance(op, WaitOp) and op.unless)}
    changed = True
    while changed:
        changed = False
        for op in ops:
            if op.index not in can_end and any(n is None or n in can_end for n in _successors(op)):
                can_end.add(op.index)
                changed = True
    stuck = sorted(reachable - can_end)
    if stuck:
        raise InvalidWorkflowError(
            "the workflow can never end: step(s) " + ", ".join(program.describe(i) for i in stuck)
            + " loop with no route to the end, a stop() or a wait(unless=...) signal"
        )
