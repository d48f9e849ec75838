"""Sends as leases: claim, extend, record, and take back when the holder is gone."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chimeway.db import among, any_of, is_postgres, locked, rows_json, sql_in, update_returning
from chimeway.deliveries.rows import decision_row
from chimeway.deliveries.states import CLAIMABLE, Status, check_transition
from chimeway.models import attempts_table, decisions_table, deliveries_table, notifications_table
from chimeway.types import stored_values

__all__ = ["ClaimedRow", "Released", "claim", "extend_leases", "record", "release_expired"]


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
    step: int | None = None


_CLAIM_COLUMNS = ("id", "notification_id", "event_id", "tenant", "channel", "message", "attempts",
                  "created_at", "step")


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
    statement, columns = _claim_statement(is_postgres(conn))
    rows = update_returning(conn, statement, columns, join=notifications_table, on=_CLAIM_JOIN, params={
        "ids": list(ids), "channels": list(channels), "now": now, "holder": holder, "lease_until": lease_until,
    })
    by_id = {row.id: row for row in rows}
    return [
        ClaimedRow(id=row.id, notification_id=row.notification_id, event_id=row.event_id, tenant=row.tenant,
                   channel=row.channel, message=row.message, attempts=row.attempts, created_at=row.created_at,
                   recipient=row.recipient, notifier_key=row.notifier_key, step=row.step)
        for row in (by_id.get(i) for i in dict.fromkeys(ids)) if row is not None
    ]


_CLAIM_JOIN = notifications_table.c.id == deliveries_table.c.notification_id


@lru_cache(maxsize=2)
def _claim_statement(postgres: bool) -> tuple[sa.Update, list[sa.ColumnElement[Any]]]:
    # Built once per dialect: building this statement costs more than running it.
    d, n = deliveries_table, notifications_table
    now = sa.bindparam("now", type_=d.c.dispatched_at.type)
    if postgres:
        # The ids are the only way in: status and due time are checked on
        # the rows the primary key finds, in a form no index serves. Left
        # indexable, a claim on a table whose statistics are stale or absent
        # walks every pending delivery in ix_chimeway_deliveries_status_due.
        claimable = sa.func.coalesce(d.c.status, "").in_(CLAIMABLE)
        due = sa.func.coalesce(d.c.not_before, sa.literal_column("'-infinity'::timestamptz")) <= now
    else:
        claimable = d.c.status.in_(CLAIMABLE)
        due = sa.or_(d.c.not_before.is_(None), d.c.not_before <= now)
    statement = (
        sa.update(d)
        .where(
            among(d.c.id, "ids", postgres=postgres),
            claimable,
            due,
            among(d.c.channel, "channels", postgres=postgres),
        )
        .values(status=Status.DISPATCHED, attempts=d.c.attempts + 1, dispatched_at=now, updated_at=now,
                lease_holder=sa.bindparam("holder", type_=d.c.lease_holder.type),
                lease_expires_at=sa.bindparam("lease_until", type_=d.c.lease_expires_at.type))
    )
    return statement, [*(d.c[name] for name in _CLAIM_COLUMNS), n.c.recipient, n.c.notifier_key]


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


def record(
    conn: Connection,
    updates: Sequence[Mapping[str, Any]],
    *,
    attempts: Sequence[Mapping[str, Any]],
    inbox: Mapping[uuid.UUID, tuple[uuid.UUID, Any]],
    now: datetime,
) -> dict[uuid.UUID, str]:
    """Write each attempt's row and its result onto its delivery; returns every delivery's status afterwards.

    Only the lease's holder, for the attempt it claimed, may change a
    ``dispatched`` delivery — except that a success is always written while
    the delivery is still ``dispatched`` (the message went out: nobody should
    send it again). A result that loses (the delivery was cancelled, or its
    lease expired and another holder took it) changes nothing; its attempt
    row is still written.

    On PostgreSQL all of it is one statement (the rows travel as JSON
    documents; data-modifying ``WITH`` parts write the deliveries, the
    attempts and the inbox together).

    Args:
        conn: the record transaction.
        updates: one mapping per attempt with ``b_id``, ``b_status``, ``b_reason``,
            ``b_completed_at``, ``b_not_before``, ``b_provider_message_id``,
            ``b_holder``, ``b_attempt`` and ``b_succeeded``.
        attempts: the ``chimeway_attempts`` rows.
        inbox: delivery id → (notification id, content) for in-app deliveries:
            the notification enters the inbox with that content if the
            delivery is ``succeeded`` afterwards (and was not in it already).
        now: the clock's time.
    """
    for update in updates:
        check_transition([Status.DISPATCHED], update["b_status"])
    d, n = deliveries_table, notifications_table
    ids = [u["b_id"] for u in updates]
    if conn.dialect.name == "postgresql":
        rows = []
        for u in updates:
            row = {k[2:]: v for k, v in u.items()}
            found = inbox.get(u["b_id"])
            if found is not None:
                row["notification_id"] = found[0]
                row["content"] = stored_values(conn, n, [{"inbox_content": found[1]}])[0]["inbox_content"]
            rows.append(row)
        result = conn.execute(sql_in(conn, _RECORD_PG), {
            "rows": rows_json(rows), "attempts": rows_json(stored_values(conn, attempts_table, attempts)),
            "now": now, "dispatched": Status.DISPATCHED, "succeeded": Status.SUCCEEDED,
        })
        changed = {row.id: row.status for row in result}
        missing = [i for i in ids if i not in changed]
    else:
        # One statement per kind of row (executemany): the values differ per row, the shape does not.
        conn.execute(_record_statement(now), list(updates))
        conn.execute(sa.insert(attempts_table), list(attempts))
        changed, missing = {}, ids
    if missing:
        query = sa.select(d.c.id, d.c.status).where(any_of(conn, d.c.id, missing))
        changed.update((row.id, row.status) for row in conn.execute(query))
    entered = [{"b_id": nid, "b_content": content} for did, (nid, content) in inbox.items()
               if changed.get(did) == Status.SUCCEEDED]
    if entered and conn.dialect.name != "postgresql":
        conn.execute(
            sa.update(n).where(n.c.id == sa.bindparam("b_id"), n.c.inbox_at.is_(None))
            .values(inbox_at=now, inbox_content=sa.bindparam("b_content", type_=n.c.inbox_content.type)),
            entered,
        )
    return changed


_RECORD_PG = """
WITH b AS MATERIALIZED (
    SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS b(
        id uuid, status text, reason text, completed_at timestamptz, not_before timestamptz,
        provider_message_id text, holder text, attempt integer, succeeded boolean,
        notification_id uuid, content json)
), changed AS (
    UPDATE {chimeway_deliveries} AS d SET
        status = b.status, reason = b.reason, completed_at = b.completed_at,
        not_before = coalesce(b.not_before, d.not_before),
        provider_message_id = coalesce(b.provider_message_id, d.provider_message_id),
        updated_at = :now
    FROM b
    WHERE d.id = b.id AND d.status = :dispatched
      AND ((d.lease_holder = b.holder AND d.attempts = b.attempt) OR b.succeeded)
    RETURNING d.id, d.status
), attempts AS (
    INSERT INTO {chimeway_attempts} (id, delivery_id, number, outcome, error_class, vendor_code, detail,
                                     provider_message_id, retry_after, duration_ms, started_at)
    SELECT id, delivery_id, number, outcome, error_class, vendor_code, detail,
           provider_message_id, retry_after, duration_ms, started_at
    FROM json_populate_recordset(NULL::{chimeway_attempts}, CAST(:attempts AS json))
), inbox AS (
    UPDATE {chimeway_notifications} AS n SET inbox_at = :now, inbox_content = b.content
    FROM b JOIN changed ON changed.id = b.id
    WHERE n.id = b.notification_id AND b.notification_id IS NOT NULL
      AND changed.status = :succeeded AND n.inbox_at IS NULL
)
SELECT id, status FROM changed
"""


def _record_statement(now: datetime) -> sa.Update:
    d = deliveries_table
    return (
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
        decisions += [decision_row(r.id, now, "lease_expired", "lease", _lease_detail(r, resend=True))
                      for r in redrive]
    if exhausted:
        check_transition([Status.DISPATCHED], Status.CANCELLED)
        conn.execute(
            sa.update(d).where(d.c.id.in_([r.id for r in exhausted]), d.c.status == Status.DISPATCHED)
            .values(status=Status.CANCELLED, lease_expires_at=None, completed_at=now, updated_at=now,
                    reason=f"retries_exhausted: the lease expired during attempt {max_attempts}")
        )
        decisions += [decision_row(r.id, now, "lease_expired", "lease", _lease_detail(r, resend=False))
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
