"""The one executor every delivery goes through: claim, send, record.

1. Claim due deliveries (``pending``/``failed`` → ``dispatched``) in one
   short transaction, so two executors never send the same attempt.
2. Call each channel outside any transaction (provider calls can be slow).
3. Record an append-only attempt and the delivery's new status in one
   transaction; an in-app success makes the notification an inbox item in
   that same transaction.

A crash between 1 and 3 leaves the delivery ``dispatched``; ``recover()``
re-drives it (at-least-once; the stable delivery id lets receivers dedupe).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chimeway.channels.base import Channel
from chimeway.clock import Clock
from chimeway.db import writer
from chimeway.dispatch.base import Due
from chimeway.ids import new_id
from chimeway.models import (
    attempts_table,
    decisions_table,
    deliveries_table,
    notifications_table,
)
from chimeway.values import DeliveryResult, Message, Recipient

__all__ = [
    "Claimed",
    "DeliveryOutcome",
    "Executor",
    "SendDecision",
    "Sent",
    "apply_decision",
    "backoff_seconds",
]

log = logging.getLogger("chimeway.deliveries")

FINAL_STATUSES = ("succeeded", "cancelled", "suppressed")


@dataclass(frozen=True, kw_only=True)
class DeliveryOutcome:
    """What one execution of one delivery ended in.

    Args:
        delivery_id: the delivery.
        status: its status afterwards.
        result: what the channel reported.
        attempt: the attempt number made.
        retry_at: when a ``failed`` delivery is due again.
    """

    delivery_id: uuid.UUID
    status: str
    result: DeliveryResult
    attempt: int
    retry_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class SendDecision:
    """A pre-send checkpoint's verdict that stops a claimed delivery from being sent.

    Args:
        status: ``suppressed`` (final), ``deferred`` (due again at ``until``)
            or ``cancelled`` (final).
        reason: the stored reason, e.g. ``cap_reached`` or ``quiet_hours``.
        until: when a deferred delivery is due again.
        rule: the rule that decided (shown by ``explain``).
        detail: the rule's inputs (JSON values).
    """

    status: str
    reason: str
    until: datetime | None = None
    rule: str | None = None
    detail: Mapping[str, Any] | None = None


BeforeSend = Callable[[Connection, Sequence[Message]], Mapping[uuid.UUID, "SendDecision"]]


def backoff_seconds(attempt: int, *, base: float = 15.0, cap: float = 3600.0) -> float:
    """Exponential backoff for a delivery's next attempt (without jitter)."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


@dataclass(kw_only=True)
class Claimed:
    """A delivery claimed for one attempt (status ``dispatched``)."""

    message: Message
    channel: Channel | None
    attempts: int


@dataclass(kw_only=True)
class Sent:
    """One attempt made, waiting to be recorded."""

    claimed: Claimed
    result: DeliveryResult
    started: datetime
    duration_ms: float
    max_attempts: int


