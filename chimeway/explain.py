"""Why each delivery did what it did: timelines built from rows."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chimeway.deliveries import FINAL, Status
from chimeway.errors import NotFoundError
from chimeway.ids import as_uuid
from chimeway.models import (
    attempts_table,
    decisions_table,
    deliveries_table,
    events_table,
    notifications_table,
)

__all__ = [
    "Explanation", "TimelineEntry", "Trace", "explain", "format_explanation", "format_trace", "trace", "traces_of",
]


@dataclass(frozen=True, kw_only=True)
class TimelineEntry:
    """One thing that happened to a delivery.

    Args:
        at: when.
        event: ``planned``, ``rendered``, ``attempt``, a decision (``deferred``,
            ``suppressed``, ``recovered``, ...) or the final status.
        detail: what and why (JSON values).
    """

    at: datetime
    event: str
    detail: dict[str, Any]

    def __iter__(self) -> Any:
        # Lets callers unpack entries as (at, event, detail) tuples.
        return iter((self.at, self.event, self.detail))


@dataclass(frozen=True, kw_only=True)
class Explanation:
    """A delivery's status, the reason for it, and how it got there."""

    delivery_id: uuid.UUID
    event_id: uuid.UUID
    notification_id: uuid.UUID
    notifier_key: str
    recipient_id: str
    channel: str
    tenant: str | None
    status: str
    reason: str | None
    attempts: int
    timeline: tuple[TimelineEntry, ...]

    def __str__(self) -> str:
        return format_explanation(self)


@dataclass(frozen=True, kw_only=True)
class Trace:
    """An event and everything it produced."""

    event_id: uuid.UUID
    notifier_key: str
    tenant: str | None
    idempotency_key: str
    actor: str | None
    created_at: datetime
    notifications: tuple[dict[str, Any], ...]
    deliveries: tuple[Explanation, ...]
    correlation_id: str | None = None

    def __str__(self) -> str:
        return format_trace(self)


def explain(conn: Connection, delivery_id: uuid.UUID | str) -> Explanation:
    """Build the explanation of one delivery."""
    did = as_uuid(delivery_id, name="delivery_id")
    d, e = deliveries_table, events_table
    row = conn.execute(
        sa.select(d, e.c.notifier_key, e.c.notifier_version).join(e, e.c.id == d.c.event_id).where(d.c.id == did)
    ).first()
    if row is None:
        raise NotFoundError(f"no delivery with id {did}")
    return _explain_rows(conn, [row])[0]


def _explain_rows(conn: Connection, rows: list[Any]) -> list[Explanation]:
    ids = [row.id for row in rows]
    a, dd = attempts_table, decisions_table
    attempts: dict[uuid.UUID, list[Any]] = {i: [] for i in ids}
    for att in conn.execute(sa.select(a).where(a.c.delivery_id.in_(ids)).order_by(a.c.number)).all():
        attempts[att.delivery_id].append(att)
    decisions: dict[uuid.UUID, list[Any]] = {i: [] for i in ids}
    for dec in conn.execute(sa.select(dd).where(dd.c.delivery_id.in_(ids)).order_by(dd.c.at, dd.c.id)).all():
        decisions[dec.delivery_id].append(dec)
    out = []
    for row in rows:
        timeline: list[TimelineEntry] = [
            TimelineEntry(at=row.created_at, event="planned", detail={
                "notifier": row.notifier_key, "version": row.notifier_version,
                "recipient": row.recipient_id, "channel": row.channel,
                **({"step": row.step} if row.step is not None else {}),
            }),
            TimelineEntry(at=row.created_at, event="rendered", detail={"fields": sorted(row.message)}),
        ]
        for dec in decisions[row.id]:
            detail = dict(dec.detail or {})
            if dec.checkpoint:
                detail["checkpoint"] = dec.checkpoint
            timeline.append(TimelineEntry(at=dec.at, event=dec.event, detail=detail))
        for att in attempts[row.id]:
            detail = {"number": att.number, "outcome": att.outcome, "duration_ms": round(att.duration_ms, 2)}
            for key in ("error_class", "vendor_code", "detail", "provider_message_id", "retry_after"):
                value = getattr(att, key)
                if value is not None:
                    detail[key] = value
            timeline.append(TimelineEntry(at=att.started_at, event="attempt", detail=detail))
        if row.status in FINAL and row.completed_at is not None:
            final: dict[str, Any] = {"reason": row.reason} if row.reason else {}
            timeline.append(TimelineEntry(at=row.completed_at, event=row.status, detail=final))
        elif row.status == Status.DISPATCHED and row.dispatched_at is not None:
            # A send in flight: who holds its lease, and until when.
            timeline.append(TimelineEntry(at=row.dispatched_at, event=Status.DISPATCHED.value, detail={
                "attempt": row.attempts, "holder": row.lease_holder,
                "lease_until": row.lease_expires_at.isoformat() if row.lease_expires_at else None}))
        elif row.status in (Status.FAILED, Status.DEFERRED) and row.not_before is not None:
            timeline.append(TimelineEntry(at=row.updated_at, event=row.status, detail={
                "reason": row.reason, "until": row.not_before.isoformat()}))
        order = {"planned": 0, "rendered": 1}
        timeline.sort(key=lambda t: (t.at, order.get(t.event, 2)))
        out.append(Explanation(
            delivery_id=row.id, event_id=row.event_id, notification_id=row.notification_id,
            notifier_key=row.notifier_key, recipient_id=row.recipient_id, channel=row.channel,
            tenant=row.tenant or None, status=row.status, reason=row.reason, attempts=row.attempts,
            timeline=tuple(timeline),
        ))
    return out


