"""The one owner of delivery state: statuses, allowed transitions, leases.

Every change of a delivery's ``status`` goes through a function of this
module, the way a job queue's engine declares every job transition. Writers
name the statuses they move *from*; :func:`check_transition` refuses any
move the table below does not allow, so a new writer cannot invent one::

    pending ─────┐                 ┌─▶ succeeded ──▶ cancelled (provider bounce)
    failed  ─────┼─ claim ─▶ dispatched ─▶ failed (retry at not_before)
    deferred ────┘      ▲          ├─▶ cancelled (permanent, bounced, retries exhausted)
                        │          └─▶ pending (its lease expired: re-driven)
                        └──── lease expired, re-claimed through pending

    pending / failed / deferred ─▶ deferred | suppressed | cancelled (policy, digests, workflows)
    failed / cancelled ─▶ pending (an operator sends it again: :func:`resend`)

Final statuses are ``succeeded``, ``cancelled`` and ``suppressed``.

A ``dispatched`` delivery is a *lease*: ``lease_holder`` names the process
sending it and ``lease_expires_at`` says until when. The holder extends the
lease while the send is in flight (:class:`chimeway.dispatch.executor.LeaseKeeper`);
when the holder dies the lease runs out and :func:`release_expired` puts the
delivery back to ``pending`` (or ``cancelled`` once its attempts are spent),
with a ``lease_expired`` decision that ``explain`` shows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chimeway.db import locked, update_returning
from chimeway.decisions import Decision
from chimeway.errors import InvalidTransitionError
from chimeway.ids import new_id
from chimeway.models import decisions_table, deliveries_table, notifications_table
from chimeway.values import Recipient

__all__ = [
    "CLAIMABLE",
    "FINAL",
    "INITIAL",
    "RESENDABLE",
    "TRANSITIONS",
    "ClaimedRow",
    "PlannedDelivery",
    "Released",
    "Status",
    "apply_decision",
    "cancel",
    "check_transition",
    "claim",
    "decide",
    "extend_leases",
    "new_rows",
    "note",
    "record",
    "release_expired",
    "replace_message",
    "resend",
]


class Status(StrEnum):
    """A delivery's status, as stored and as ``explain`` shows it."""

    PENDING = "pending"
    DISPATCHED = "dispatched"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPPRESSED = "suppressed"
    DEFERRED = "deferred"


FINAL: frozenset[str] = frozenset({Status.SUCCEEDED, Status.CANCELLED, Status.SUPPRESSED})
"""Statuses a delivery never leaves by itself (a provider bounce may still cancel a success)."""

CLAIMABLE: tuple[str, ...] = (Status.PENDING, Status.FAILED, Status.DEFERRED)
"""Statuses an executor may claim once ``not_before`` has passed."""

_STOPPED = frozenset({Status.DEFERRED, Status.SUPPRESSED, Status.CANCELLED})

TRANSITIONS: Mapping[str, frozenset[str]] = {
    Status.PENDING: frozenset({Status.DISPATCHED}) | _STOPPED,
    Status.FAILED: frozenset({Status.DISPATCHED, Status.PENDING}) | _STOPPED,
    Status.DEFERRED: frozenset({Status.DISPATCHED}) | _STOPPED,
    Status.DISPATCHED: frozenset({Status.PENDING, Status.SUCCEEDED, Status.FAILED}) | _STOPPED,
    Status.SUCCEEDED: frozenset({Status.CANCELLED}),
    Status.CANCELLED: frozenset({Status.PENDING}),
    Status.SUPPRESSED: frozenset(),
}
"""Status → the statuses it may move to."""


def check_transition(from_statuses: Iterable[str], to: str) -> tuple[str, ...]:
    """Refuse a move the state machine does not allow; returns the from-statuses.

    Args:
        from_statuses: the statuses the writer moves from.
        to: the status it moves to.

    Raises:
        InvalidTransitionError: one of the moves is not allowed.
    """
    sources = tuple(from_statuses)
    if to not in TRANSITIONS:
        raise InvalidTransitionError(f"{to!r} is not a delivery status")
    for source in sources:
        if to not in TRANSITIONS.get(source, frozenset()):
            raise InvalidTransitionError(f"a delivery cannot move from {source!r} to {to!r}")
    return sources


def _decision_row(delivery_id: uuid.UUID, at: datetime, event: str, checkpoint: str | None,
                  detail: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": new_id(), "delivery_id": delivery_id, "at": at, "event": event,
            "checkpoint": checkpoint, "detail": dict(detail)}


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
        **_decision_row(delivery_id, now, decision.event, checkpoint, decision.detail())))
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
        **_decision_row(delivery_id, now, decision.event, checkpoint, decision.detail())))
    return bool(changed)


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
                     [_decision_row(i, now, event, checkpoint, row_detail) for i in done])
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
                     [_decision_row(i, now, event, checkpoint, d) for i, d in details.items()])


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
        **_decision_row(delivery_id, now, "resent", "operator", {"from_status": before, **dict(detail)})))
    return str(before)


