"""Scans: page through the rows matching a trigger's ``where`` and act on each once.

A scan reads the matching rows in primary-key order (keyset pagination,
``batch_size`` rows per transaction), once per tenant of a ``tenants=``
trigger, and stops after ``record_limit`` rows when one is set.

- A **notifier trigger** triggers its notifier for each row in the batch's
  transaction, with an idempotency key derived from the row, so a row is
  notified once however many scans see it. A row that fails does not hold up
  its batch: the batch is redone without it and the row gets its own job.
  With ``lock_for_update`` the batch locks its rows and passes over rows
  another transaction holds (the next scan sees them).
- An **action trigger** hands each page of rows to a batch job
  (:mod:`chimeway.scheduling.row_jobs`) that runs the action on them; the
  queue spreads the batches over its workers. Rows a job is waiting for,
  running, or gave up on are skipped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from chimeway.db import locked, own_tables, plain, present, tenant_key, writer
from chimeway.models import events_table
from chimeway.notifier import Notifier
from chimeway.planning import TriggerRequest, TriggerResult
from chimeway.queue import JobQueue
from chimeway.scheduling.declare import RecordTrigger, ScanResult, row_key
from chimeway.scheduling.row_jobs import RowJobs

__all__ = ["Scanner", "existing_keys"]

TriggerFn = Callable[..., TriggerResult]
TriggerManyFn = Callable[[Session, type[Notifier], Sequence[TriggerRequest]], list[TriggerResult]]
Counts = dict[str, int]


@dataclass(kw_only=True)
class _Pass:
    """One scan of one tenant: what it skips, who it runs for, how many rows it may still take."""

    trigger: RecordTrigger
    condition: Any
    tenant: str | None
    actor: str | None
    skip: set[str]
    left: int | None
    failed: dict[str, tuple[Any, BaseException]] = field(default_factory=dict)


class _RowFailed(Exception):
    def __init__(self, row_id: Any, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.row_id = row_id
        self.exc = exc


class _BatchFailed(Exception):
    """The batch trigger failed; redo the batch row by row to find the row."""


class Scanner:
    """Runs scans of record triggers.

    Args:
        jobs: the app's job queue (its engine holds the user's table too).
        row_jobs: enqueues row jobs.
        trigger: the app's ``trigger`` verb.
        trigger_many: the app's ``trigger_many`` verb (one pass per batch).
    """

    def __init__(self, jobs: JobQueue, row_jobs: RowJobs, trigger: TriggerFn,
                 trigger_many: TriggerManyFn | None = None) -> None:
        self.jobs = jobs
        self.row_jobs = row_jobs
        self._trigger = trigger
        self._trigger_many = trigger_many
        self._writer = writer(plain(jobs.engine))  # the application's table: see chimeway.db.own_tables

    def scan(self, trigger: RecordTrigger, now: datetime, *, actor: str | None) -> ScanResult:
        """One scan: every tenant in turn, at most ``record_limit`` rows each.

        Args:
            trigger: the trigger.
            now: the time ``where`` is evaluated at.
            actor: who the scan runs for (default: the trigger's ``actor``).
        """
        actor = actor if actor is not None else trigger.actor
        totals: Counts = {"matched": 0, "triggered": 0, "already": 0, "failed": 0, "skipped": 0, "enqueued": 0}
        skip = self.row_jobs.given(trigger)
        for tenant in trigger.tenant_list():
            scan = _Pass(trigger=trigger, condition=trigger.condition(now, tenant), tenant=tenant, actor=actor,
                         skip=skip, left=trigger.record_limit)
            counts = self._hand_out(scan) if trigger.action is not None else self._notify(scan)
            for name, n in counts.items():
                totals[name] += n
        return ScanResult(trigger=trigger.name, **totals)

    # --- action triggers --------------------------------------------------------------

    def _hand_out(self, scan: _Pass) -> Counts:
        trigger = scan.trigger
        counts: Counts = {"matched": 0, "skipped": 0, "enqueued": 0}
        last: tuple[Any, ...] | None = None
        while scan.left is None or scan.left > 0:
            keys = sa.select(*trigger.pk).where(scan.condition, trigger.after(last)).order_by(*trigger.pk)
            with Session(self._writer) as session, session.begin():
                rows = [tuple(r) for r in session.execute(keys.limit(trigger.batch_size))]
                if not rows:
                    break
                last = rows[-1]
                ids = [trigger.id_of(r) for r in rows]
                todo = [rid for rid in ids if row_key(rid) not in scan.skip]
                if scan.left is not None:
                    todo = todo[:scan.left]
                # One page is one batch job; another scan that handed out the
                # same page first makes this insert a no-op.
                handed = len(todo) if todo and self.row_jobs.enqueue(
                    session, trigger, todo, actor=scan.actor, tenant=scan.tenant) else 0
            counts["matched"] += len(rows)
            counts["enqueued"] += handed
            counts["skipped"] += len(rows) - handed
            if scan.left is not None:
                scan.left -= handed
        return counts

    # --- notifier triggers ------------------------------------------------------------

    def _notify(self, scan: _Pass) -> Counts:
        trigger = scan.trigger
        totals: Counts = {"matched": 0, "triggered": 0, "already": 0, "failed": 0, "skipped": 0}

        def add(counts: Mapping[str, int]) -> None:
            for name, n in counts.items():
                totals[name] += n
            if scan.left is not None:
                scan.left -= counts.get("triggered", 0)

        last: tuple[Any, ...] | None = None
        # A record limit counts rows as they are triggered: one batch at a time.
        if trigger.concurrency == 1 or scan.left is not None:
            while scan.left is None or scan.left > 0:
                counts, last = self._batch(scan, last)
                add(counts)
                if last is None:
                    break
            return totals
        # Batches in flight at once, each in its own transaction: the main
        # thread only pages primary-key bounds, the pool does the triggering.
        in_flight: deque[Future[tuple[Counts, tuple[Any, ...] | None]]] = deque()
        with ThreadPoolExecutor(trigger.concurrency, thread_name_prefix=f"chimeway-scan-{trigger.name}") as pool:
            try:
                while (upto := self._batch_end(scan, last)) is not None:
                    in_flight.append(pool.submit(self._batch, scan, last, upto))
                    last = upto
                    if len(in_flight) >= 2 * trigger.concurrency:
                        add(in_flight.popleft().result()[0])
                while in_flight:
                    add(in_flight.popleft().result()[0])
            finally:
                for future in in_flight:
                    future.cancel()
        return totals

    def _batch_end(self, scan: _Pass, last: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        trigger = scan.trigger
        keys = (
            sa.select(*trigger.pk).where(scan.condition, trigger.after(last)).order_by(*trigger.pk)
            .limit(trigger.batch_size).subquery()
        )
        query = sa.select(*keys.c).order_by(*(sa.desc(c) for c in keys.c)).limit(1)
        with self.jobs.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else tuple(row)

    def _batch(self, scan: _Pass, last: tuple[Any, ...] | None,
               upto: tuple[Any, ...] | None = None) -> tuple[Counts, tuple[Any, ...] | None]:
        trigger = scan.trigger
        failed: dict[str, tuple[Any, BaseException]] = {}
        per_row = self._trigger_many is None
        while True:
            try:
                with Session(self._writer, expire_on_commit=False) as session, session.begin():
                    rows = self._fetch(session, scan, last, upto)
                    if not rows:
                        return {}, None
                    counts = self._trigger_rows(session, scan, rows, failed, per_row=per_row)
                    for row_id, exc in failed.values():
                        self.row_jobs.enqueue_failed(session, trigger, row_id, exc, actor=scan.actor,
                                                     tenant=scan.tenant)
                    next_last = trigger.last_key(rows[-1])
                return counts, next_last
            except _RowFailed as failure:
                # The batch rolled back; redo it without the failing row.
                failed[row_key(failure.row_id)] = (failure.row_id, failure.exc)
            except _BatchFailed:
                # Rolled back too; row by row finds which row it was.
                per_row = True

    def _fetch(self, session: Session, scan: _Pass, last: tuple[Any, ...] | None,
               upto: tuple[Any, ...] | None = None) -> list[Any]:
        trigger = scan.trigger
        query = trigger.select(scan.condition).where(trigger.after(last))
        query = query.limit(trigger.batch_size) if upto is None else query.where(trigger.upto(upto))
        if trigger.lock_for_update:
            query = locked(query, session.connection(), skip_locked=True, of=trigger.table)
        if trigger.orm:
            return list(session.scalars(query).all())
        return list(session.execute(query).all())

    def _trigger_rows(self, session: Session, scan: _Pass, rows: Sequence[Any],
                      failed: dict[str, tuple[Any, BaseException]], *, per_row: bool = True) -> Counts:
        trigger = scan.trigger
        notifier = trigger.notifier
        assert notifier is not None
        counts: Counts = {"matched": len(rows), "triggered": 0, "already": 0, "failed": 0, "skipped": 0}
        todo: list[tuple[Any, Any, str, str | None]] = []
        for row in rows:
            row_id = trigger.row_id(row)
            rkey = row_key(row_id)
            if rkey in scan.skip:
                counts["skipped"] += 1
                continue
            if rkey in failed:
                counts["failed"] += 1
                continue
            try:
                todo.append((row, row_id, trigger.key_for(row, row_id), trigger.tenant_for(row, scan.tenant)))
            except Exception as exc:
                failed[rkey] = (row_id, exc)
                counts["failed"] += 1
        done = existing_keys(session, [(tenant, key) for _, _, key, tenant in todo], like=self.jobs.engine)
        fresh = []
        for item in todo:
            if (tenant_key(item[3]), item[2]) in done:
                counts["already"] += 1
            else:
                fresh.append(item)
        if scan.left is not None:
            fresh = fresh[:scan.left]
        if not per_row and self._trigger_many is not None:
            requests: list[TriggerRequest] = []
            for row, row_id, key, tenant in fresh:
                try:
                    requests.append(TriggerRequest(params=trigger.params_for(row), idempotency_key=key,
                                                   tenant=tenant, actor=scan.actor))
                except Exception as exc:
                    raise _RowFailed(row_id, exc) from exc
            if requests:
                try:
                    results = self._trigger_many(session, notifier, requests)
                except sa.exc.OperationalError:
                    raise
                except Exception as exc:
                    raise _BatchFailed() from exc
                for result in results:
                    counts["already" if result.duplicate else "triggered"] += 1
            return counts
        for row, row_id, key, tenant in fresh:
            try:
                result = self._trigger(session, notifier, trigger.params_for(row), idempotency_key=key,
                                       tenant=tenant, actor=scan.actor)
            except sa.exc.OperationalError:
                raise
            except Exception as exc:
                raise _RowFailed(row_id, exc) from exc
            counts["already" if result.duplicate else "triggered"] += 1
        return counts


def existing_keys(session: Session | sa.Connection, keys: Sequence[tuple[str | None, str]], *,
                  like: sa.Engine) -> set[tuple[str, str]]:
    """The ``(tenant, idempotency key)`` pairs that already have an event.

    Args:
        session: where to read.
        keys: ``(tenant, key)`` pairs.
        like: Chimeway's engine (whose schema the events table is in).
    """
    by_tenant: dict[str, list[str]] = {}
    for tenant, key in keys:
        by_tenant.setdefault(tenant_key(tenant), []).append(key)
    found: set[tuple[str, str]] = set()
    e = events_table.c
    with own_tables(session, like) as conn:
        for tenant, names in by_tenant.items():
            found.update((tenant, key) for key in present(conn, e.idempotency_key, names, e.tenant == tenant))
    return found