class Executor:
    """Executes deliveries against the configured channels.

    Args:
        engine: Chimeway's engine (the same database the caller writes to).
        channels: channel name → channel.
        clock: the time source.
        max_attempts: attempts before a temporary failure becomes final.
        on_final: called with the outcomes that reached a final state.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        channels: Mapping[str, Channel],
        clock: Clock,
        max_attempts: int = 5,
        on_final: Callable[[Sequence[DeliveryOutcome]], None] | None = None,
        before_send: list[BeforeSend] | None = None,
    ) -> None:
        self.engine = engine
        self.channels = channels
        self.clock = clock
        self.max_attempts = max_attempts
        self.on_final = on_final
        # Pre-send checkpoints, run inside the claim transaction over every
        # claimed message at once: preferences may have changed since planning.
        self.before_send: list[BeforeSend] = before_send if before_send is not None else []

    def execute(
        self,
        delivery_ids: Iterable[uuid.UUID],
        *,
        max_attempts: int | None = None,
        claim_from: Sequence[str] = ("pending", "failed", "deferred"),
    ) -> list[DeliveryOutcome]:
        """Claim, send and record the given deliveries that are due.

        Deliveries already final, not yet due, or claimed by someone else are
        skipped; the return value has one outcome per delivery attempted.

        Args:
            delivery_ids: the deliveries to execute.
            max_attempts: overrides the executor's limit (the queue passes the job's).
            claim_from: statuses that may be claimed.
        """
        ids = list(dict.fromkeys(delivery_ids))
        if not ids:
            return []
        claimed = self.claim(ids, claim_from)
        if not claimed:
            return []
        limit = max_attempts or self.max_attempts
        return self.record([self.send(item, max_attempts=limit) for item in claimed])

    def claim(self, ids: Sequence[uuid.UUID],
              claim_from: Sequence[str] = ("pending", "failed", "deferred")) -> list[Claimed]:
        """Claim due deliveries for one attempt each (one transaction for all).

        Pre-send checkpoints run here; a delivery they stop is not returned.

        Args:
            ids: the deliveries.
            claim_from: statuses that may be claimed.
        """
        return self._claim(list(ids), claim_from)

    def send(self, item: Claimed, *, max_attempts: int | None = None) -> Sent:
        """Make the attempt through the delivery's channel (no transaction held).

        Args:
            item: a claimed delivery.
            max_attempts: the attempt limit to apply when recording.
        """
        started = self.clock.now()
        t0 = time.perf_counter()
        result = self._send(item)
        return Sent(claimed=item, result=result, started=started,
                    duration_ms=(time.perf_counter() - t0) * 1000.0,
                    max_attempts=max_attempts or self.max_attempts)

    def record(self, sent: Sequence[Sent]) -> list[DeliveryOutcome]:
        """Record attempts and new statuses (one transaction for all); notify ``on_final``.

        Args:
            sent: attempts made by :meth:`send`.
        """
        if not sent:
            return []
        outcomes = self._record(sent)
        final = [o for o in outcomes if o.status in FINAL_STATUSES]
        if final and self.on_final is not None:
            self.on_final(final)
        return outcomes

    def _claim(self, ids: list[uuid.UUID], claim_from: Sequence[str]) -> list[Claimed]:
        now = self.clock.now()
        d, n = deliveries_table, notifications_table
        claim = (
            sa.update(d)
            .where(
                d.c.id.in_(ids),
                d.c.status.in_(claim_from),
                sa.or_(d.c.not_before.is_(None), d.c.not_before <= now),
            )
            .values(status="dispatched", attempts=d.c.attempts + 1, dispatched_at=now, updated_at=now)
        )
        wanted = (d.c.id, d.c.notification_id, d.c.event_id, d.c.tenant, d.c.channel,
                  d.c.message, d.c.attempts, d.c.created_at)
        with writer(self.engine).begin() as conn:
            if conn.dialect.name == "postgresql":
                # One round trip: PostgreSQL returns columns of the joined row too.
                rows = conn.execute(
                    claim.where(n.c.id == d.c.notification_id)
                    .returning(*wanted, n.c.recipient, n.c.notifier_key)
                ).all()
            else:
                # SQLite's RETURNING cannot name a joined table.
                claimed_ids = conn.execute(claim.returning(d.c.id)).scalars().all()
                rows = conn.execute(
                    sa.select(*wanted, n.c.recipient, n.c.notifier_key)
                    .join(n, n.c.id == d.c.notification_id)
                    .where(d.c.id.in_(claimed_ids))
                ).all() if claimed_ids else []
            if not rows:
                return []
            by_id = {row.id: row for row in rows}
            claimed: list[tuple[Message, Any]] = []
            for delivery_id in ids:
                row = by_id.get(delivery_id)
                if row is None:
                    continue
                claimed.append((Message(
                    delivery_id=row.id,
                    notification_id=row.notification_id,
                    event_id=row.event_id,
                    tenant=row.tenant or None,
                    channel=row.channel,
                    notifier_key=row.notifier_key,
                    recipient=Recipient.from_json(row.recipient),
                    fields=row.message,
                    attempt=row.attempts,
                    created_at=row.created_at,
                ), row))
            decisions = self._checkpoint(conn, [message for message, _ in claimed])
            out = []
            for message, row in claimed:
                decision = decisions.get(message.delivery_id)
                if decision is not None:
                    apply_decision(conn, message.delivery_id, decision, now, checkpoint="before_send",
                                   from_status="dispatched", undo_attempt=True)
                    continue
                out.append(Claimed(message=message, channel=self.channels.get(row.channel), attempts=row.attempts))
        return out

    def _checkpoint(self, conn: Connection, messages: list[Message]) -> dict[uuid.UUID, SendDecision]:
        decisions: dict[uuid.UUID, SendDecision] = {}
        for check in self.before_send:
            undecided = [m for m in messages if m.delivery_id not in decisions]
            if not undecided:
                break
            decisions.update(check(conn, undecided))
        return decisions

    def _send(self, item: Claimed) -> DeliveryResult:
        if item.channel is None:
            return DeliveryResult.permanent(
                f"no channel named {item.message.channel!r} is configured in this process",
                error_class="UnknownChannel",
            )
        try:
            result = item.channel.send(item.message)
        except Exception as exc:  # a channel bug must not lose the delivery
            log.exception("channel %s raised while sending delivery %s", item.message.channel, item.message.delivery_id)
            return DeliveryResult.temporary(f"{type(exc).__name__}: {exc}"[:500], error_class=type(exc).__name__)
        if not isinstance(result, DeliveryResult):
            return DeliveryResult.temporary(
                f"channel {item.message.channel!r} returned {type(result).__name__}, not a DeliveryResult",
                error_class="InvalidChannelResult",
            )
        return result

    def _record(self, sent: Sequence[Sent]) -> list[DeliveryOutcome]:
        now = self.clock.now()
        d, n = deliveries_table, notifications_table
        attempts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        planned: list[tuple[Sent, str, datetime | None]] = []
        for item in sent:
            message, result = item.claimed.message, item.result
            attempts.append({
                "id": new_id(), "delivery_id": message.delivery_id, "number": item.claimed.attempts,
                "outcome": result.outcome, "error_class": result.error_class,
                "vendor_code": result.vendor_code, "detail": result.detail,
                "provider_message_id": result.provider_message_id, "retry_after": result.retry_after,
                "duration_ms": item.duration_ms, "started_at": item.started,
            })
            retry_at = None
            completed_at: datetime | None = now
            if result.outcome == "succeeded":
                status, reason = "succeeded", None
            elif result.outcome == "temporary" and item.claimed.attempts < item.max_attempts:
                status, reason, completed_at = "failed", f"temporary: {result.detail}", None
                delay = max(backoff_seconds(item.claimed.attempts), result.retry_after or 0.0)
                retry_at = now + timedelta(seconds=delay)
            elif result.outcome == "temporary":
                status, reason = "cancelled", f"retries_exhausted: {result.detail}"
            else:
                status, reason = "cancelled", f"{result.outcome}: {result.detail}"
            updates.append({
                "b_id": message.delivery_id, "b_status": status, "b_reason": reason,
                "b_completed_at": completed_at, "b_not_before": retry_at,
                "b_provider_message_id": result.provider_message_id,
            })
            planned.append((item, status, retry_at))
        # One statement for every row (executemany): the values differ per row,
        # the shape does not. Only rows still ``dispatched`` are ours to change.
        statement = (
            sa.update(d)
            .where(d.c.id == sa.bindparam("b_id"), d.c.status == "dispatched")
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
        ids = [u["b_id"] for u in updates]
        with writer(self.engine).begin() as conn:
            conn.execute(statement, updates)
            actual = dict(conn.execute(sa.select(d.c.id, d.c.status).where(d.c.id.in_(ids))).all())
            conn.execute(sa.insert(attempts_table), attempts)
            inbox = [
                {"b_id": item.claimed.message.notification_id, "b_content": dict(item.claimed.message.fields)}
                for item, status, _ in planned
                if status == "succeeded" and actual.get(item.claimed.message.delivery_id) == "succeeded"
                and item.claimed.channel is not None and item.claimed.channel.inbox
            ]
            if inbox:
                conn.execute(
                    sa.update(n)
                    .where(n.c.id == sa.bindparam("b_id"), n.c.inbox_at.is_(None))
                    .values(inbox_at=now, inbox_content=sa.bindparam("b_content", type_=n.c.inbox_content.type)),
                    inbox,
                )
        outcomes: list[DeliveryOutcome] = []
        for item, status, retry_at in planned:
            message = item.claimed.message
            # Someone may have cancelled or re-driven it meanwhile; the attempt is still recorded.
            final_status = actual.get(message.delivery_id, status)
            outcomes.append(DeliveryOutcome(
                delivery_id=message.delivery_id, status=final_status, result=item.result,
                attempt=item.claimed.attempts, retry_at=retry_at if final_status == "failed" else None,
            ))
        return outcomes

    def recoverable(self, *, older_than: timedelta, limit: int = 1000) -> list[Due]:
        """Deliveries a crash or a failure left behind, now due again.

        ``pending`` rows older than ``older_than`` (crash between commit and
        delivery), ``failed`` rows whose retry time has come, and
        ``dispatched`` rows stuck for longer than ``older_than`` (crash during
        the send), which are put back to ``pending`` with a decision row.
        """
        now = self.clock.now()
        cutoff = now - older_than
        d = deliveries_table
        with writer(self.engine).begin() as conn:
            stuck = conn.execute(
                sa.select(d.c.id).where(d.c.status == "dispatched", d.c.dispatched_at <= cutoff).limit(limit)
            ).scalars().all()
            if stuck:
                conn.execute(
                    sa.update(d).where(d.c.id.in_(stuck), d.c.status == "dispatched")
                    .values(status="pending", updated_at=now)
                )
                conn.execute(sa.insert(decisions_table), [
                    {"id": new_id(), "delivery_id": i, "at": now, "event": "recovered", "checkpoint": "recover",
                     "detail": {"rule": "stuck_dispatched", "older_than_seconds": older_than.total_seconds()}}
                    for i in stuck
                ])
            due = conn.execute(
                sa.select(d.c.id, d.c.not_before).where(
                    sa.or_(
                        sa.and_(d.c.status == "pending", d.c.created_at <= cutoff,
                                sa.or_(d.c.not_before.is_(None), d.c.not_before <= now)),
                        sa.and_(d.c.status.in_(("failed", "deferred")), d.c.not_before <= now),
                    )
                ).order_by(d.c.id).limit(limit)
            ).all()
        seen = set(stuck)
        return [Due(i) for i in stuck] + [Due(row.id) for row in due if row.id not in seen]


def apply_decision(
    conn: Connection,
    delivery_id: uuid.UUID,
    decision: SendDecision,
    now: datetime,
    *,
    checkpoint: str,
    from_status: str | None = None,
    undo_attempt: bool = False,
) -> bool:
    """Record a policy decision on a delivery: its status, reason and a decision row.

    Args:
        conn: inside the transaction that decided.
        delivery_id: the delivery.
        decision: the verdict.
        now: the clock's time.
        checkpoint: ``planning``, ``before_send``, ...
        from_status: only apply if the delivery is in this status.
        undo_attempt: give back the attempt counted by the claim (nothing was sent).
    """
    d = deliveries_table
    values: dict[str, Any] = {"status": decision.status, "reason": decision.reason, "updated_at": now}
    if decision.status == "deferred":
        values["not_before"] = decision.until
    else:
        values["completed_at"] = now
    if undo_attempt:
        values["attempts"] = d.c.attempts - 1
    where = [d.c.id == delivery_id]
    if from_status is not None:
        where.append(d.c.status == from_status)
    if not conn.execute(sa.update(d).where(*where).values(**values)).rowcount:
        return False
    detail: dict[str, Any] = {"reason": decision.reason, **dict(decision.detail or {})}
    if decision.rule:
        detail["rule"] = decision.rule
    if decision.until is not None:
        detail["until"] = decision.until.isoformat()
    conn.execute(sa.insert(decisions_table).values(
        id=new_id(), delivery_id=delivery_id, at=now, event=decision.status,
        checkpoint=checkpoint, detail=detail,
    ))
    return True
