"""Digests: many events for one recipient become one delivery per channel.

The first event for a recipient × channel × digest key opens a batch; its
delivery waits ``deferred`` (reason ``digest``) until the window ends and
then carries the digest. Later events in the window join the batch and their
own deliveries are ``suppressed`` (reason ``digested``). A batch is flushed:

- when its window has ended, by :func:`flush_due` (``app.flush_digests()``,
  a periodic sweep or a cron job), or by the pre-send checkpoint if the
  carrier comes due first;
- early, when it reaches ``max_items``: the event that fills it carries the
  digest and is sent right away; the waiting delivery is suppressed.

At flush time the template gets ``events`` (the params of each event, oldest
first) and ``count``. Events whose notification was already read in the
inbox are left out of other channels' digests; if none are left, the carrier
is suppressed with reason ``digest_all_read``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chimeway.db import insert, locked
from chimeway.decisions import Decision
from chimeway.deliveries import PlannedDelivery, apply_decision, replace_message
from chimeway.errors import InvalidNotifierError
from chimeway.ids import new_id
from chimeway.jsonvalues import key_hash, shown_key
from chimeway.models import (
    deliveries_table,
    digest_items_table,
    digests_table,
    notifications_table,
)
from chimeway.notifier import Notifier, get_notifier
from chimeway.planning import Plan, render_message
from chimeway.templates import render_fields
from chimeway.values import Recipient

__all__ = ["Decorate", "Digest", "check_carrier", "collect", "digest_of", "flush_due"]

RULE = "digest"

# Adds channel-specific fields (the unsubscribe link) to a freshly rendered digest.
Decorate = Callable[[dict[str, Any], Recipient, str, type[Notifier], str], dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class Digest:
    """Batch a notifier's events per recipient into one delivery per window.

    Args:
        window: how long a batch collects events after its first one.
        key: ``params -> str``; events with the same key share a batch
            (default: one batch per recipient).
        max_items: flush early once this many events are collected.
        channels: channels that are digested (default: every channel except
            ``in_app``, so the inbox still gets each event).
        templates: per channel, per field Jinja2 templates for the digest
            (context: ``events``, ``count``, ``recipient`` and the latest
            event's params); without one, the notifier's own templates or
            ``build()`` get the same context.
    """

    window: timedelta
    key: Callable[[Mapping[str, Any]], Any] | None = None
    max_items: int = 50
    channels: Sequence[str] | None = None
    templates: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.window, timedelta) or self.window <= timedelta(0):
            raise InvalidNotifierError(f"Digest window must be a positive timedelta, got {self.window!r}")
        if not isinstance(self.max_items, int) or self.max_items < 1:
            raise InvalidNotifierError(f"Digest max_items must be an int >= 1, got {self.max_items!r}")
        if self.key is not None and not callable(self.key):
            raise InvalidNotifierError("Digest key must be a function of params")

    def applies_to(self, channel: str) -> bool:
        """Whether ``channel`` is digested.

        Args:
            channel: the channel name.
        """
        return channel != "in_app" if self.channels is None else channel in self.channels

    def key_for(self, params: Mapping[str, Any]) -> str:
        """The batch key for one event's params.

        Args:
            params: the event's params.
        """
        if self.key is None:
            return ""
        value = self.key(params)
        return "" if value is None else str(value)[:500]


def digest_of(notifier: type[Notifier]) -> Digest | None:
    """The notifier's ``digest``, checked.

    Args:
        notifier: the notifier class.
    """
    value = notifier.digest
    if value is None:
        return None
    if not isinstance(value, Digest):
        raise InvalidNotifierError(f"notifier {notifier.key!r}: `digest` must be a chimeway.digest.Digest")
    return value


def collect(
    conn: Connection,
    *,
    digest: Digest,
    plan: Plan,
    delivery: PlannedDelivery,
    now: datetime,
    write: bool,
    decorate: Decorate,
) -> list[Decision]:
    """Put one planned delivery into its batch (or, read-only, say what would happen).

    Returns the decisions about the delivery, in order; an early flush also
    replaces its fields with the rendered digest.

    Args:
        conn: the caller's connection, inside its transaction.
        digest: the notifier's digest.
        plan: the plan being written.
        delivery: a ``pending`` delivery on a digested channel.
        now: the planning time.
        write: ``False`` for a preview (reads only).
        decorate: adds channel-specific fields to a rendered digest.
    """
    cls = type(plan.notifier)
    tenant = str(plan.event["tenant"])
    params = dict(plan.event["params"])
    # The batch key comes from the params as given (it may be derived from a
    # secret) and is stored hashed; explain shows it computed from the stored params.
    key = key_hash(digest.key_for(plan.params))
    shown = shown_key(digest.key_for, params)
    d = digests_table
    where = (d.c.status == "open", d.c.tenant == tenant, d.c.notifier_key == cls.key,
             d.c.recipient_id == delivery.recipient.id, d.c.channel == delivery.channel,
             d.c.digest_key == key)
    query = sa.select(d).where(*where)
    row = conn.execute(query.with_for_update() if write else query).first()
    if row is not None and row.flush_at <= now:
        if write:
            _flush(conn, row, now, decorate, checkpoint="planning")
        row = None
    if row is None and write:
        flush_at = now + digest.window
        digest_id = new_id()
        values = {"id": digest_id, "tenant": tenant, "notifier_key": cls.key,
                  "recipient_id": delivery.recipient.id, "channel": delivery.channel,
                  "digest_key": key, "status": "open", "delivery_id": delivery.id, "item_count": 1,
                  "opened_at": now, "flush_at": flush_at, "flushed_at": None}
        stmt = insert(conn, d).values(**values).on_conflict_do_nothing(
            index_elements=["tenant", "notifier_key", "recipient_id", "channel", "digest_key"],
            index_where=d.c.status == "open",
        ).returning(d.c.id)
        # RETURNING, not rowcount: psycopg reports -1 for this statement.
        if conn.execute(stmt).first() is not None:
            _add_item(conn, digest_id, plan, delivery, params, now)
            return [_opened(shown, flush_at, digest_id)]
        # Another transaction opened the batch first; join it.
        row = conn.execute(query.with_for_update()).first()
    if row is None:
        return [_opened(shown, now + digest.window, None)]
    count = row.item_count + 1
    if write:
        _add_item(conn, row.id, plan, delivery, params, now)
        conn.execute(sa.update(d).where(d.c.id == row.id).values(item_count=count))
    if count < digest.max_items:
        return [Decision(
            status="suppressed", reason="digested", rule=RULE,
            summary=f"suppressed: collected into the digest sent at {row.flush_at.isoformat()} ({count} events so far)",
            inputs={"digest_id": str(row.id), "carrier_delivery_id": str(row.delivery_id),
                    "digest_key": shown, "items": count, "flush_at": row.flush_at.isoformat()},
        )]
    # The batch is full: this event's delivery carries the digest now.
    if not write:
        return [Decision(status="pending", reason="digest_full", rule=RULE,
                         summary=f"sent now: digest reached max_items={digest.max_items}",
                         inputs={"digest_id": str(row.id)})]
    rendered = _render(conn, row.id, row.channel, cls, _recipient_of(conn, delivery.notification_id, plan),
                       tenant, decorate)
    conn.execute(sa.update(d).where(d.c.id == row.id).values(
        status="flushed", flushed_at=now, delivery_id=delivery.id))
    apply_decision(conn, row.delivery_id, Decision(
        status="suppressed", reason="digested", rule=RULE,
        summary=f"suppressed: the digest filled up and was sent by delivery {delivery.id}",
        inputs={"digest_id": str(row.id), "carrier_delivery_id": str(delivery.id)},
    ), now, checkpoint="planning", from_status="deferred")
    if rendered is None:
        return [Decision(status="suppressed", reason="digest_all_read", rule=RULE,
                         summary="suppressed: every event in the digest was already read in the inbox",
                         inputs={"digest_id": str(row.id)})]
    fields, included, excluded = rendered
    delivery.fields = fields
    return [Decision(status="pending", reason="max_items", rule=RULE, event_name="digest_flushed",
                     summary=f"digest of {included} events sent early: max_items={digest.max_items} reached",
                     inputs={"digest_id": str(row.id), "count": included, "left_out_read": excluded})]


def _opened(key: str | None, flush_at: datetime, digest_id: uuid.UUID | None) -> Decision:
    return Decision(
        status="deferred", reason="digest", rule=RULE, until=flush_at,
        summary=f"deferred: digest window open until {flush_at.isoformat()}",
        inputs={"digest_key": key, **({"digest_id": str(digest_id)} if digest_id else {})},
    )


def _add_item(conn: Connection, digest_id: uuid.UUID, plan: Plan, delivery: PlannedDelivery,
              params: dict[str, Any], now: datetime) -> None:
    conn.execute(sa.insert(digest_items_table).values(
        id=new_id(), digest_id=digest_id, event_id=plan.event_id, notification_id=delivery.notification_id,
        delivery_id=delivery.id, params=params, at=now,
    ))


def _recipient_of(conn: Connection, notification_id: uuid.UUID, plan: Plan | None = None) -> Recipient:
    if plan is not None:
        for item in plan.notifications:
            if item["id"] == notification_id:
                return Recipient.from_json(item["recipient"])
    raw = conn.execute(
        sa.select(notifications_table.c.recipient).where(notifications_table.c.id == notification_id)
    ).scalar_one()
    return Recipient.from_json(raw)


def _render(
    conn: Connection, digest_id: uuid.UUID, channel: str, cls: type[Notifier], recipient: Recipient,
    tenant: str, decorate: Decorate,
) -> tuple[dict[str, Any], int, int] | None:
    """The digest's fields, with the count of events included and left out as read."""
    i, n = digest_items_table, notifications_table
    rows = conn.execute(
        sa.select(i.c.params, n.c.read_at).outerjoin(n, n.c.id == i.c.notification_id)
        .where(i.c.digest_id == digest_id).order_by(i.c.at, i.c.id)
    ).all()
    skip_read = channel != "in_app"
    events = [dict(r.params) for r in rows if not (skip_read and r.read_at is not None)]
    excluded = len(rows) - len(events)
    if not events:
        return None
    digest = digest_of(cls)
    latest = events[-1]
    templates = digest.templates.get(channel) if digest is not None else None
    if templates is not None:
        context = {**latest, "events": events, "count": len(events), "recipient": recipient, "params": latest}
        fields = render_fields(templates, context, where=f"digest of notifier {cls.key!r}, channel {channel!r}")
    else:
        fields = render_message(cls(), {**latest, "events": events, "count": len(events)}, recipient, channel)
    return decorate(fields, recipient, tenant, cls, channel), len(events), excluded


def _flush(conn: Connection, row: Any, now: datetime, decorate: Decorate, *, checkpoint: str) -> bool:
    """Render a batch into its carrier and close it; ``True`` if the carrier is to be sent."""
    d, dd = digests_table, deliveries_table
    conn.execute(sa.update(d).where(d.c.id == row.id).values(status="flushed", flushed_at=now))
    try:
        cls = get_notifier(row.notifier_key)
    except InvalidNotifierError:
        _close(conn, row.delivery_id, Decision(
            status="cancelled", reason="digest_unknown_notifier", rule=RULE,
            summary=f"cancelled: notifier {row.notifier_key!r} is not registered here"), now, checkpoint)
        return False
    recipient = _recipient_of(conn, conn.execute(
        sa.select(dd.c.notification_id).where(dd.c.id == row.delivery_id)).scalar_one())
    rendered = _render(conn, row.id, row.channel, cls, recipient, row.tenant, decorate)
    if rendered is None:
        _close(conn, row.delivery_id, Decision(
            status="suppressed", reason="digest_all_read", rule=RULE,
            summary="suppressed: every event in the digest was already read in the inbox",
            inputs={"digest_id": str(row.id)}), now, checkpoint)
        return False
    fields, included, excluded = rendered
    replace_message(conn, row.delivery_id, fields, now=now, checkpoint=checkpoint, decision=Decision(
        status="pending", reason="window_ended", rule=RULE, event_name="digest_flushed",
        summary=f"digest of {included} events rendered at window end"
                + (f" ({excluded} already read left out)" if excluded else ""),
        inputs={"digest_id": str(row.id), "count": included, "left_out_read": excluded}))
    return True


def _close(conn: Connection, delivery_id: uuid.UUID, decision: Decision, now: datetime,
           checkpoint: str) -> None:
    # A carrier is ``deferred`` when flushed by a sweep and ``dispatched``
    # when flushed inside the claim that was about to send it.
    for status in ("deferred", "dispatched"):
        if apply_decision(conn, delivery_id, decision, now, checkpoint=checkpoint, from_status=status,
                          undo_attempt=status == "dispatched"):
            return


def flush_due(conn: Connection, now: datetime, decorate: Decorate, *, limit: int = 1000) -> list[uuid.UUID]:
    """Flush every open batch whose window has ended; return the carriers to send.

    Args:
        conn: a write transaction of Chimeway's own.
        now: the clock's time.
        decorate: adds channel-specific fields to a rendered digest.
        limit: at most this many batches.
    """
    d = digests_table
    query = sa.select(d).where(d.c.status == "open", d.c.flush_at <= now).order_by(d.c.flush_at).limit(limit)
    return [row.delivery_id for row in conn.execute(locked(query, conn, skip_locked=True)).all()
            if _flush(conn, row, now, decorate, checkpoint="digest_flush")]


def check_carrier(conn: Connection, delivery_id: uuid.UUID, now: datetime, decorate: Decorate) -> Decision | None:
    """Pre-send check for a delivery that carries a digest.

    An open batch whose window has not ended holds it back; one whose window
    has ended is flushed here, and the delivery goes out on the next claim,
    a second later, with the rendered digest.

    Args:
        conn: the claim transaction.
        delivery_id: the claimed delivery.
        now: the clock's time.
        decorate: adds channel-specific fields to a rendered digest.
    """
    d = digests_table
    query = sa.select(d).where(d.c.delivery_id == delivery_id, d.c.status == "open")
    row = conn.execute(locked(query, conn)).first()
    if row is None:
        return None
    if row.flush_at > now:
        return Decision(status="deferred", reason="digest", until=row.flush_at, rule=RULE,
                        summary=f"deferred: digest window open until {row.flush_at.isoformat()}",
                        inputs={"digest_id": str(row.id)})
    if not _flush(conn, row, now, decorate, checkpoint="before_send"):
        # The carrier was suppressed or cancelled inside _flush; keep it there.
        return Decision(status="suppressed", reason="digest_all_read", rule=RULE,
                        summary="suppressed: every event in the digest was already read",
                        inputs={"digest_id": str(row.id)})
    # The claimed message still holds the single-event text; a short deferral
    # makes the next claim (a queue snooze or the next sweep) read the digest.
    return Decision(status="deferred", reason="digest_ready", until=now + timedelta(seconds=1), rule=RULE,
                    summary="digest rendered at send time; sent on the next pass", inputs={"digest_id": str(row.id)})
