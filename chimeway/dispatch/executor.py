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

__all__ = ["DeliveryOutcome", "Executor", "SendDecision", "apply_decision", "backoff_seconds"]

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


BeforeSend = Callable[[Connection, Message], "SendDecision | None"]


def backoff_seconds(attempt: int, *, base: float = 15.0, cap: float = 3600.0) -> float:
    """Exponential backoff for a delivery's next attempt (without jitter)."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


@dataclass(kw_only=True)
class _Claimed:
    message: Message
    channel: Channel | None
    attempts: int


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
        # Pre-send checkpoints, run inside the claim transaction: preferences
        # may have changed since planning.
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
        claimed = self._claim(ids, claim_from)
        if not claimed:
            return []
        results: list[tuple[_Claimed, DeliveryResult, datetime, float]] = []
        for item in claimed:
            started = self.clock.now()
            t0 = time.perf_counter()
            result = self._send(item)
            results.append((item, result, started, (time.perf_counter() - t0) * 1000.0))
        outcomes = self._record(results, max_attempts or self.max_attempts)
        final = [o for o in outcomes if o.status in FINAL_STATUSES]
        if final and self.on_final is not None:
            self.on_final(final)
        return outcomes

    def _claim(self, ids: list[uuid.UUID], claim_from: Sequence[str]) -> list[_Claimed]:
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
            out = []
            for delivery_id in ids:
                row = by_id.get(delivery_id)
                if row is None:
                    continue
                message = Message(
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
                )
                decision = self._checkpoint(conn, message)
                if decision is not None:
                    apply_decision(conn, message.delivery_id, decision, now, checkpoint="before_send",
                                   from_status="dispatched", undo_attempt=True)
                    continue
                out.append(_Claimed(message=message, channel=self.channels.get(row.channel), attempts=row.attempts))
        return out

    def _checkpoint(self, conn: Connection, message: Message) -> SendDecision | None:
        for check in self.before_send:
            decision = check(conn, message)
            if decision is not None:
                return decision
        return None

    def _send(self, item: _Claimed) -> DeliveryResult:
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

    def _record(
        self, results: list[tuple[_Claimed, DeliveryResult, datetime, float]], max_attempts: int
    ) -> list[DeliveryOutcome]:
        now = self.clock.now()
        d, n = deliveries_table, notifications_table
        outcomes: list[DeliveryOutcome] = []
        attempts: list[dict[str, Any]] = []
        with writer(self.engine).begin() as conn:
            for item, result, started, duration_ms in results:
                message = item.message
                attempts.append({
                    "id": new_id(),
                    "delivery_id": message.delivery_id,
                    "number": item.attempts,
                    "outcome": result.outcome,
                    "error_class": result.error_class,
                    "vendor_code": result.vendor_code,
                    "detail": result.detail,
                    "provider_message_id": result.provider_message_id,
                    "retry_after": result.retry_after,
                    "duration_ms": duration_ms,
                    "started_at": started,
                })
                values: dict[str, Any] = {"updated_at": now}
                retry_at = None
                if result.outcome == "succeeded":
                    status = "succeeded"
                    values.update(status=status, reason=None, completed_at=now,
                                  provider_message_id=result.provider_message_id)
                elif result.outcome == "temporary" and item.attempts < max_attempts:
                    status = "failed"
                    delay = max(backoff_seconds(item.attempts), result.retry_after or 0.0)
                    retry_at = now + timedelta(seconds=delay)
                    values.update(status=status, reason=f"temporary: {result.detail}", not_before=retry_at)
                elif result.outcome == "temporary":
                    status = "cancelled"
                    values.update(status=status, completed_at=now,
                                  reason=f"retries_exhausted: {result.detail}")
                else:
                    status = "cancelled"
                    values.update(status=status, completed_at=now, reason=f"{result.outcome}: {result.detail}")
                changed = conn.execute(
                    sa.update(d).where(d.c.id == message.delivery_id, d.c.status == "dispatched").values(**values)
                ).rowcount
                if not changed:
                    # Someone cancelled or re-drove it meanwhile; the attempt is still recorded.
                    status = conn.execute(sa.select(d.c.status).where(d.c.id == message.delivery_id)).scalar_one()
                elif status == "succeeded" and item.channel is not None and item.channel.inbox:
                    conn.execute(
                        sa.update(n)
                        .where(n.c.id == message.notification_id, n.c.inbox_at.is_(None))
                        .values(inbox_at=now, inbox_content=dict(message.fields))
                    )
                outcomes.append(DeliveryOutcome(
                    delivery_id=message.delivery_id, status=status, result=result,
                    attempt=item.attempts, retry_at=retry_at,
                ))
            conn.execute(sa.insert(attempts_table), attempts)
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
