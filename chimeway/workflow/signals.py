"""Signals: recorded in the caller's transaction, routed to the runs waiting for them.

``track()`` inserts one ``chimeway_signals`` row through the caller's session.
With the queue dispatcher it also enqueues a ``SignalRouterWorker`` job on
``chimeway_signals`` in that same transaction; otherwise the signal is routed
right after the commit. Either way nothing is routed before the signal is
committed, and a signal left unrouted by a crash is routed by the sweep.

Routing matches runs of the signal's tenant whose recipient is the signal's
actor (and, when the signal names one, whose notification it is). It locks
every ``active``/``waiting`` run of that actor, not only the waiting ones, so
a run entering a wait at the same moment is either seen waiting here or sees
the committed signal itself when it enters the wait.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from chimeway.clock import Clock
from chimeway.db import locked, own_tables, tenant_key, update_rows
from chimeway.errors import InvalidInputError
from chimeway.ids import as_uuid, new_id
from chimeway.inbox import InboxItem
from chimeway.jsonvalues import check_json, redact
from chimeway.models import notifications_table, signals_table, workflow_runs_table
from chimeway.queue import JobQueue, NewJob
from chimeway.transactions import after_commit
from chimeway.validation import check_text
from chimeway.workflow.engine import Batch, RunState, SignalRow, apply_signal, load_run
from chimeway.workflow.names import SIGNAL_QUEUE, SIGNAL_WORKER
from chimeway.workflow.steps import Program

__all__ = ["SignalRouter", "mark_routed", "router_key"]

MAX_NAME = 200
# A router job also routes others still waiting, this many per transaction
# for up to ROUTE_ROUNDS transactions, so a burst of signals is routed in
# large transactions by the first jobs, which cancel the jobs of the rest.
ROUTE_BATCH = 1000
ROUTE_ROUNDS = 10


class RunLocks(Protocol):
    """What routing needs from the workflow engine: locked runs and a way to write their moves."""

    engine: Engine
    clock: Clock
    queue: JobQueue
    def dispatcher_name(self) -> str: ...

    def writer(self) -> Engine: ...

    def locked_runs(self, conn: Connection, where: Sequence[sa.ColumnElement[bool]], *,
                    limit: int | None = None, order: Any = None, skip_locked: bool = False,
                    with_params: bool = True) -> list[Any]: ...

    def new_batch(self, conn: Connection, rows: Iterable[Any]) -> Batch: ...

    def program(self, conn: Connection, run: RunState) -> Program | None: ...

    def write(self, conn: Connection, batch: Batch) -> None: ...


class SignalRouter:
    """Records signals and routes them to waiting runs.

    Args:
        workflows: the app's workflow engine (which owns this router).
    """

    def __init__(self, workflows: RunLocks) -> None:
        self.workflows = workflows
        workflows.queue.register(self.router_worker, name=SIGNAL_WORKER, queue=SIGNAL_QUEUE, max_attempts=20)

    # --- recording ---------------------------------------------------------------------

    def track(
        self,
        session: Session | Connection,
        name: str,
        *,
        actor: str,
        tenant: str | None = None,
        payload: Mapping[str, Any] | None = None,
        notification_id: uuid.UUID | str | None = None,
    ) -> uuid.UUID:
        """Record a signal in the caller's transaction; route it once that commits.

        Args:
            session: the caller's ``Session`` or ``Connection``.
            name: the signal name (``"notification.read"``, ``"order.paid"``).
            actor: who did it: matched against runs' recipient ids.
            tenant: the tenant, or ``None``.
            payload: JSON details (redacted like params).
            notification_id: only runs of this notification.

        Returns:
            the signal's id.
        """
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise InvalidInputError(f"signal name must be 1-{MAX_NAME} characters, got {name!r}")
        if not isinstance(actor, str) or not actor or len(actor) > MAX_NAME:
            raise InvalidInputError(f"actor must be a recipient id string, got {actor!r}")
        check_text(name, field="signal name", limit=MAX_NAME)
        check_text(actor, field="actor", limit=MAX_NAME)
        if payload is not None and not isinstance(payload, Mapping):
            raise InvalidInputError(f"payload must be a dict, got {type(payload).__name__}")
        check_json(dict(payload or {}), name="payload")
        nid = None if notification_id is None else as_uuid(notification_id, name="notification_id")
        with own_tables(session, self.workflows.engine) as conn:
            signal_id = self._insert(conn, name=name, actor=actor, tenant=tenant_key(tenant),
                                     payload=redact(dict(payload or {})), notification_id=nid)
            self._route_after(session, conn, signal_id)
        return signal_id

    def inbox_signal(self, conn: Connection, name: str, item: InboxItem) -> None:
        """The inbox's hook: a read/seen transition becomes a signal in the same transaction.

        Args:
            conn: the inbox transaction's connection.
            name: ``notification.read`` or ``notification.seen``.
            item: the notification that changed.
        """
        n = notifications_table
        tenant = conn.execute(sa.select(n.c.tenant).where(n.c.id == item.id)).scalar() or ""
        signal_id = self._insert(conn, name=name, actor=item.recipient_id, tenant=tenant, payload={},
                                 notification_id=item.id)
        self._route_after(conn, conn, signal_id)

    def _insert(self, conn: Connection, *, name: str, actor: str, tenant: str, payload: dict[str, Any],
                notification_id: uuid.UUID | None) -> uuid.UUID:
        signal_id = new_id()
        conn.execute(sa.insert(signals_table).values(
            id=signal_id, tenant=tenant, actor=actor, name=name, notification_id=notification_id,
            payload=payload, created_at=self.workflows.clock.now(), routed_at=None, matched=0,
        ))
        return signal_id

    def _route_after(self, target: Session | Connection, conn: Connection, signal_id: uuid.UUID) -> None:
        if self.workflows.dispatcher_name() == "sync":
            after_commit(target, lambda: self._route_quietly(signal_id))
        else:
            self.workflows.queue.insert_many(conn, [NewJob(worker=SIGNAL_WORKER, queue=SIGNAL_QUEUE,
                                                           args={"signal_id": str(signal_id)},
                                                           unique_key=router_key(signal_id))])

    # --- routing -----------------------------------------------------------------------

    def _route_quietly(self, signal_id: uuid.UUID) -> None:
        self.route([signal_id])

    def router_worker(self, signal_id: str | None = None) -> int:
        """The ``SignalRouterWorker`` job: route a signal, then others still unrouted.

        Args:
            signal_id: the signal this job was enqueued for.

        Returns:
            how many runs the routed signals moved.
        """
        s = signals_table
        with self.workflows.engine.connect() as conn:
            mine = None if signal_id is None else conn.execute(
                sa.select(s.c.routed_at).where(s.c.id == as_uuid(signal_id, name="signal_id"))).first()
            backlog = conn.execute(sa.select(s.c.id).where(s.c.routed_at.is_(None)).limit(1)).first()
        # Cheap reads first: in a burst, most jobs find their signal already
        # routed by an earlier job's batch and need no write transaction.
        moved = 0
        if backlog is not None:
            moved += self.route_pending(limit=ROUTE_BATCH, rounds=ROUTE_ROUNDS)
        if mine is not None and mine.routed_at is None:
            # Usually in the batch just routed (then this finds nothing to do);
            # a router holding it right now routes it itself.
            moved += self.route([as_uuid(str(signal_id))])
        return moved

    def route(self, signal_ids: list[uuid.UUID]) -> int:
        """Route these signals (those not routed yet); returns how many runs they moved.

        Args:
            signal_ids: the signals.
        """
        s = signals_table
        return self._route([s.c.id.in_(signal_ids)], limit=None)

    def route_pending(self, *, older_than: timedelta = timedelta(0), limit: int = ROUTE_BATCH,
                      rounds: int | None = None) -> int:
        """Route signals that are still unrouted (a crash after commit, a burst).

        Args:
            older_than: only signals at least this old.
            limit: signals per transaction.
            rounds: at most this many transactions (default: until none are left).

        Returns:
            how many runs they moved.
        """
        s = signals_table
        moved = 0
        done = 0
        while rounds is None or done < rounds:
            cutoff = self.workflows.clock.now() - older_than
            count, n = self._route_counted([s.c.created_at <= cutoff], limit=limit)
            moved += n
            done += 1
            if count < limit:
                break
        return moved

    def _route(self, where: list[sa.ColumnElement[bool]], *, limit: int | None) -> int:
        return self._route_counted(where, limit=limit)[1]

    def _route_counted(self, where: list[sa.ColumnElement[bool]], *, limit: int | None) -> tuple[int, int]:
        s, r = signals_table, workflow_runs_table
        wf = self.workflows
        with wf.writer().begin() as conn:
            query = (sa.select(s.c.id, s.c.tenant, s.c.actor, s.c.name, s.c.notification_id, s.c.created_at)
                     .where(s.c.routed_at.is_(None), *where).order_by(s.c.id))
            if limit is not None:
                query = query.limit(limit)
            # Another router already holds some: it routes those.
            signals = conn.execute(locked(query, conn, skip_locked=True)).all()
            if not signals:
                return 0, 0
            pairs = sorted({(row.tenant, row.actor) for row in signals})
            runs: dict[tuple[str, str], list[Any]] = defaultdict(list)
            for chunk in range(0, len(pairs), 500):
                part = pairs[chunk:chunk + 500]
                rows = wf.locked_runs(conn, [sa.tuple_(r.c.tenant, r.c.recipient_id).in_(part),
                                             r.c.state.in_(("active", "waiting"))], with_params=False)
                for row in rows:
                    runs[(row.tenant, row.recipient_id)].append(row)
            batch = wf.new_batch(conn, [row for rows_ in runs.values() for row in rows_])
            states = {row.id: load_run(row) for rows_ in runs.values() for row in rows_}
            matched: dict[uuid.UUID, int] = {}
            for sig in signals:
                signal = SignalRow(id=sig.id, name=sig.name, actor=sig.actor,
                                   notification_id=sig.notification_id, created_at=sig.created_at)
                count = 0
                for row in runs.get((sig.tenant, sig.actor), ()):
                    if sig.notification_id is not None and sig.notification_id != row.notification_id:
                        continue
                    run = states[row.id]
                    program = wf.program(conn, run)
                    if program is not None and apply_signal(batch, program, run, signal):
                        count += 1
                matched[sig.id] = count
            mark_routed(conn, matched, batch.now)
            if wf.dispatcher_name() != "sync":
                # Their router jobs have nothing left to do.
                wf.queue.cancel_unique(conn, [router_key(sid) for sid in matched])
            wf.write(conn, batch)
        return len(signals), sum(matched.values())


def router_key(signal_id: uuid.UUID) -> str:
    """The unique key of a signal's ``SignalRouterWorker`` job (routing the signal cancels it).

    Args:
        signal_id: the signal.
    """
    return f"{SIGNAL_WORKER}:{signal_id}"


def mark_routed(conn: Connection, matched: dict[uuid.UUID, int], now: datetime) -> None:
    """Set ``routed_at`` and ``matched`` on routed signals, in one statement.

    Args:
        conn: the routing transaction's connection.
        matched: signal id → how many runs it moved.
        now: the routing time.
    """
    update_rows(conn, signals_table, [{"id": sid, "routed_at": now, "matched": count}
                                      for sid, count in matched.items()])
