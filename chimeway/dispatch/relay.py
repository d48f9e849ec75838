"""The outbox relay: publish what is due, and put back in the outbox what crashes left behind.

The relay knows the outbox and the executor, not the engine it publishes to:
a :class:`Publisher` (the Celery one lives in :mod:`chimeway.dispatch.celery`)
publishes rows in order and says how far it got. Rows are taken, published
and deleted in one transaction: a publish that fails puts the rest back
(``publish_failures`` and ``last_error`` tell operators why), and a relay
killed before its commit leaves them all for the next pass.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.engine import Engine

from chimeway import deliveries
from chimeway.clock import Clock
from chimeway.db import writer
from chimeway.dispatch import outbox
from chimeway.dispatch.base import Due
from chimeway.dispatch.executor import Executor
from chimeway.dispatch.outbox import Taken

__all__ = ["Published", "Publisher", "Relay", "RescueReport"]

log = logging.getLogger("chimeway.outbox")


@dataclass(frozen=True, kw_only=True)
class Published:
    """What a publisher got through before it stopped.

    Args:
        task_ids: one per row published, in order (a prefix of the rows given).
        error: why it stopped early, or ``None``.
    """

    task_ids: Sequence[str]
    error: BaseException | None = None


class Publisher(Protocol):
    """Publishes outbox rows to an outside engine, in order, stopping at the first failure."""

    name: str

    def publish(self, rows: Sequence[Taken], *, now: datetime) -> Published:
        """Publish each row (with an ETA when its ``due_at`` is ahead of ``now``)."""
        ...


@dataclass(frozen=True, kw_only=True)
class RescueReport:
    """What one rescue pass put back in the outbox.

    Args:
        lease_expired: sends whose holder died (their lease ran out).
        exhausted: of those, the ones out of attempts (cancelled, not re-sent).
        lost: due deliveries left untouched for too long (their task was lost).
    """

    lease_expired: int = 0
    exhausted: int = 0
    lost: int = 0


class Relay:
    """Publishes due outbox rows through a publisher; rescues what crashes left behind.

    Args:
        engine: Chimeway's engine.
        clock: the time source.
        publisher: where rows go.
        horizon: rows due within this much of now are published now, with an
            ETA; later ones wait in the outbox.
        batch_size: rows per publishing transaction.
    """

    def __init__(self, engine: Engine, clock: Clock, publisher: Publisher, *, horizon: timedelta,
                 batch_size: int = 500) -> None:
        self.engine = engine
        self.clock = clock
        self.publisher = publisher
        self.horizon = horizon
        self.batch_size = batch_size

    def publish_due(self, *, ids: Sequence[uuid.UUID] | None = None, by: str = "relay",
                    limit: int | None = None) -> int:
        """Publish rows due within the horizon, batch after batch; returns how many were published.

        Stops at the first publish that fails (the broker is away: the next
        pass tries again) and raises nothing.

        Args:
            ids: only these deliveries (right after the commit that planned them).
            by: who published, for ``explain`` (``after_commit``, ``relay``, ...).
            limit: at most this many (default: until none are due).
        """
        total = 0
        if ids is not None:
            wanted = list(dict.fromkeys(ids))
            for start in range(0, len(wanted), self.batch_size):
                chunk = wanted[start:start + self.batch_size]
                done, _full, failed = self._publish_batch(chunk, by, len(chunk))
                total += done
                if failed:
                    break
            return total
        while limit is None or total < limit:
            size = self.batch_size if limit is None else min(self.batch_size, limit - total)
            done, full, failed = self._publish_batch(None, by, size)
            total += done
            if failed or not full:
                break
        return total

    def _publish_batch(self, ids: Sequence[uuid.UUID] | None, by: str, size: int) -> tuple[int, bool, bool]:
        """One transaction: take, publish, note; returns (published, took a full batch, a publish failed)."""
        now = self.clock.now()
        with writer(self.engine).begin() as conn:
            rows = outbox.take(conn, until=now + self.horizon, limit=size, ids=ids)
            if not rows:
                return 0, False, False
            result = self.publisher.publish(rows, now=now)
            sent = rows[:len(result.task_ids)]
            deliveries.note(conn, {
                row.delivery_id: _published_detail(row, task_id, by, now)
                for row, task_id in zip(sent, result.task_ids, strict=True)
            }, event="published", checkpoint=self.publisher.name, now=now)
            if result.error is not None:
                error = f"{type(result.error).__name__}: {result.error}"
                outbox.put_back(conn, rows[len(sent):], error=error, now=now)
        if result.error is not None:
            log.warning("could not publish %d of %d outbox row(s) to %s (%s); they stay in the outbox",
                        len(rows) - len(sent), len(rows), self.publisher.name, error)
            return len(sent), False, True
        return len(sent), len(rows) == size, False

    def schedule(self, dues: Sequence[Due], *, reason: str) -> None:
        """Put deliveries in the outbox (their own transaction), due at their ``not_before``.

        Args:
            dues: the deliveries.
            reason: shown by ``explain`` when they are published.
        """
        if dues:
            with writer(self.engine).begin() as conn:
                outbox.add(conn, dues, reason=reason, now=self.clock.now())

    def rescue(self, executor: Executor, *, idle: timedelta, limit: int = 1000) -> RescueReport:
        """Put back in the outbox what crashes left: sends whose lease ran out, and lost tasks.

        Args:
            executor: takes back the sends whose lease ran out.
            idle: how long a due delivery may wait untouched before its task counts as lost.
            limit: at most this many of each.
        """
        released = executor.release_expired(limit=limit)
        self.schedule([Due(i) for i in released.redrive], reason="lease_expired")
        with self.engine.connect() as conn:
            missing = outbox.lost(conn, now=self.clock.now(), idle=idle, channels=executor.channels, limit=limit)
        if missing:
            log.warning("%d due delivery(ies) sat untouched for %s with no outbox row: publishing them again",
                        len(missing), idle)
            self.schedule([Due(i) for i in missing], reason="lost")
        return RescueReport(lease_expired=len(released.redrive), exhausted=len(released.exhausted),
                            lost=len(missing))

    def backlog(self) -> dict[str, int]:
        """Outbox rows by ``due``, ``later`` and ``failing``."""
        with self.engine.connect() as conn:
            return outbox.backlog(conn, now=self.clock.now())


def _published_detail(row: Taken, task_id: str, by: str, now: datetime) -> dict[str, object]:
    detail: dict[str, object] = {"task_id": task_id, "by": by, "reason": row.reason}
    if row.due_at > now:
        detail["eta"] = row.due_at.isoformat()
    if row.publish_failures:
        detail["failed_publishes"] = row.publish_failures
    return detail