# --- new deliveries ----------------------------------------------------------------------------


INITIAL: frozenset[str] = frozenset({Status.PENDING, Status.DEFERRED, Status.SUPPRESSED, Status.CANCELLED})
"""Statuses a delivery may be planned in."""


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
        deliveries.append({
            "id": d.id, "notification_id": d.notification_id, "event_id": event_id, "tenant": tenant,
            "recipient_id": d.recipient.id, "channel": d.channel, "step": d.step, "status": d.status,
            "reason": d.reason, "message": d.fields, "attempts": 0, "not_before": d.not_before,
            "created_at": now, "updated_at": now, "completed_at": now if d.status in FINAL else None,
        })
        decisions += [_decision_row(d.id, now, item["event"], item.get("checkpoint"), item.get("detail", {}))
                      for item in d.decisions]
    return deliveries, decisions


# --- leases ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ClaimedRow:
    """A delivery just claimed: what the executor needs to send it."""

    id: uuid.UUID
    notification_id: uuid.UUID
    event_id: uuid.UUID
    tenant: str
    channel: str
    message: dict[str, Any]
    attempts: int
    created_at: datetime
    recipient: dict[str, Any]
    notifier_key: str


_CLAIM_COLUMNS = ("id", "notification_id", "event_id", "tenant", "channel", "message", "attempts",
                  "created_at")


def claim(
    conn: Connection,
    ids: Sequence[uuid.UUID],
    *,
    holder: str,
    now: datetime,
    lease_until: datetime,
    channels: Iterable[str],
) -> list[ClaimedRow]:
    """Claim due deliveries for one attempt each: ``dispatched`` under ``holder``'s lease.

    Only deliveries in a claimable status, due, and on a channel this process
    has (``channels``) are claimed; the rest are left as they are.

    Args:
        conn: the claim transaction.
        ids: the deliveries wanted.
        holder: who sends them (stored as ``lease_holder``).
        now: the clock's time.
        lease_until: when the lease runs out unless extended.
        channels: channel names configured in this process.

    Returns:
        the claimed rows, in the order of ``ids``.
    """
    check_transition(CLAIMABLE, Status.DISPATCHED)
    d, n = deliveries_table, notifications_table
    statement = (
        sa.update(d)
        .where(
            d.c.id.in_(list(ids)),
            d.c.status.in_(CLAIMABLE),
            sa.or_(d.c.not_before.is_(None), d.c.not_before <= now),
            d.c.channel.in_(list(channels)),
        )
        .values(status=Status.DISPATCHED, attempts=d.c.attempts + 1, dispatched_at=now, updated_at=now,
                lease_holder=holder, lease_expires_at=lease_until)
    )
    wanted = [d.c[name] for name in _CLAIM_COLUMNS]
    rows = update_returning(conn, statement, [*wanted, n.c.recipient, n.c.notifier_key],
                            join=n, on=n.c.id == d.c.notification_id)
    by_id = {row.id: row for row in rows}
    return [
        ClaimedRow(id=row.id, notification_id=row.notification_id, event_id=row.event_id, tenant=row.tenant,
                   channel=row.channel, message=row.message, attempts=row.attempts, created_at=row.created_at,
                   recipient=row.recipient, notifier_key=row.notifier_key)
        for row in (by_id.get(i) for i in dict.fromkeys(ids)) if row is not None
    ]


def extend_leases(conn: Connection, ids: Sequence[uuid.UUID], *, holder: str, until: datetime) -> int:
    """Push out the leases ``holder`` still holds on ``ids``; returns how many it holds.

    Args:
        conn: a short transaction.
        ids: deliveries this process is sending.
        holder: this process's lease holder name.
        until: the new expiry.
    """
    d = deliveries_table
    return int(conn.execute(
        sa.update(d).where(d.c.id.in_(list(ids)), d.c.status == Status.DISPATCHED, d.c.lease_holder == holder)
        .values(lease_expires_at=until)
    ).rowcount)


