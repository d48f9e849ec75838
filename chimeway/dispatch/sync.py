"""The ``sync`` dispatcher: deliver in-process right after the caller commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from chimeway.deliveries import PlannedLease
from chimeway.dispatch.base import Due
from chimeway.dispatch.executor import Claimed, Executor
from chimeway.transactions import after_commit

__all__ = ["SyncDispatcher"]


class SyncDispatcher:
    """Delivers after the caller's commit, in the committing thread.

    Deliveries the planning checkpoint passed are written already claimed
    (``dispatched`` under this process's lease, attempt 1; see
    :meth:`planning_lease`), in the caller's transaction, so a rollback
    undoes them with the rest; after the commit only the send and its
    record remain: one transaction per trigger, and not one statement more
    than planning itself. A process that dies between the commit and the
    record leaves them ``dispatched`` under a lease it no longer extends;
    once it runs out (``lease_ttl``), a worker's rescue pass or
    ``app.recover()`` takes them back and sends them again.

    A temporary failure leaves the delivery ``failed`` with its retry time;
    ``app.recover()`` (or a periodic sweep) retries it.

    Args:
        executor: the shared executor.
    """

    name = "sync"

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def planning_lease(self, conn: Connection) -> PlannedLease | None:
        """The lease deliveries planned on ``conn`` are written under; ``None`` inside a savepoint.

        A savepoint can be rolled back without the outer transaction
        knowing: what it plans is written ``pending`` and claimed after the
        commit.
        """
        if conn.in_nested_transaction():
            return None
        now = self.executor.clock.now()
        leases = self.executor.leases
        return PlannedLease(holder=leases.holder, at=now, until=leases.lease_until(now))

    def planned(self, target: Session | Connection, conn: Connection, deliveries: Sequence[Due]) -> None:
        claimed = self.executor.planned_claims([d.message for d in deliveries if d.message is not None])
        # Deferred deliveries are not due yet: recover() picks them up when they are.
        later = [d for d in deliveries if d.message is None and d.not_before is None]
        if claimed or later:
            # When the trigger started: its leases count from no earlier.
            at = min((c.message.created_at for c in claimed if c.message.created_at is not None),
                     default=self.executor.clock.now())
            # Those the planning checkpoint passed in a savepoint: sent right
            # after the commit, its verdict is still current, so the rules do
            # not run twice.
            checked = frozenset(d.id for d in later if d.checked)
            after_commit(target, lambda: self._deliver(claimed, at, [d.id for d in later], checked))

    def _deliver(self, claimed: list[Claimed], at: datetime, later: list[uuid.UUID],
                 checked: frozenset[uuid.UUID]) -> None:
        self.executor.send_claimed(claimed, claimed_at=at)
        if later:
            self.executor.execute(later, checked=checked)

    def redrive(self, deliveries: Sequence[Due]) -> int:
        return len(self.executor.execute([d.id for d in deliveries]))
