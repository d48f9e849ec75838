"""The one executor every delivery goes through: claim, send, record.

1. Claim due deliveries in one short transaction: each becomes
   ``dispatched`` under this process's lease (:func:`chimeway.deliveries.claim`),
   and the pre-send checkpoints run in that same transaction.
2. Call each channel outside any transaction (provider calls can be slow);
   the :class:`~chimeway.dispatch.leases.LeaseKeeper` extends the leases of
   sends in flight.
3. Record an append-only attempt and the delivery's new status. Attempts
   made together are recorded in one transaction; if that fails, each is
   recorded on its own, so one bad row never leaves the others
   ``dispatched``. A transient database error (a restart, a failover) is
   retried for ``record_patience`` seconds: the message went out, and a
   re-send is the last resort.

A process killed between 1 and 3 leaves its deliveries ``dispatched`` until
their lease runs out; then :meth:`Executor.release_expired` takes them back
and they are sent again with the same receiver-side ids (at least once,
never lost).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chimeway import deliveries, telemetry
from chimeway.channels.base import Channel
from chimeway.clock import Clock
from chimeway.db import writer
from chimeway.decisions import Decision
from chimeway.deliveries import FINAL, Released, Status, apply_decision
from chimeway.dispatch.base import Due
from chimeway.dispatch.leases import DEFAULT_LEASE_TTL, LeaseKeeper
from chimeway.ids import new_id
from chimeway.models import deliveries_table
from chimeway.values import DeliveryResult, Message, Recipient

__all__ = [
    "DEFAULT_MAX_RETRY_AFTER",
    "Claimed",
    "DeliveryOutcome",
    "Executor",
    "Recoverable",
    "Sent",
    "backoff_seconds",
]

log = logging.getLogger("chimeway.deliveries")

FINAL_STATUSES = tuple(sorted(FINAL))
DEFAULT_MAX_RETRY_AFTER = timedelta(hours=1)
RECORD_PATIENCE = 30.0


@dataclass(frozen=True, kw_only=True)
class DeliveryOutcome:
    """What one execution of one delivery ended in.

    Args:
        delivery_id: the delivery.
        status: its status afterwards (``dispatched`` when the attempt could
            not be recorded: its lease then runs out and it is sent again).
        result: what the channel reported.
        attempt: the attempt number made.
        retry_at: when a ``failed`` delivery is due again.
        step: the workflow step that planned it (``None`` outside workflows).
    """

    delivery_id: uuid.UUID
    status: str
    result: DeliveryResult
    attempt: int
    retry_at: datetime | None = None
    step: int | None = None


BeforeSend = Callable[[Connection, Sequence[Message]], Mapping[uuid.UUID, Decision]]


def backoff_seconds(attempt: int, *, base: float = 15.0, cap: float = 3600.0) -> float:
    """Exponential backoff for a delivery's next attempt (without jitter)."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


@dataclass(kw_only=True)
class Claimed:
    """A delivery claimed for one attempt (status ``dispatched``, under ``holder``'s lease)."""

    message: Message
    channel: Channel
    attempts: int
    holder: str = ""
    step: int | None = None


@dataclass(kw_only=True)
class Sent:
    """One attempt made, waiting to be recorded."""

    claimed: Claimed
    result: DeliveryResult
    started: datetime
    duration_ms: float
    max_attempts: int


@dataclass(frozen=True, kw_only=True)
class Recoverable:
    """Deliveries a crash or a failure left behind, and those this process cannot send.

    Args:
        due: deliveries to execute again.
        skipped: channel name → how many due deliveries use a channel this
            process does not have (left untouched for a process that has it).
    """

    due: list[Due] = field(default_factory=list)
    skipped: Mapping[str, int] = field(default_factory=dict)


