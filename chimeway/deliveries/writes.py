"""Status changes of written deliveries outside a send: decisions, cancellations, re-sends."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chimeway.decisions import Decision
from chimeway.deliveries.rows import decision_row
from chimeway.deliveries.states import CLAIMABLE, FINAL, TRANSITIONS, Status, check_transition
from chimeway.models import decisions_table, deliveries_table

__all__ = ["RESENDABLE", "apply_decision", "cancel", "note", "replace_message", "resend"]


def apply_decision(
    conn: Connection,
    delivery_id: uuid.UUID,
    decision: Decision,
    now: datetime,
    *,
    checkpoint: str,
    from_status: str | None = None,
    undo_attempt: bool = False,
) -> bool:
    """Record a decision on a written delivery: its status, reason and a decision row.

    Args:
        conn: inside the transaction that decided.
        delivery_id: the delivery.
        decision: the verdict.
        now: the clock's time.
        checkpoint: ``planning``, ``before_send``, ...
        from_status: only apply if the delivery is in this status (default:
            any status the verdict may follow).
        undo_attempt: give back the attempt counted by the claim (nothing was sent).

    Returns:
        whether the delivery was in a status the decision could apply to.
    """
    d = deliveries_table
    sources = [from_status] if from_status is not None else [
        s for s, targets in TRANSITIONS.items() if decision.status in targets and s not in FINAL
    ]
    check_transition(sources, decision.status)
    values: dict[str, Any] = {"status": decision.status, "reason": decision.reason, "updated_at": now}
    if decision.status == Status.DEFERRED:
        values["not_before"] = decision.until
    else:
        values["completed_at"] = now
    if undo_attempt:
        values["attempts"] = d.c.attempts - 1
    changed = conn.execute(
        sa.update(d).where(d.c.id == delivery_id, d.c.status.in_(sources)).values(**values)
    ).rowcount
    if not changed:
        return False
    conn.execute(sa.insert(decisions_table).values(
        **decision_row(delivery_id, now, decision.event, checkpoint, decision.detail())))
    return True


def replace_message(conn: Connection, delivery_id: uuid.UUID, fields: Mapping[str, Any], *, now: datetime,
                    checkpoint: str, decision: Decision,
                    from_statuses: Iterable[str] = (Status.DEFERRED, Status.DISPATCHED)) -> bool:
    """Replace a delivery's rendered message (a digest rendered into its carrier), with its decision row.

    The status stays; the reason becomes the decision's.

    Args:
        conn: inside the transaction.
        delivery_id: the delivery.
        fields: the new message.
        now: the clock's time.
        checkpoint: who rendered it.
        decision: why (a decision that lets the delivery through).
        from_statuses: only while the delivery is in one of these.
    """
    d = deliveries_table
    changed = conn.execute(
        sa.update(d).where(d.c.id == delivery_id, d.c.status.in_(list(from_statuses)))
        .values(message=dict(fields), reason=decision.reason, updated_at=now)
    ).rowcount
    conn.execute(sa.insert(decisions_table).values(
        **decision_row(delivery_id, now, decision.event, checkpoint, decision.detail())))
    return bool(changed)


def cancel(
    conn: Connection,
    ids: Sequence[uuid.UUID],
    *,
    reason: str,
    now: datetime,
    checkpoint: str,
    from_statuses: Iterable[str] = CLAIMABLE,
    detail: Mapping[str, Any] | None = None,
    event: str | None = "cancelled",
) -> list[uuid.UUID]:
    """Cancel deliveries still in one of ``from_statuses``; returns those cancelled.

    Each cancelled delivery gets a decision row (``event``, with ``reason`` and ``detail``).

    Args:
        conn: inside the caller's transaction.
        ids: the deliveries.
        reason: the stored reason (``workflow_cancelled``, ``bounced: ...``).
        now: the clock's time.
        checkpoint: who decided (``workflow``, ``provider_feedback``, ...).
        from_statuses: statuses that may be cancelled.
        detail: extra decision details (JSON values).
        event: the decision row's event name; ``None`` writes no decision row.
    """
    if not ids:
        return []
    sources = check_transition(from_statuses, Status.CANCELLED)
    d = deliveries_table
    done = list(conn.execute(
        sa.update(d).where(d.c.id.in_(list(ids)), d.c.status.in_(sources))
        .values(status=Status.CANCELLED, reason=reason, completed_at=now, updated_at=now)
        .returning(d.c.id)
    ).scalars())
    if done and event:
        row_detail = {"reason": reason, **dict(detail or {})}
        conn.execute(sa.insert(decisions_table),
                     [decision_row(i, now, event, checkpoint, row_detail) for i in done])
    return done


def note(conn: Connection, details: Mapping[uuid.UUID, Mapping[str, Any]], *, event: str, checkpoint: str,
         now: datetime) -> None:
    """Write a decision row that changes no status (who published or picked up a delivery).

    Args:
        conn: inside the transaction that did it.
        details: delivery id → the row's details (JSON values).
        event: the timeline event ``explain`` shows (``published``, ``celery_task``).
        checkpoint: who did it.
        now: the clock's time.
    """
    if details:
        conn.execute(sa.insert(decisions_table),
                     [decision_row(i, now, event, checkpoint, d) for i, d in details.items()])


RESENDABLE: tuple[str, ...] = (Status.FAILED, Status.CANCELLED)


def resend(conn: Connection, delivery_id: uuid.UUID, *, now: datetime, detail: Mapping[str, Any]) -> str | None:
    """Put a failed or cancelled delivery back to ``pending``, due now, with a ``resent`` decision.

    Returns the status it left, or ``None`` when it was in neither.

    Args:
        conn: inside the caller's transaction.
        delivery_id: the delivery.
        now: the clock's time.
        detail: the decision's details (who asked).
    """
    d = deliveries_table
    sources = check_transition(RESENDABLE, Status.PENDING)
    before = conn.execute(
        sa.select(d.c.status).where(d.c.id == delivery_id, d.c.status.in_(sources))
    ).scalar()
    if before is None:
        return None
    changed = conn.execute(
        sa.update(d).where(d.c.id == delivery_id, d.c.status == before)
        .values(status=Status.PENDING, reason=None, not_before=None, completed_at=None, updated_at=now)
    ).rowcount
    if not changed:
        return None
    conn.execute(sa.insert(decisions_table).values(
        **decision_row(delivery_id, now, "resent", "operator", {"from_status": before, **dict(detail)})))
    return str(before)
