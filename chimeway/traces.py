"""Finding traces, and counting how a notifier's deliveries ended.

``find_traces`` looks events up by recipient, correlation id, notifier,
tenant and time, newest first, a page at a time (keyset paging on the
event id, so a page costs the same on the first and the thousandth page).
Every lookup is served by an index:

- by recipient: ``ix_chimeway_notifications_trace`` (recipient, tenant, event);
- by correlation id: ``ix_chimeway_events_correlation``;
- by notifier: ``ix_chimeway_events_notifier`` (notifier, id);
- outcomes of a notifier since a time: ``ix_chimeway_events_notifier_time``
  (notifier, created_at), then the deliveries' ``event_id`` index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chimeway.clock import utc
from chimeway.db import TextBefore
from chimeway.deliveries import FINAL
from chimeway.errors import InvalidInputError
from chimeway.explain import Trace, traces_of
from chimeway.ids import as_uuid
from chimeway.models import deliveries_table, events_table, notifications_table

__all__ = ["MAX_TRACES_PAGE", "OutcomeCount", "Outcomes", "TracePage", "count_outcomes", "find_traces"]

MAX_TRACES_PAGE = 200


@dataclass(frozen=True, kw_only=True)
class TracePage:
    """Traces, newest first; pass ``next_cursor`` as ``cursor`` for the next page.

    Args:
        traces: the events found, each with its notifications and explained deliveries.
        next_cursor: where the next page starts, or ``None`` on the last page.
    """

    traces: tuple[Trace, ...]
    next_cursor: str | None

    def __iter__(self) -> Any:
        return iter(self.traces)

    def __len__(self) -> int:
        return len(self.traces)


@dataclass(frozen=True, kw_only=True)
class OutcomeCount:
    """How many deliveries have one status for one reason.

    Args:
        status: the delivery status.
        reason: the reason's code (``opted_out``, ``bounced``,
            ``retries_exhausted``, ...: the text before ``": "``), or ``None``.
        count: how many deliveries.
        final: whether the status is final (``succeeded``, ``cancelled``, ``suppressed``).
    """

    status: str
    reason: str | None
    count: int
    final: bool


@dataclass(frozen=True, kw_only=True)
class Outcomes:
    """A notifier's deliveries counted by status and reason.

    Args:
        notifier_key: the notifier.
        since: only events triggered at or after this time (``None``: all).
        tenant: only this tenant (``None``: every tenant).
        counts: one entry per status × reason, largest first.
    """

    notifier_key: str
    since: datetime | None
    tenant: str | None
    counts: tuple[OutcomeCount, ...] = field(default=())

    @property
    def total(self) -> int:
        """Every delivery counted."""
        return sum(c.count for c in self.counts)

    @property
    def by_status(self) -> dict[str, int]:
        """Deliveries per status."""
        out: dict[str, int] = {}
        for c in self.counts:
            out[c.status] = out.get(c.status, 0) + c.count
        return out

    @property
    def in_flight(self) -> int:
        """Deliveries not final yet (pending, dispatched, failed and waiting to retry, deferred)."""
        return sum(c.count for c in self.counts if not c.final)

    def __str__(self) -> str:
        head = f"{self.notifier_key}: {self.total} deliveries" + (
            f" since {self.since.isoformat()}" if self.since else "") + (
            f" (tenant {self.tenant})" if self.tenant else "")
        return "\n".join([head, *(f"  {c.count:>8}  {c.status:<10} {c.reason or ''}".rstrip()
                                  for c in self.counts)])


def _check(name: str, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidInputError(f"{name} must be a non-empty string or None, got {value!r}")


def _since(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInputError(f"since must be an aware datetime or None, got {value!r}")
    return utc(value)


def find_traces(
    conn: Connection,
    *,
    recipient: str | None = None,
    correlation_id: str | None = None,
    notifier: str | None = None,
    tenant: str | None = None,
    since: datetime | None = None,
    limit: int = 20,
    cursor: str | None = None,
) -> TracePage:
    """Events matching every filter given, newest first, with their explained deliveries.

    Args:
        conn: a connection.
        recipient: events that notified this recipient; the traces then hold
            only this recipient's notifications and deliveries.
        correlation_id: events triggered with this correlation id.
        notifier: events of this notifier key.
        tenant: events of this tenant (``None``: any tenant).
        since: events triggered at or after this time.
        limit: traces per page (1..200).
        cursor: ``next_cursor`` of the previous page.
    """
    for name, value in (("recipient", recipient), ("correlation_id", correlation_id),
                        ("notifier", notifier), ("tenant", tenant)):
        _check(name, value)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_TRACES_PAGE:
        raise InvalidInputError(f"limit must be an int between 1 and {MAX_TRACES_PAGE}, got {limit!r}")
    after = _since(since)
    before = as_uuid(cursor, name="cursor") if cursor is not None else None
    e, n = events_table, notifications_table
    where: list[sa.ColumnElement[bool]] = []
    if correlation_id is not None:
        where.append(e.c.correlation_id == correlation_id)
    if recipient is not None:
        # The recipient's notifications, in event order through their index.
        conds: list[sa.ColumnElement[bool]] = [n.c.recipient_id == recipient]
        if tenant is not None:
            conds.append(n.c.tenant == tenant)
        if notifier is not None:
            conds.append(n.c.notifier_key == notifier)
        if after is not None:
            conds.append(n.c.created_at >= after)
        if before is not None:
            conds.append(n.c.event_id < before)
        if where:
            conds.append(n.c.event_id.in_(sa.select(e.c.id).where(*where)))
        page = (sa.select(n.c.event_id).where(*conds).group_by(n.c.event_id)
                .order_by(n.c.event_id.desc()).limit(limit + 1))
        ids = list(conn.execute(page).scalars())
        rows = {r.id: r for r in conn.execute(sa.select(e).where(e.c.id.in_(ids[:limit])))} if ids else {}
        events = [rows[i] for i in ids[:limit] if i in rows]
    else:
        if tenant is not None:
            where.append(e.c.tenant == tenant)
        if notifier is not None:
            where.append(e.c.notifier_key == notifier)
        if after is not None:
            where.append(e.c.created_at >= after)
        if before is not None:
            where.append(e.c.id < before)
        events = list(conn.execute(sa.select(e).where(*where).order_by(e.c.id.desc()).limit(limit + 1)))
        ids = [event.id for event in events]
        events = events[:limit]
    traces = traces_of(conn, events, recipient=recipient)
    more = len(ids) > limit and bool(traces)
    return TracePage(traces=tuple(traces), next_cursor=str(traces[-1].event_id) if more else None)


def count_outcomes(
    conn: Connection, notifier: str, *, since: datetime | None = None, tenant: str | None = None,
) -> Outcomes:
    """Count a notifier's deliveries by status and reason code.

    Args:
        conn: a connection.
        notifier: the notifier key.
        since: only deliveries of events triggered at or after this time.
        tenant: only this tenant (``None``: every tenant).
    """
    if not isinstance(notifier, str) or not notifier:
        raise InvalidInputError(f"notifier must be a notifier key, got {notifier!r}")
    _check("tenant", tenant)
    after = _since(since)
    d, e = deliveries_table, events_table
    reason = TextBefore(d.c.reason, ":").label("reason")
    events = sa.select(e.c.id).where(e.c.notifier_key == notifier)
    if after is not None:
        events = events.where(e.c.created_at >= after)
    if tenant is not None:
        events = events.where(e.c.tenant == tenant)
    query = (sa.select(d.c.status, reason, sa.func.count().label("n"))
             .where(d.c.event_id.in_(events.scalar_subquery()))
             .group_by(d.c.status, reason))
    counts = sorted(
        (OutcomeCount(status=row.status, reason=row.reason, count=int(row.n), final=row.status in FINAL)
         for row in conn.execute(query)),
        key=lambda c: (-c.count, c.status, c.reason or ""),
    )
    return Outcomes(notifier_key=notifier, since=after, tenant=tenant, counts=tuple(counts))