class Executor:
    """Executes deliveries against the configured channels.

    Args:
        engine: Chimeway's engine (the same database the caller writes to).
        channels: channel name → channel.
        clock: the time source.
        max_attempts: attempts before a temporary failure becomes final.
        on_final: called with the outcomes that reached a final state.
        before_send: pre-send checkpoints (policy), run in the claim transaction.
        lease_ttl: how long a send's lease lasts unless its process extends it.
        max_retry_after: the longest ``Retry-After`` a provider can impose.
        record_patience: seconds to keep retrying a record through a database outage.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        channels: Mapping[str, Channel],
        clock: Clock,
        max_attempts: int = 5,
        on_final: Callable[[Sequence[DeliveryOutcome]], None] | None = None,
        before_send: Sequence[BeforeSend] = (),
        lease_ttl: timedelta = DEFAULT_LEASE_TTL,
        max_retry_after: timedelta = DEFAULT_MAX_RETRY_AFTER,
        record_patience: float = RECORD_PATIENCE,
    ) -> None:
        self.engine = engine
        self.channels = channels
        self.clock = clock
        self.max_attempts = max_attempts
        self.on_final = on_final
        # Pre-send checkpoints, run inside the claim transaction over every
        # claimed message at once: preferences may have changed since planning.
        self.before_send: tuple[BeforeSend, ...] = tuple(before_send)
        self.leases = LeaseKeeper(engine, clock, lease_ttl)
        self.max_retry_after = max_retry_after.total_seconds()
        self.record_patience = record_patience

    def execute(self, delivery_ids: Iterable[uuid.UUID], *, max_attempts: int | None = None,
                checked: Collection[uuid.UUID] = ()) -> list[DeliveryOutcome]:
        """Claim, send and record the given deliveries that are due.

        Deliveries already final, not yet due, in flight elsewhere or on a
        channel this process lacks are skipped; the return value has one
        outcome per delivery attempted.

        Args:
            delivery_ids: the deliveries to execute.
            max_attempts: overrides the executor's limit (the queue passes the job's).
            checked: deliveries the planning checkpoint passed in the commit
                just made (see :attr:`Due.checked <chimeway.dispatch.Due.checked>`).
        """
        claimed = self.claim(delivery_ids, checked=checked)
        if not claimed:
            return []
        limit = max_attempts or self.max_attempts
        return self.record([self.send(item, max_attempts=limit) for item in claimed])

    def claim(self, ids: Iterable[uuid.UUID], *,
              on_claimed: Callable[[Connection, Sequence[uuid.UUID]], None] | None = None,
              checked: Collection[uuid.UUID] = ()) -> list[Claimed]:
        """Claim due deliveries for one attempt each (one transaction for all).

        Pre-send checkpoints run here; a delivery they stop is not returned.
        The leases of those returned are extended until they are recorded.

        The claim is durable before anything is sent: a claim a database
        crash could undo would let the send's record find the delivery
        ``pending`` again, with an attempt row that no longer matches it.

        Args:
            ids: the deliveries.
            on_claimed: called in the claim transaction with the ids about to be
                sent (a dispatcher notes which of its tasks took them).
            checked: skip the pre-send checkpoint for these (the planning
                checkpoint passed them in the commit just made).
        """
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return []
        stopped: list[DeliveryOutcome] = []
        with writer(self.engine).begin() as conn:
            out = self._claim(conn, wanted, checked=checked, stopped=stopped)
            if out and on_claimed is not None:
                on_claimed(conn, [c.message.delivery_id for c in out])
        self.leases.hold(c.message.delivery_id for c in out)
        if stopped:
            # A workflow step stopped before its send is final too: its run
            # moves on now rather than at the next sweep.
            self._final(stopped)
        return out

    def planned_claims(self, messages: Sequence[Message]) -> list[Claimed]:
        """The claims of deliveries written ``dispatched`` under this process's lease at planning.

        Their rows were inserted claimed (attempt 1) by a trigger whose
        planning checkpoint passed them (see
        :class:`~chimeway.deliveries.PlannedLease`), so no pre-send
        checkpoint runs. Hand them to :meth:`send_claimed` once that
        transaction commits; if the process dies first, the lease runs out
        and they are taken back and sent again like any other.

        Args:
            messages: their messages, as :meth:`chimeway.planning.Plan.message` gives them.
        """
        holder = self.leases.holder
        return [Claimed(message=m, channel=self.channels[m.channel], attempts=1, holder=holder) for m in messages]

    def send_claimed(self, claimed: Sequence[Claimed], *, claimed_at: datetime | None = None) -> list[DeliveryOutcome]:
        """Send deliveries claimed in a caller's transaction and record them (after its commit).

        Args:
            claimed: what :meth:`planned_claims` returned, once the transaction committed.
            claimed_at: when they were claimed; a transaction that stayed open
                for half a lease or more gets its leases extended first.
        """
        if not claimed:
            return []
        ids = [c.message.delivery_id for c in claimed]
        self.leases.hold(ids)
        if claimed_at is not None and self.clock.now() - claimed_at >= self.leases.ttl / 2:
            with writer(self.engine).begin() as conn:
                deliveries.extend_leases(conn, ids, holder=self.leases.holder,
                                         until=self.leases.lease_until(self.clock.now()))
        return self.record([self.send(item) for item in claimed])

    def _claim(self, conn: Connection, wanted: list[uuid.UUID], *, checked: Collection[uuid.UUID],
               stopped: list[DeliveryOutcome]) -> list[Claimed]:
        now = self.clock.now()
        holder = self.leases.holder
        out: list[Claimed] = []
        rows = deliveries.claim(conn, wanted, holder=holder, now=now,
                                lease_until=self.leases.lease_until(now), channels=self.channels)
        if not rows:
            return []
        messages = [Message(
            delivery_id=row.id, notification_id=row.notification_id, event_id=row.event_id,
            tenant=row.tenant or None, channel=row.channel, notifier_key=row.notifier_key,
            recipient=Recipient.from_json(row.recipient), fields=row.message, attempt=row.attempts,
            created_at=row.created_at,
        ) for row in rows]
        unchecked = [m for m in messages if m.delivery_id not in checked]
        decisions = self._checkpoint(conn, unchecked) if unchecked else {}
        for message, row in zip(messages, rows, strict=True):
            decision = decisions.get(message.delivery_id)
            if decision is not None:
                applied = apply_decision(conn, message.delivery_id, decision, now, checkpoint="before_send",
                                         from_status=Status.DISPATCHED, undo_attempt=True)
                if applied and decision.status in FINAL and row.step is not None:
                    stopped.append(DeliveryOutcome(
                        delivery_id=message.delivery_id, status=decision.status,
                        result=DeliveryResult(outcome="permanent", detail=f"{decision.status}: {decision.reason}",
                                              error_class="before_send"),
                        attempt=row.attempts - 1, step=row.step))
                continue
            out.append(Claimed(message=message, channel=self.channels[row.channel], attempts=row.attempts,
                               holder=holder, step=row.step))
        return out

    def send(self, item: Claimed, *, max_attempts: int | None = None) -> Sent:
        """Make the attempt through the delivery's channel (no transaction held).

        Args:
            item: a claimed delivery.
            max_attempts: the attempt limit to apply when recording.
        """
        started = self.clock.now()
        t0 = time.perf_counter()
        result = telemetry.attempt(self._send, item) if telemetry.observing() else self._send(item)
        return Sent(claimed=item, result=result, started=started,
                    duration_ms=(time.perf_counter() - t0) * 1000.0,
                    max_attempts=max_attempts or self.max_attempts)

    def record(self, sent: Sequence[Sent]) -> list[DeliveryOutcome]:
        """Record attempts and new statuses; notify ``on_final``.

        One transaction for all when it can; otherwise each on its own, and an
        attempt that cannot be recorded at all comes back ``dispatched`` (its
        lease runs out and it is sent again).

        Args:
            sent: attempts made by :meth:`send`.
        """
        if not sent:
            return []
        try:
            outcomes = self._patiently(lambda: self._record(sent))
        except Exception:
            if len(sent) == 1:
                outcomes = [self._unrecorded(sent[0])]
            else:
                log.warning("recording %d attempts together failed; recording each on its own", len(sent))
                outcomes = [self._record_alone(item) for item in sent]
        finally:
            self.leases.drop(item.claimed.message.delivery_id for item in sent)
        telemetry.recorded(outcomes, sent)
        self._final([o for o in outcomes if o.status in FINAL])
        return outcomes

    def _final(self, final: Sequence[DeliveryOutcome]) -> None:
        if not final or self.on_final is None:
            return
        try:
            self.on_final(final)
        except Exception:
            # The workflow sweep advances runs whose deliveries became final.
            log.exception("on_final hook failed for %d deliveries", len(final))

    def release_expired(self, *, ids: Sequence[uuid.UUID] | None = None, limit: int = 1000,
                        max_attempts: int | None = None) -> Released:
        """Take back deliveries whose send lease ran out (their holder died or stalled).

        Args:
            ids: only these deliveries (default: any).
            limit: at most this many.
            max_attempts: attempts a delivery may use (default: the executor's).
        """
        with writer(self.engine).begin() as conn:
            released = deliveries.release_expired(conn, now=self.clock.now(), ids=ids, limit=limit,
                                                  max_attempts=max_attempts or self.max_attempts)
        if released:
            log.warning("released %d delivery lease(s) that ran out (%d to re-send, %d out of attempts)",
                        len(released), len(released.redrive), len(released.exhausted))
        return released

    def take_back_if_expired(self, delivery_id: uuid.UUID, *, max_attempts: int | None = None) -> bool:
        """Take back one delivery whose send lease has run out; returns whether it may be claimed again.

        A job or task that finds its delivery ``dispatched`` under a dead
        holder's expired lease re-drives it itself rather than wait for a
        rescue pass.

        Args:
            delivery_id: the delivery.
            max_attempts: attempts a delivery may use (default: the executor's).
        """
        row = self.status_of(delivery_id)
        if row is None or row.status != Status.DISPATCHED or row.lease_expires_at is None:
            return False
        if row.lease_expires_at > self.clock.now():
            return False
        return bool(self.release_expired(ids=[delivery_id], max_attempts=max_attempts).redrive)

    def recoverable(self, *, older_than: timedelta, limit: int = 1000) -> Recoverable:
        """Deliveries a crash or a failure left behind, now due again.

        ``pending`` rows older than ``older_than`` (a crash between commit and
        delivery) and ``failed``/``deferred`` rows whose time has come, on
        channels this process has. (Sends whose lease ran out are taken back
        by :meth:`release_expired`.)

        Args:
            older_than: how old a ``pending`` row must be to count as left behind.
            limit: at most this many.
        """
        now = self.clock.now()
        d = deliveries_table
        left = sa.or_(
            sa.and_(d.c.status == Status.PENDING, d.c.created_at <= now - older_than,
                    sa.or_(d.c.not_before.is_(None), d.c.not_before <= now)),
            sa.and_(d.c.status.in_((Status.FAILED, Status.DEFERRED)), d.c.not_before <= now),
        )
        names = list(self.channels)
        with self.engine.connect() as conn:
            due = conn.execute(
                sa.select(d.c.id).where(left, d.c.channel.in_(names)).order_by(d.c.id).limit(limit)
            ).scalars().all()
            skipped = conn.execute(
                sa.select(d.c.channel, sa.func.count()).where(left, d.c.channel.not_in(names)).group_by(d.c.channel)
            ).all()
        return Recoverable(due=[Due(i) for i in due], skipped={str(c): int(n) for c, n in skipped})

    def status_of(self, delivery_id: uuid.UUID) -> Any:
        """The delivery's ``status``, ``channel``, ``not_before`` and ``lease_expires_at`` (or ``None``)."""
        d = deliveries_table
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(d.c.status, d.c.channel, d.c.not_before, d.c.lease_expires_at).where(d.c.id == delivery_id)
            ).first()

    def close(self) -> None:
        """Stop extending leases (sends still in flight will be re-driven when they run out)."""
        self.leases.close()

    # --- internals ---------------------------------------------------------------------------

    def _checkpoint(self, conn: Connection, messages: list[Message]) -> dict[uuid.UUID, Decision]:
        decisions: dict[uuid.UUID, Decision] = {}
        if not messages:
            return decisions
        for check in self.before_send:
            undecided = [m for m in messages if m.delivery_id not in decisions]
            if not undecided:
                break
            decisions.update(check(conn, undecided))
        return decisions

    def _send(self, item: Claimed) -> DeliveryResult:
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

    def _patiently(self, fn: Callable[[], list[DeliveryOutcome]]) -> list[DeliveryOutcome]:
        deadline = time.monotonic() + self.record_patience
        pause = 0.05
        while True:
            try:
                return fn()
            except sa.exc.DBAPIError as exc:
                if not _transient(exc) or time.monotonic() + pause > deadline:
                    raise
                log.warning("database unavailable while recording attempts (%s); retrying in %.2fs",
                            type(exc).__name__, pause)
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    def _record_alone(self, item: Sent) -> DeliveryOutcome:
        try:
            return self._patiently(lambda: self._record([item]))[0]
        except Exception:
            return self._unrecorded(item)

    def _unrecorded(self, item: Sent) -> DeliveryOutcome:
        message = item.claimed.message
        log.exception("could not record attempt %d of delivery %s; it is re-sent when its lease runs out",
                      item.claimed.attempts, message.delivery_id)
        return DeliveryOutcome(delivery_id=message.delivery_id, status=Status.DISPATCHED.value, result=item.result,
                               attempt=item.claimed.attempts, step=item.claimed.step)

    def _retry_hint(self, hint: float | None) -> float | None:
        """A provider's ``Retry-After`` made safe: finite, >= 0, at most ``max_retry_after``."""
        if hint is None or not isinstance(hint, int | float) or math.isnan(hint) or hint < 0:
            return None
        return float(min(hint, self.max_retry_after))

    def _next(self, item: Sent, hint: float | None, now: datetime) -> tuple[str, str | None, datetime | None]:
        result = item.result
        if result.outcome == "succeeded":
            return Status.SUCCEEDED.value, None, None
        detail = _clean(result.detail, 2000)
        if result.outcome == "temporary" and item.claimed.attempts < item.max_attempts:
            delay = max(backoff_seconds(item.claimed.attempts), hint or 0.0)
            return Status.FAILED.value, f"temporary: {detail}", now + timedelta(seconds=delay)
        if result.outcome == "temporary":
            return Status.CANCELLED.value, f"retries_exhausted: {detail}", None
        return Status.CANCELLED.value, f"{_clean(result.outcome, 20)}: {detail}", None

    def _record(self, sent: Sequence[Sent]) -> list[DeliveryOutcome]:
        now = self.clock.now()
        attempts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        planned: list[tuple[Sent, str, datetime | None]] = []
        for item in sent:
            message, result = item.claimed.message, item.result
            hint = self._retry_hint(result.retry_after)
            status, reason, retry_at = self._next(item, hint, now)
            # Provider text is stored as given, minus what a database refuses
            # (NUL bytes, lone surrogates, over-long values).
            provider_id = _clean(result.provider_message_id, 500)
            attempts.append({
                "id": new_id(), "delivery_id": message.delivery_id, "number": item.claimed.attempts,
                "outcome": _clean(result.outcome, 20), "error_class": _clean(result.error_class, 200),
                "vendor_code": _clean(result.vendor_code, 100), "detail": _clean(result.detail, 2000),
                "provider_message_id": provider_id, "retry_after": hint,
                "duration_ms": item.duration_ms, "started_at": item.started,
            })
            updates.append({
                "b_id": message.delivery_id, "b_status": status, "b_reason": reason,
                "b_completed_at": None if status == Status.FAILED else now, "b_not_before": retry_at,
                "b_provider_message_id": provider_id, "b_holder": item.claimed.holder,
                "b_attempt": item.claimed.attempts, "b_succeeded": status == Status.SUCCEEDED,
            })
            planned.append((item, status, retry_at))
        inbox = {item.claimed.message.delivery_id: (item.claimed.message.notification_id,
                                                    dict(item.claimed.message.fields))
                 for item, status, _ in planned if status == Status.SUCCEEDED and item.claimed.channel.inbox}
        with writer(self.engine).begin() as conn:
            actual = deliveries.record(conn, updates, attempts=attempts, inbox=inbox, now=now)
        outcomes: list[DeliveryOutcome] = []
        for item, status, retry_at in planned:
            message = item.claimed.message
            # Someone may have cancelled or re-driven it meanwhile; the attempt is still recorded.
            final_status = actual.get(message.delivery_id, status)
            outcomes.append(DeliveryOutcome(
                delivery_id=message.delivery_id, status=final_status, result=item.result,
                attempt=item.claimed.attempts, retry_at=retry_at if final_status == Status.FAILED else None,
                step=item.claimed.step,
            ))
        return outcomes


def _transient(exc: sa.exc.DBAPIError) -> bool:
    """A connection lost or refused (worth retrying), as opposed to a statement the database rejects."""
    return bool(exc.connection_invalidated) or isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError)


def _clean(value: object, limit: int) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    text = text.replace("\x00", "")
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:limit]
