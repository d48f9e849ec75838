"""The ``sync`` dispatcher: deliver in-process right after the caller commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from chimeway.dispatch.base import Due
from chimeway.dispatch.executor import Executor
from chimeway.transactions import after_commit

__all__ = ["SyncDispatcher"]


class SyncDispatcher:
    """Delivers after the caller's commit, in the committing thread.

    A temporary failure leaves the delivery ``failed`` with its retry time;
    ``app.recover()`` (or a periodic sweep) retries it. A process that dies
    between commit and delivery leaves it ``pending`` for ``recover()``.

    Args:
        executor: the shared executor.
    """

    name = "sync"

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def planned(self, target: Session | Connection, conn: Connection, deliveries: Sequence[Due]) -> None:
        # Deferred deliveries are not due yet: recover() picks them up when they are.
        due = [d for d in deliveries if d.not_before is None]
        if due:
            ids = [d.id for d in due]
            # Sent right after the commit that planned them: the planning
            # checkpoint's verdict is still current, so the rules do not run twice.
            checked = frozenset(d.id for d in due if d.checked)
            after_commit(target, lambda: self._deliver(ids, checked))

    def _deliver(self, ids: list[uuid.UUID], checked: frozenset[uuid.UUID]) -> None:
        self.executor.execute(ids, checked=checked)

    def redrive(self, deliveries: Sequence[Due]) -> int:
        return len(self.executor.execute([d.id for d in deliveries]))
