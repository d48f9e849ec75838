"""The outbox: deliveries waiting to be handed to an outside engine (Celery).

A row is written in the same transaction as its delivery — so a rollback
leaves no row and nothing is ever published for it — and deleted in the
transaction that publishes it. Whoever publishes takes rows with
``FOR UPDATE SKIP LOCKED`` (:func:`take`): two relays racing over the same
rows never both publish one in a pass, and a relay that dies before its
commit leaves its rows for the next one (a task published twice sends once:
the executor's lease decides).

A row is also where a delivery waits when it is not due yet: a retry after a
temporary failure, a quiet-hours deferral, a send in flight elsewhere whose
lease may run out. Its ``due_at`` says when to publish it, so nothing waits
inside the broker for long (long Celery ETAs are redelivered by Redis after
its visibility timeout and break RabbitMQ's consumer timeout).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chimeway.db import insert, locked
from chimeway.deliveries import CLAIMABLE
from chimeway.dispatch.base import Due
from chimeway.models import deliveries_table, outbox_table

__all__ = ["Taken", "add", "backlog", "lost", "put_back", "take"]


@dataclass(frozen=True, kw_only=True)
class Taken:
    """An outbox row taken for publishing (deleted, uncommitted).

    Args:
        delivery_id: the delivery.
        due_at: when it is due (publish with an ETA when that is ahead).
        reason: why it was in the outbox (``planned``, ``retry``, ``lease_expired``, ...).
        created_at: when the row was written.
        publish_failures: how many publishes of it failed before.
    """

    delivery_id: uuid.UUID
    due_at: datetime
    reason: str
    created_at: datetime
    publish_failures: int


def add(conn: Connection, dues: Sequence[Due], *, reason: str, now: datetime) -> None:
    """Put deliveries in the outbox, due at their ``not_before`` (or now).

    A delivery already there keeps one row, due at the earlier of the two
    times: waking early is harmless (the task finds it not due and puts it
    back), waking late is not.

    Args:
        conn: the transaction that decided (the caller's, for planned deliveries).
        dues: the deliveries.
        reason: stored, and shown by ``explain`` when the row is published.
        now: the clock's time.
    """
    if not dues:
        return
    o = outbox_table
    rows = {d.id: {"delivery_id": d.id, "due_at": d.not_before or now, "reason": reason[:50],
                   "created_at": now, "publish_failures": 0, "last_error": None} for d in dues}
    statement = insert(conn, o)
    earlier = statement.excluded.due_at < o.c.due_at
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[o.c.delivery_id],
            set_={"due_at": sa.case((earlier, statement.excluded.due_at), else_=o.c.due_at),
                  "reason": sa.case((earlier, statement.excluded.reason), else_=o.c.reason)},
        ),
        list(rows.values()),
    )


def take(conn: Connection, *, until: datetime, limit: int,
         ids: Sequence[uuid.UUID] | None = None) -> list[Taken]:
    """Take (delete) up to ``limit`` rows due by ``until``, skipping rows another transaction holds.

    The rows stay deleted only if the caller's transaction commits; publish
    them before it does.

    Args:
        conn: the publishing transaction.
        until: rows due at or before this time.
        limit: at most this many.
        ids: only these deliveries (the ones a commit just planned).
    """
    o = outbox_table
    wanted = sa.select(o.c.delivery_id).where(o.c.due_at <= until)
    if ids is not None:
        wanted = wanted.where(o.c.delivery_id.in_(list(ids)))
    wanted = locked(wanted.order_by(o.c.due_at).limit(limit), conn, skip_locked=True)
    rows = conn.execute(
        sa.delete(o).where(o.c.delivery_id.in_(wanted.scalar_subquery()))
        .returning(o.c.delivery_id, o.c.due_at, o.c.reason, o.c.created_at, o.c.publish_failures)
    ).all()
    taken = [Taken(delivery_id=r.delivery_id, due_at=r.due_at, reason=r.reason, created_at=r.created_at,
                   publish_failures=r.publish_failures) for r in rows]
    taken.sort(key=lambda t: (t.due_at, t.delivery_id))
    return taken


def put_back(conn: Connection, rows: Iterable[Taken], *, error: str, now: datetime) -> None:
    """Return rows that could not be published, counting the failure.

    Args:
        conn: the publishing transaction.
        rows: rows taken by :func:`take` and not published.
        error: what went wrong (kept on the row for operators).
        now: the clock's time.
    """
    values = [{"delivery_id": r.delivery_id, "due_at": r.due_at, "reason": r.reason, "created_at": r.created_at,
               "publish_failures": r.publish_failures + 1, "last_error": error[:2000]} for r in rows]
    if not values:
        return
    o = outbox_table
    statement = insert(conn, o)
    conn.execute(statement.on_conflict_do_update(
        index_elements=[o.c.delivery_id],
        set_={"publish_failures": statement.excluded.publish_failures, "last_error": statement.excluded.last_error},
    ), values)


def lost(conn: Connection, *, now: datetime, idle: timedelta, channels: Iterable[str],
         limit: int) -> list[uuid.UUID]:
    """Deliveries that should have been sent by now, with no outbox row: their task was lost.

    A broker that loses a message (Redis without persistence, a worker that
    took it with early acknowledgement and died) leaves its delivery
    claimable and untouched. One that has been due and idle for ``idle``
    is published again.

    Args:
        conn: any connection.
        now: the clock's time.
        idle: how long a due delivery may wait untouched (above the longest
            broker backlog, or waiting tasks are published twice).
        channels: channels this process can send through.
        limit: at most this many.
    """
    d, o = deliveries_table, outbox_table
    cutoff = now - idle
    return list(conn.execute(
        sa.select(d.c.id).where(
            d.c.status.in_(CLAIMABLE),
            d.c.updated_at <= cutoff,
            sa.or_(d.c.not_before.is_(None), d.c.not_before <= cutoff),
            d.c.channel.in_(list(channels)),
            ~sa.exists().where(o.c.delivery_id == d.c.id),
        ).order_by(d.c.id).limit(limit)
    ).scalars())


def backlog(conn: Connection, *, now: datetime) -> dict[str, int]:
    """How many rows wait: ``due`` (publishable now), ``later``, ``failing`` (a publish failed)."""
    o = outbox_table
    row = conn.execute(sa.select(
        sa.func.count().filter(o.c.due_at <= now),
        sa.func.count().filter(o.c.due_at > now),
        sa.func.count().filter(o.c.publish_failures > 0),
    )).one()
    return {"due": int(row[0]), "later": int(row[1]), "failing": int(row[2])}
