"""Why a workflow run is where it is: its transitions, read back in order."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chimeway.errors import NotFoundError
from chimeway.ids import as_uuid
from chimeway.models import (
    workflow_definitions_table,
    workflow_deliveries_table,
    workflow_runs_table,
    workflow_transitions_table,
)
from chimeway.workflow.steps import Program, program_for, program_from_spec

__all__ = ["RunExplanation", "RunTransition", "explain_run", "format_run"]

_WHY = {
    "started": "the notification was triggered",
    "delivery_succeeded": "the step's delivery succeeded",
    "delivery_failed": "the step's delivery failed",
    "delivery_suppressed": "the step's delivery was suppressed",
    "wait_elapsed": "the wait elapsed",
    "timeout": "no awaited signal came before the timeout",
    "signal_until": "the awaited signal arrived",
    "signal_unless": "a stopping signal arrived while waiting",
    "stop_step": "the workflow reached stop()",
    "cancelled": "the run was cancelled",
    "workflow_unavailable": "this process does not know the run's workflow version",
    "route_loop": "the step's routes led back to it with nothing to wait for",
}
_FAILURE = {"bounced": "bounced", "retries_exhausted": "retries exhausted", "permanent": "permanent",
            "failed": "in different ways"}


@dataclass(frozen=True, kw_only=True)
class RunTransition:
    """One change of a run's state or step.

    Args:
        seq: 1, 2, ... in order.
        at: when.
        from_state / to_state: the run's state before and after.
        from_step / to_step: the step index before and after.
        step: a description of the step the run moved to.
        reason: why (``delivery_failed``, ``signal_unless``, ``wait_elapsed``, ...).
        context: the details (signal, deliveries and their statuses, the
            outcome and failure kind, the route or branch taken, ...).
    """

    seq: int
    at: datetime
    from_state: str | None
    to_state: str
    from_step: int | None
    to_step: int | None
    step: str
    reason: str
    context: dict[str, Any]

    @property
    def why(self) -> str:
        """The reason in words."""
        text = _WHY.get(self.reason, self.reason)
        if self.reason.startswith("signal_") and "signal" in self.context:
            text += f" ({self.context['signal']} from {self.context.get('actor')})"
        failure = self.context.get("failure")
        if failure and self.reason == "delivery_failed":
            text += f" ({_FAILURE.get(failure, failure)})"
        if self.context.get("branch"):
            text += f", so the run took its {self.context['branch']} branch"
        elif self.context.get("route") and self.reason.startswith("delivery_"):
            text += f", so the run followed its on[{self.context['route']!r}] route"
        elif self.reason == "stop_step" and self.context.get("route"):
            text += f" by the on[{self.context['route']!r}] route of the step before"
        return text


@dataclass(frozen=True, kw_only=True)
class RunExplanation:
    """A run, its steps and every transition it made.

    Args:
        run_id: the run.
        notification_id: the notification it belongs to.
        event_id: the triggering event.
        notifier_key / version / fingerprint: the workflow it follows.
        recipient_id: the recipient (the actor signals are matched against).
        tenant: the tenant, or ``None``.
        state: ``active``, ``waiting``, ``completed``, ``stopped`` or ``cancelled``.
        step: the current step index.
        wait_until: when the current wait falls due.
        steps: a description of every step, by index.
        deliveries: delivery ids per step index.
        transitions: in order.
    """

    run_id: uuid.UUID
    notification_id: uuid.UUID
    event_id: uuid.UUID
    notifier_key: str
    version: int
    fingerprint: str
    recipient_id: str
    tenant: str | None
    state: str
    step: int | None
    wait_until: datetime | None
    steps: tuple[str, ...]
    deliveries: dict[int, tuple[uuid.UUID, ...]]
    transitions: tuple[RunTransition, ...]

    def __str__(self) -> str:
        return format_run(self)


def explain_run(conn: Connection, run_id: uuid.UUID | str | None = None, *,
                notification_id: uuid.UUID | str | None = None) -> RunExplanation:
    """Build the explanation of one run (by id, or by its notification).

    Args:
        conn: a connection.
        run_id: the run.
        notification_id: the notification whose run to explain instead.
    """
    r, t, d, link = (workflow_runs_table, workflow_transitions_table, workflow_definitions_table,
                     workflow_deliveries_table)
    if run_id is not None:
        where = r.c.id == as_uuid(run_id, name="run_id")
    elif notification_id is not None:
        where = r.c.notification_id == as_uuid(notification_id, name="notification_id")
    else:
        raise NotFoundError("explain_run needs run_id or notification_id")
    run = conn.execute(sa.select(r).where(where)).first()
    if run is None:
        raise NotFoundError(f"no workflow run for {run_id or notification_id}")
    program: Program | None = program_for(run.notifier_key, run.notifier_version)
    if program is None or program.fingerprint != run.fingerprint:
        spec = conn.execute(sa.select(d.c.steps).where(
            d.c.notifier_key == run.notifier_key, d.c.version == run.notifier_version,
            d.c.fingerprint == run.fingerprint)).scalar()
        program = None if spec is None else program_from_spec(spec)
    steps = tuple(program.describe(i) for i in range(len(program.ops))) if program else ()
    deliveries: dict[int, list[uuid.UUID]] = {}
    for row in conn.execute(sa.select(link.c.step, link.c.delivery_id).where(link.c.run_id == run.id)
                            .order_by(link.c.step, link.c.delivery_id)):
        deliveries.setdefault(row.step, []).append(row.delivery_id)
    transitions = tuple(
        RunTransition(seq=row.seq, at=row.at, from_state=row.from_state, to_state=row.to_state,
                      from_step=row.from_step, to_step=row.to_step,
                      step=program.describe(row.to_step) if program else str(row.to_step),
                      reason=row.reason, context=dict(row.context or {}))
        for row in conn.execute(sa.select(t).where(t.c.run_id == run.id).order_by(t.c.seq))
    )
    return RunExplanation(
        run_id=run.id, notification_id=run.notification_id, event_id=run.event_id,
        notifier_key=run.notifier_key, version=run.notifier_version, fingerprint=run.fingerprint,
        recipient_id=run.recipient_id, tenant=run.tenant or None, state=run.state, step=run.step,
        wait_until=run.wait_until, steps=steps,
        deliveries={k: tuple(v) for k, v in deliveries.items()}, transitions=transitions,
    )


def format_run(x: RunExplanation) -> str:
    """A readable multi-line rendering of a run's journey.

    Args:
        x: the explanation.
    """
    lines = [
        f"workflow run {x.run_id}",
        f"  notifier {x.notifier_key} v{x.version} → {x.recipient_id}" + (f" (tenant {x.tenant})" if x.tenant else ""),
        f"  state    {x.state}" + (f" at step {x.step}" if x.step is not None else "")
        + (f", due {x.wait_until.isoformat(timespec='seconds')}" if x.wait_until else ""),
        "  steps:",
        *(f"    {line}" for line in x.steps),
        "  transitions:",
    ]
    for tr in x.transitions:
        lines.append(f"    {tr.at.isoformat(timespec='seconds')}  {tr.to_state:<9} [{tr.step}]  {tr.why}")
    return "\n".join(lines)
