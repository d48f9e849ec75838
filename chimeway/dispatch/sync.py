"""The ``sync`` dispatcher: deliver in-process right after the caller commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from chimeway.dispatch.base import Due
from chimeway.dispatch.executor import Claimed, Executor
from chimeway.transactions import after_commit

__all__ = ["SyncDispatcher"]


class SyncDispatcher:
    """Delivers after the caller's commit, in the committing thread.

    Deliveries the planning checkpoint passed are claimed inside the
    caller's transaction (``dispatched`` under this process's lease, undone
    by a rollback), so after the commit only the send and its record remain:
    one transaction per trigger instead of two. A process that dies between
    the commit and the record leaves them ``dispatched`` under a lease it no
    longer extends; once it runs out (``lease_ttl``), a worker's rescue pass
    or ``app.recover()`` takes them back and sends them again.

    A temporary failure leaves the delivery ``failed`` with its retry time;
    ``app.recover()`` (or a periodic sweep) retries it.

    Args:
        executor: the shared executor.
    """

    name = "sync"

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def planned(self, target: Session | Connection, conn: Connection, deliveries: Sequence[Due]) -> None:
        # Deferred deliveries are not due yet: recover() picks them up when they are.
        due = [d for d in deliveries if d.not_before is None]
        # Sent right after the commit that planned them: the planning
        # checkpoint's verdict is still current, so the rules do not run twice.
        # Inside a savepoint the claim could be rolled back without the
        # outer transaction knowing: those are claimed after the commit.
        early = not conn.in_nested_transaction()
        claimed = self.executor.claim_within(conn, [d.id for d in due if d.checked and early])
        later = [d.id for d in due if not (d.checked and early)]
        checked = frozenset(d.id for d in due if d.checked and not early)
        if claimed or later:
            at = self.executor.clock.now()
            after_commit(target, lambda: self._deliver(claimed, at, later, checked))

    def _deliver(self, claimed: list[Claimed], at: datetime, later: list[uuid.UUID],
                 checked: frozenset[uuid.UUID]) -> None:
        self.executor.send_claimed(claimed, claimed_at=at)
        if later:
            self.executor.execute(later, checked=checked)

    def redrive(self, deliveries: Sequence[Due]) -> int:
        return len(self.executor.execute([d.id for d in deliveries]))