def record(conn: Connection, updates: Sequence[Mapping[str, Any]], *, now: datetime) -> dict[uuid.UUID, str]:
    """Write each attempt's result onto its delivery; returns every delivery's status afterwards.

    Only the lease's holder, for the attempt it claimed, may change a
    ``dispatched`` delivery — except that a success is always written while
    the delivery is still ``dispatched`` (the message went out: nobody should
    send it again). A result that loses (the delivery was cancelled, or its
    lease expired and another holder took it) changes nothing; its attempt
    row is still written by the caller.

    Args:
        conn: the record transaction.
        updates: one mapping per attempt with ``b_id``, ``b_status``, ``b_reason``,
            ``b_completed_at``, ``b_not_before``, ``b_provider_message_id``,
            ``b_holder``, ``b_attempt`` and ``b_succeeded``.
        now: the clock's time.
    """
    for update in updates:
        check_transition([Status.DISPATCHED], update["b_status"])
    d = deliveries_table
    statement = (
        sa.update(d)
        .where(
            d.c.id == sa.bindparam("b_id"),
            d.c.status == Status.DISPATCHED,
            sa.or_(
                sa.and_(d.c.lease_holder == sa.bindparam("b_holder"), d.c.attempts == sa.bindparam("b_attempt")),
                sa.bindparam("b_succeeded", type_=sa.Boolean) == sa.true(),
            ),
        )
        .values(
            status=sa.bindparam("b_status"),
            reason=sa.bindparam("b_reason"),
            completed_at=sa.bindparam("b_completed_at"),
            not_before=sa.func.coalesce(sa.bindparam("b_not_before", type_=d.c.not_before.type), d.c.not_before),
            provider_message_id=sa.func.coalesce(
                sa.bindparam("b_provider_message_id", type_=d.c.provider_message_id.type),
                d.c.provider_message_id),
            updated_at=now,
        )
    )
    # One statement for every row (executemany): the values differ per row, the shape does not.
    conn.execute(statement, list(updates))
    ids = [u["b_id"] for u in updates]
    return {row.id: row.status for row in conn.execute(sa.select(d.c.id, d.c.status).where(d.c.id.in_(ids)))}


@dataclass(frozen=True, kw_only=True)
class Released:
    """Deliveries whose lease ran out, by what happened to them.

    Args:
        redrive: put back to ``pending``: to be sent again.
        exhausted: cancelled: their attempts were spent.
    """

    redrive: tuple[uuid.UUID, ...] = ()
    exhausted: tuple[uuid.UUID, ...] = ()

    def __len__(self) -> int:
        return len(self.redrive) + len(self.exhausted)


def release_expired(
    conn: Connection,
    *,
    now: datetime,
    max_attempts: int,
    ids: Sequence[uuid.UUID] | None = None,
    limit: int = 1000,
) -> Released:
    """Take back deliveries whose lease has run out (their holder died or stalled).

    Each goes back to ``pending`` with a ``lease_expired`` decision naming the
    holder and the expiry — or, when it has used ``max_attempts`` attempts,
    to ``cancelled`` with ``retries_exhausted`` (a message that kills every
    process that sends it must not be retried forever).

    Args:
        conn: a write transaction.
        now: the clock's time.
        max_attempts: attempts a delivery may use.
        ids: only these deliveries (default: any, oldest expiry first).
        limit: at most this many.
    """
    d = deliveries_table
    query = (sa.select(d.c.id, d.c.lease_holder, d.c.lease_expires_at, d.c.attempts)
             .where(d.c.status == Status.DISPATCHED, d.c.lease_expires_at <= now))
    if ids is not None:
        query = query.where(d.c.id.in_(list(ids)))
    else:
        query = query.order_by(d.c.lease_expires_at).limit(limit)
    # Another rescuer holding some of them decides for those.
    rows = conn.execute(locked(query, conn, skip_locked=True)).all()
    if not rows:
        return Released()
    redrive = [row for row in rows if row.attempts < max_attempts]
    exhausted = [row for row in rows if row.attempts >= max_attempts]
    decisions: list[dict[str, Any]] = []
    if redrive:
        check_transition([Status.DISPATCHED], Status.PENDING)
        conn.execute(
            sa.update(d).where(d.c.id.in_([r.id for r in redrive]), d.c.status == Status.DISPATCHED)
            .values(status=Status.PENDING, not_before=None, lease_expires_at=None, updated_at=now)
        )
        decisions += [_decision_row(r.id, now, "lease_expired", "lease", _lease_detail(r, resend=True))
                      for r in redrive]
    if exhausted:
        check_transition([Status.DISPATCHED], Status.CANCELLED)
        conn.execute(
            sa.update(d).where(d.c.id.in_([r.id for r in exhausted]), d.c.status == Status.DISPATCHED)
            .values(status=Status.CANCELLED, lease_expires_at=None, completed_at=now, updated_at=now,
                    reason=f"retries_exhausted: the lease expired during attempt {max_attempts}")
        )
        decisions += [_decision_row(r.id, now, "lease_expired", "lease", _lease_detail(r, resend=False))
                      for r in exhausted]
    conn.execute(sa.insert(decisions_table), decisions)
    return Released(redrive=tuple(r.id for r in redrive), exhausted=tuple(r.id for r in exhausted))


def _lease_detail(row: Any, *, resend: bool) -> dict[str, Any]:
    expired = row.lease_expires_at.isoformat() if row.lease_expires_at is not None else None
    what = "re-sent" if resend else "not re-sent (attempts spent)"
    return {
        "reason": "lease_expired", "holder": row.lease_holder, "expired_at": expired, "attempt": row.attempts,
        "summary": f"{what}: lease of {row.lease_holder} expired at {expired} during attempt {row.attempts}",
    }
