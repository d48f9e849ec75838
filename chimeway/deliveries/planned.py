"""Deliveries planned but not written yet: their decisions and the rows they become."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chimeway.decisions import Decision
from chimeway.deliveries.rows import decision_row
from chimeway.deliveries.states import FINAL, INITIAL, Status
from chimeway.errors import InvalidTransitionError
from chimeway.values import Recipient

__all__ = ["PlannedDelivery", "PlannedLease", "decide", "new_rows"]


@dataclass(frozen=True, kw_only=True)
class PlannedLease:
    """A claim made at planning: the delivery is written ``dispatched`` under this lease.

    The ``sync`` dispatcher sends right after the commit that plans a
    delivery, so it claims it in the row it inserts (attempt 1) instead of
    inserting it ``pending`` and updating it: one statement less, and a
    rollback undoes both together.

    Args:
        holder: the process that will send it (``lease_holder``).
        at: the claim time (``dispatched_at``).
        until: when the lease runs out unless extended.
    """

    holder: str
    at: datetime
    until: datetime


@dataclass(kw_only=True)
class PlannedDelivery:
    """A delivery planned but not written yet: checkpoints may still stop it.

    Args:
        id: the delivery id.
        notification_id: its notification.
        recipient: who receives it.
        channel: the channel name.
        fields: the rendered message.
        status: ``pending``, or ``deferred``/``suppressed``/``cancelled`` once a checkpoint decided.
        reason: why, when not ``pending``.
        step: the workflow step that planned it.
        not_before: when a deferred delivery is due.
        decisions: decision rows to write with it (``event``, ``checkpoint``, ``detail``).
        lease: set when the delivery is written already claimed (``pending``
            deliveries only): its row says ``dispatched``, attempt 1.
    """

    id: uuid.UUID
    notification_id: uuid.UUID
    recipient: Recipient
    channel: str
    fields: dict[str, Any]
    status: str = Status.PENDING.value
    reason: str | None = None
    step: int | None = None
    not_before: datetime | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    lease: PlannedLease | None = None


def new_rows(planned: Iterable[tuple[PlannedDelivery, uuid.UUID, str]], now: datetime
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The delivery rows and decision rows of planned deliveries.

    Args:
        planned: each delivery with its event id and (stored) tenant.
        now: the planning time (``created_at``).

    Returns:
        delivery rows, decision rows.
    """
    deliveries: list[dict[str, Any]] = []
    decisions: list[dict[str, Any]] = []
    for d, event_id, tenant in planned:
        if d.status not in INITIAL:
            raise InvalidTransitionError(f"a delivery cannot be planned as {d.status!r}")
        row = {
            "id": d.id, "notification_id": d.notification_id, "event_id": event_id, "tenant": tenant,
            "recipient_id": d.recipient.id, "channel": d.channel, "step": d.step, "status": d.status,
            "reason": d.reason, "message": d.fields, "attempts": 0, "not_before": d.not_before,
            "created_at": now, "updated_at": now, "completed_at": now if d.status in FINAL else None,
            "dispatched_at": None, "lease_holder": None, "lease_expires_at": None,
        }
        if d.lease is not None:
            if d.status != Status.PENDING or d.not_before is not None:
                raise InvalidTransitionError(f"a {d.status} delivery cannot be claimed at planning")
            row.update(status=Status.DISPATCHED.value, attempts=1, dispatched_at=d.lease.at, updated_at=d.lease.at,
                       lease_holder=d.lease.holder, lease_expires_at=d.lease.until)
        deliveries.append(row)
        decisions += [decision_row(d.id, now, item["event"], item.get("checkpoint"), item.get("detail", {}))
                      for item in d.decisions]
    return deliveries, decisions


def decide(planned: PlannedDelivery, decision: Decision, *, checkpoint: str) -> None:
    """Record a decision on a delivery not written yet (its row and decision rows go in together).

    Args:
        planned: the planned delivery.
        decision: what was decided; one that lets it through (``pending``) only adds the explanation.
        checkpoint: ``planning``, ``workflow``, ...
    """
    if decision.stops:
        if decision.status not in INITIAL:
            raise InvalidTransitionError(f"a delivery cannot be planned as {decision.status!r}")
        planned.status = decision.status
        planned.reason = decision.reason
    if decision.until is not None:
        planned.not_before = decision.until
    planned.decisions.append({"event": decision.event, "checkpoint": checkpoint, "detail": decision.detail()})