def trace(conn: Connection, event_id: uuid.UUID | str) -> Trace:
    """An event with its notifications and every delivery's explanation."""
    eid = as_uuid(event_id, name="event_id")
    e = events_table
    event = conn.execute(sa.select(e).where(e.c.id == eid)).first()
    if event is None:
        raise NotFoundError(f"no event with id {eid}")
    return traces_of(conn, [event])[0]


def traces_of(conn: Connection, events: Sequence[Any], *, recipient: str | None = None) -> list[Trace]:
    """The traces of many event rows at once (a few statements, whatever their number).

    Args:
        conn: a connection.
        events: rows of ``chimeway_events``, in the order wanted.
        recipient: keep only this recipient's notifications and deliveries.
    """
    if not events:
        return []
    ids = [event.id for event in events]
    d, e, n = deliveries_table, events_table, notifications_table
    mine_n = [n.c.recipient_id == recipient] if recipient is not None else []
    mine_d = [d.c.recipient_id == recipient] if recipient is not None else []
    notifications: dict[uuid.UUID, list[Any]] = {i: [] for i in ids}
    for row in conn.execute(sa.select(n).where(n.c.event_id.in_(ids), *mine_n).order_by(n.c.id)):
        notifications[row.event_id].append(row)
    rows = conn.execute(
        sa.select(d, e.c.notifier_key, e.c.notifier_version).join(e, e.c.id == d.c.event_id)
        .where(d.c.event_id.in_(ids), *mine_d).order_by(d.c.id)
    ).all()
    explained: dict[uuid.UUID, list[Explanation]] = {i: [] for i in ids}
    for x in _explain_rows(conn, list(rows)) if rows else []:
        explained[x.event_id].append(x)
    return [
        Trace(
            event_id=event.id, notifier_key=event.notifier_key, tenant=event.tenant or None,
            idempotency_key=event.idempotency_key, actor=event.actor, created_at=event.created_at,
            correlation_id=event.correlation_id,
            notifications=tuple(
                {"id": r.id, "recipient_id": r.recipient_id, "inbox_at": r.inbox_at, "read_at": r.read_at}
                for r in notifications[event.id]
            ),
            deliveries=tuple(explained[event.id]),
        )
        for event in events
    ]


def format_explanation(x: Explanation) -> str:
    """A readable multi-line rendering (used by ``chimeway explain``)."""
    lines = [
        f"delivery {x.delivery_id}",
        f"  notifier {x.notifier_key} → {x.recipient_id} via {x.channel}"
        + (f" (tenant {x.tenant})" if x.tenant else ""),
        f"  status   {x.status}" + (f" — {x.reason}" if x.reason else ""),
        f"  attempts {x.attempts}",
        "  timeline:",
    ]
    for entry in x.timeline:
        detail = ", ".join(f"{k}={v}" for k, v in entry.detail.items())
        line = f"    {entry.at.isoformat(timespec='milliseconds')}  {entry.event:<10} {detail}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def format_trace(t: Trace) -> str:
    """A readable rendering of an event and each of its deliveries (``chimeway trace``)."""
    header = (f"event {t.event_id}  {t.notifier_key}  key={t.idempotency_key}"
              + (f"  tenant={t.tenant}" if t.tenant else ""))
    return "\n\n".join([header, *(format_explanation(d) for d in t.deliveries)])
