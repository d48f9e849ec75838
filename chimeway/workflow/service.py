"""``Workflows``: runs created at planning, advanced under a row lock.

A run advances when

- its step's deliveries are all final (the executor's ``on_final`` hook),
- its wait falls due (a ``ProgressionWorker`` job scheduled at the due time on
  ``chimeway_workflows``, and the periodic sweep :meth:`Workflows.progress_due`),
- a signal its wait names arrives (:mod:`chimeway.workflow.signals`).

Every advance happens in one transaction that first locks the run
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write lock is taken at
``BEGIN IMMEDIATE``) and then checks the run is still where the caller
expected it. Racing callers therefore advance a run once; the losers see the
new state and do nothing. New deliveries go to the dispatcher inside that
transaction (queue jobs) or after its commit (sync).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chimeway.channels.base import Channel
from chimeway.clock import Clock
from chimeway.db import (
    insert_ignoring_conflict,
    insert_rows,
    locked,
    tenant_key,
    update_rows,
    writer,
)
from chimeway.deliveries import CLAIMABLE
from chimeway.deliveries import cancel as cancel_deliveries
from chimeway.dispatch.base import Dispatcher
from chimeway.dispatch.executor import DeliveryOutcome
from chimeway.errors import InvalidWorkflowError, NotFoundError
from chimeway.ids import as_uuid, new_id
from chimeway.models import (
    deliveries_table,
    events_table,
    notifications_table,
    workflow_definitions_table,
    workflow_deliveries_table,
    workflow_runs_table,
)
from chimeway.notifier import Notifier, get_notifier
from chimeway.planning import Plan
from chimeway.queue import JobQueue
from chimeway.values import Recipient
from chimeway.workflow.engine import (
    FINAL,
    Batch,
    RunState,
    early_signal_column,
    load_run,
    run_from,
    step_outcome,
    wait_due,
)
from chimeway.workflow.names import PROGRESS_WORKER, WORKFLOW_QUEUE
from chimeway.workflow.signals import SignalRouter
from chimeway.workflow.steps import (
    DeliverOp,
    Program,
    program_for,
    program_from_spec,
)

__all__ = ["Workflows"]

log = logging.getLogger("chimeway.workflows")

ACTIVE = ("active", "waiting")
SWEEP_BATCH = 500
# Transactions of due waits one ProgressionWorker job advances at most.
JOB_ROUNDS = 10
_ZERO = uuid.UUID(int=0)


class Workflows:
    """The workflow engine of one app.

    Args:
        engine: Chimeway's engine.
        clock: the time source.
        channels: the configured channels.
        queue: the job queue (wait timers, signal routing).
        dispatcher: returns the app's dispatcher (it may be replaced after start).
    """

    def __init__(self, *, engine: Engine, clock: Clock, channels: Mapping[str, Channel], queue: JobQueue,
                 dispatcher: Callable[[], Dispatcher]) -> None:
        self.engine = engine
        self.clock = clock
        self.channels = channels
        self.queue = queue
        self._dispatcher = dispatcher
        self._writer = writer(engine)
        self._definitions: set[tuple[str, int, str]] = set()
        self._programs: dict[str, Program | None] = {}
        queue.register(self.progression_worker, name=PROGRESS_WORKER, queue=WORKFLOW_QUEUE, max_attempts=20)
        self.signals = SignalRouter(self)

    def dispatcher_name(self) -> str:
        """The app's dispatcher's name (``sync`` routes signals right after commit)."""
        return self._dispatcher().name

    def writer(self) -> Engine:
        """The engine whose transactions take SQLite's write lock at ``BEGIN``."""
        return self._writer

    # --- planning ------------------------------------------------------------------

    def start_runs(self, conn: Connection, plans: Sequence[Plan]) -> None:
        """The planning checkpoint of workflows: start the runs of every workflow plan.

        Runs inside the caller's transaction once the events are known not to
        be duplicates; each run plans its first step.

        Args:
            conn: the caller's connection.
            plans: the fresh plans.
        """
        for plan in plans:
            if plan.program is not None:
                self._start(conn, plan)

    def _start(self, conn: Connection, plan: Plan) -> None:
        cls = type(plan.notifier)
        program = plan.program
        if program is None:
            return
        try:
            self._ensure_definition(conn, cls, program)
        except InvalidWorkflowError:
            # The event row is already in the caller's transaction: take it
            # back so a caller that catches the error commits nothing of it.
            conn.execute(sa.delete(events_table).where(events_table.c.id == plan.event_id))
            raise
        now = plan.event["created_at"]
        # The first step renders from the params as given; later steps only
        # have the stored (redacted) copy.
        params = plan.params
        batch = Batch(conn=conn, now=now, channels=self.channels, notifier=lambda _key: plan.notifier,
                      params=lambda _eid: params, check_signals=False,
                      planned_notifications=plan.notifications, rendered=dict(plan.rendered))
        new_runs = []
        for notification in plan.notifications:
            run = RunState(
                id=new_id(), notification_id=notification["id"],
                event_id=plan.event_id, tenant=plan.event["tenant"],
                recipient=Recipient.from_json(notification["recipient"]), notifier_key=cls.key,
                notifier_version=cls.version, fingerprint=program.fingerprint, state="active", step=None,
                wait_until=None, wait_signals=None, signal_mark=_ZERO, transitions=0, created_at=now,
            )
            run.signal_mark = run.id
            new_runs.append(run)
        if not new_runs:
            return
        for run in new_runs:
            run_from(batch, program, run, 0, "started",
                     {"version": cls.version, "fingerprint": program.fingerprint[:12]})
        insert_rows(conn, workflow_runs_table, [
            {**r.values(now), "id": r.id, "notification_id": r.notification_id, "event_id": r.event_id,
             "tenant": r.tenant, "recipient_id": r.recipient.id, "notifier_key": r.notifier_key,
             "notifier_version": r.notifier_version, "fingerprint": r.fingerprint, "created_at": now}
            for r in new_runs
        ])
        # The workflow decides what is sent: the notifier's own channel list
        # does not apply to it.
        plan.deliveries[:] = batch.deliveries
        plan.notifications.extend(batch.notifications)
        batch.notifications = []
        batch.write(skip_deliveries=True)
        if batch.jobs:
            self.queue.insert_many(conn, batch.jobs)

    def _ensure_definition(self, conn: Connection, cls: type[Notifier], program: Program) -> None:
        key = (cls.key, cls.version, program.fingerprint)
        if key in self._definitions:
            return
        d = workflow_definitions_table
        inserted = insert_ignoring_conflict(conn, d, {
            "fingerprint": program.fingerprint, "notifier_key": cls.key, "version": cls.version,
            "steps": program.spec, "created_at": self.clock.now(),
        }, ("notifier_key", "version"))
        if inserted:
            return  # not cached: the caller's transaction may still roll back
        stored = conn.execute(sa.select(d.c.fingerprint).where(d.c.notifier_key == cls.key,
                                                                d.c.version == cls.version)).scalar()
        if stored is not None and stored != program.fingerprint:
            raise InvalidWorkflowError(
                f"notifier {cls.key!r} version {cls.version} already has runs with different workflow "
                "steps; bump `version` when the steps change"
            )
        self._definitions.add(key)

    # --- progression -------------------------------------------------------------------

    def on_final(self, outcomes: Sequence[DeliveryOutcome]) -> None:
        """The executor's hook: advance the runs whose step deliveries became final.

        Args:
            outcomes: deliveries that reached ``succeeded``/``cancelled``/``suppressed``.
        """
        # Only a workflow's deliveries have a step: the others need no lookup.
        ids = [o.delivery_id for o in outcomes if o.step is not None]
        if not ids:
            return
        link = workflow_deliveries_table
        with self.engine.connect() as conn:
            steps = conn.execute(sa.select(link.c.run_id, link.c.step).where(link.c.delivery_id.in_(ids))
                                 .distinct()).all()
        for run_id, step in steps:
            try:
                self.progress(run_id, step=step)
            except Exception:
                # The sweep (progress_due) advances it later; the delivery is final regardless.
                log.exception("advancing workflow run %s after step %s failed", run_id, step)

    def progress(self, run_id: uuid.UUID | str, *, step: int | None = None) -> bool:
        """Advance one run if something it waits for is due; at most once per step.

        Args:
            run_id: the run.
            step: only if the run is still at this step.

        Returns:
            whether this call advanced the run.
        """
        rid = as_uuid(run_id, name="run_id")
        r = workflow_runs_table
        return bool(self._advance([r.c.id == rid], lambda b, p, run: self._due(b, p, run, step)))

    def progress_due(self, *, limit: int = SWEEP_BATCH, stale_after: timedelta = timedelta(seconds=60)) -> int:
        """The safety-net sweep: advance every run whose wait is due or whose step is done.

        Also advances ``active`` runs whose deliveries all became final more
        than ``stale_after`` ago without advancing them (a crash between the
        delivery and its hook), and routes signals left unrouted that long.

        Args:
            limit: runs per transaction.
            stale_after: how long an ``active`` run or an unrouted signal may
                sit before the sweep takes it over.

        Returns:
            how many runs advanced.
        """
        r, link, d = workflow_runs_table, workflow_deliveries_table, deliveries_table
        moved = len(self._advance_due_waits(limit=limit))
        cutoff = self.clock.now() - stale_after
        unfinished = (sa.select(link.c.delivery_id).join(d, d.c.id == link.c.delivery_id)
                      .where(link.c.run_id == r.c.id, link.c.step == r.c.step, d.c.status.not_in(FINAL)))
        while True:
            n = len(self._advance([r.c.state == "active", r.c.updated_at <= cutoff, ~unfinished.exists()],
                                  lambda b, p, run: self._due(b, p, run, None), limit=limit,
                                  order=r.c.updated_at))
            moved += n
            if n < limit:
                break
        moved += self.signals.route_pending(older_than=stale_after, limit=limit)
        return moved

    def progression_worker(self, run_id: str | None = None, step: int | None = None) -> int:
        """The ``ProgressionWorker`` job: a run's due wait, with every other due wait; or (no args) the sweep.

        Waits fall due in crowds (a campaign, a restart), so the job of the
        first one advances all that are due, :data:`SWEEP_BATCH` runs per
        transaction, and each of those transactions cancels the jobs of the
        runs it moved: they are not left queued to find nothing to do.

        Args:
            run_id: the run whose wait fell due.
            step: the step the job was scheduled for.
        """
        if run_id is None:
            return self.progress_due()
        rid = as_uuid(run_id, name="run_id")
        moved = self._advance_due_waits(limit=SWEEP_BATCH, rounds=JOB_ROUNDS)
        if rid in moved:
            return len(moved)
        r = workflow_runs_table
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(r.c.state, r.c.step).where(r.c.id == rid)).first()
        # A committed run only moves forward: if it has left this wait (a
        # batch or a signal got there first) there is nothing to lock. If it
        # still waits, another transaction held it above: wait for its lock.
        if row is not None and row.state == "waiting" and (step is None or row.step == step):
            return len(moved) + int(self.progress(rid, step=step))
        return len(moved)

    def _advance_due_waits(self, *, limit: int, rounds: int | None = None) -> list[uuid.UUID]:
        """Advance runs whose wait is due, ``limit`` per transaction, skipping runs others hold."""
        r = workflow_runs_table
        moved: list[uuid.UUID] = []
        done = 0
        while rounds is None or done < rounds:
            now = self.clock.now()
            ids = self._advance([r.c.state == "waiting", r.c.wait_until <= now],
                                lambda b, p, run: wait_due(b, p, run), limit=limit, order=r.c.wait_until)
            moved += ids
            done += 1
            if len(ids) < limit:
                break
        return moved

    def _due(self, batch: Batch, program: Program, run: RunState, step: int | None) -> bool:
        if step is not None and run.step != step:
            return False
        if run.state == "waiting":
            return wait_due(batch, program, run)
        if run.state != "active" or run.step is None:
            return False
        op = program.ops[run.step]
        if not isinstance(op, DeliverOp):
            return False
        link, d = workflow_deliveries_table, deliveries_table
        rows = batch.conn.execute(
            sa.select(d.c.id, d.c.status, d.c.reason, d.c.recipient_id).join(link, link.c.delivery_id == d.c.id)
            .where(link.c.run_id == run.id, link.c.step == run.step)
        ).all()
        if not rows or any(row.status not in FINAL for row in rows):
            return False
        statuses = {str(row.id): {"status": row.status, "reason": row.reason, "recipient": row.recipient_id}
                    for row in rows}
        reason, context, nxt = step_outcome(op, statuses)
        run_from(batch, program, run, nxt, reason, context)
        return True

    # --- the locked transaction ------------------------------------------------------------

    def _advance(self, where: Sequence[sa.ColumnElement[bool]],
                 act: Callable[[Batch, Program, RunState], bool], *, limit: int | None = None,
                 order: Any = None) -> list[uuid.UUID]:
        """Lock the matching runs, apply ``act`` to each, write what it decided; returns the runs that moved."""
        with self._writer.begin() as conn:
            # Read with the lock only when the lock is not waited for: a
            # transaction that waited must look at signals after getting it.
            rows = self.locked_runs(conn, where, limit=limit, order=order, skip_locked=limit is not None,
                                    early_signals=limit is not None)
            if not rows:
                return []
            batch = self.new_batch(conn, rows)
            runs = [(run, self.program(conn, run)) for run in map(load_run, rows)]
            for row, (run, _) in zip(rows, runs, strict=True):
                if "early_signal" in row._fields and not row.early_signal and run.wait_until is not None:
                    batch.no_early_signal[run.id] = (run.signal_mark, run.wait_until)
            moved: list[uuid.UUID] = []
            for run, program in runs:
                if program is None:
                    batch.transition(run, "stopped", run.step, "workflow_unavailable",
                                     {"version": run.notifier_version, "fingerprint": run.fingerprint[:12]})
                    moved.append(run.id)
                elif act(batch, program, run):
                    moved.append(run.id)
            self.write(conn, batch)
        return moved

    def locked_runs(self, conn: Connection, where: Sequence[sa.ColumnElement[bool]], *, limit: int | None = None,
                    order: Any = None, skip_locked: bool = False, with_params: bool = True,
                    early_signals: bool = False) -> list[Any]:
        """Select runs (with their recipient) and lock them for this transaction.

        Args:
            conn: inside a writer transaction.
            where: conditions on ``chimeway_workflow_runs``.
            limit: at most this many.
            order: ordering column (default: the run id, so lockers never deadlock).
            skip_locked: skip runs another transaction holds (sweeps).
            with_params: also read the event params (to render the next step).
            early_signals: also read whether a due wait may have a signal to
                find (:func:`~chimeway.workflow.engine.early_signal_column`).
        """
        r, n, e = workflow_runs_table, notifications_table, events_table
        query = sa.select(r, n.c.recipient).join(n, n.c.id == r.c.notification_id)
        if early_signals:
            query = query.add_columns(early_signal_column(r))
        if with_params:
            query = query.add_columns(e.c.params).join(e, e.c.id == r.c.event_id)
        query = (query.where(*where)
                 .order_by(order if order is not None else r.c.id))
        if limit is not None:
            query = query.limit(limit)
        return list(conn.execute(locked(query, conn, skip_locked=skip_locked, of=r)).all())

    def new_batch(self, conn: Connection, rows: Iterable[Any]) -> Batch:
        """A batch for progressions in ``conn`` over runs read by :meth:`locked_runs`.

        Args:
            conn: the transaction's connection.
            rows: the locked runs (their event params, when read with them).
        """
        params: dict[uuid.UUID, Mapping[str, Any]] = {
            row.event_id: row.params or {} for row in rows if "params" in row._fields}

        def params_of(event_id: uuid.UUID) -> Mapping[str, Any]:
            # Runs read without their params (signal routing mostly stops
            # runs) load them only when a step is actually rendered.
            if event_id not in params:
                e = events_table
                found = conn.execute(sa.select(e.c.params).where(e.c.id == event_id)).scalar()
                params[event_id] = found or {}
            return params[event_id]

        notifiers: dict[str, Notifier | None] = {}

        def notifier(key: str) -> Notifier | None:
            if key not in notifiers:
                try:
                    notifiers[key] = get_notifier(key)()
                except Exception:
                    notifiers[key] = None
            return notifiers[key]

        return Batch(conn=conn, now=self.clock.now(), channels=self.channels, notifier=notifier,
                     params=params_of)

    def write(self, conn: Connection, batch: Batch) -> None:
        """Write a progression batch and hand its new deliveries to the dispatcher.

        Args:
            conn: the transaction's connection (the one holding the run locks).
            batch: what the progressions decided.
        """
        batch.write()
        self._update_runs(conn, batch.runs.values(), batch.now)
        if batch.left_waits:
            self.queue.cancel_unique(conn, batch.left_waits)
        if batch.jobs:
            self.queue.insert_many(conn, batch.jobs)
        due = batch.due
        if due:
            self._dispatcher().planned(conn, conn, due)

    @staticmethod
    def _update_runs(conn: Connection, runs: Iterable[RunState], now: datetime) -> None:
        update_rows(conn, workflow_runs_table, [{"id": run.id, **run.values(now)} for run in runs])

    def program(self, conn: Connection, run: RunState) -> Program | None:
        """The program a run follows: this process's, or the stored one it started with.

        Args:
            conn: a connection (to read the stored definition).
            run: the run.
        """
        mine = program_for(run.notifier_key, run.notifier_version)
        if mine is not None and mine.fingerprint == run.fingerprint:
            return mine
        if run.fingerprint not in self._programs:
            d = workflow_definitions_table
            spec = conn.execute(sa.select(d.c.steps).where(
                d.c.notifier_key == run.notifier_key, d.c.version == run.notifier_version,
                d.c.fingerprint == run.fingerprint)).scalar()
            self._programs[run.fingerprint] = None if spec is None else program_from_spec(spec)
        return self._programs[run.fingerprint]

    # --- cancelling ----------------------------------------------------------------------

    def cancel(self, *, run_id: uuid.UUID | str | None = None, notification_id: uuid.UUID | str | None = None,
               cancellation_key: str | None = None, tenant: str | None = None) -> int:
        """Cancel active or waiting runs and their deliveries not yet sent.

        Args:
            run_id: one run.
            notification_id: the run of one notification.
            cancellation_key: every run of the events triggered with this key.
            tenant: with ``cancellation_key``: only this tenant's events.

        Returns:
            how many runs were cancelled.
        """

        r, e = workflow_runs_table, events_table
        where: list[sa.ColumnElement[bool]] = [r.c.state.in_(ACTIVE)]
        by: dict[str, Any] = {}
        if run_id is not None:
            where.append(r.c.id == as_uuid(run_id, name="run_id"))
            by["run_id"] = str(run_id)
        if notification_id is not None:
            where.append(r.c.notification_id == as_uuid(notification_id, name="notification_id"))
            by["notification_id"] = str(notification_id)
        if cancellation_key is not None:
            if not isinstance(cancellation_key, str) or not cancellation_key:
                raise InvalidWorkflowError("cancellation_key must be a non-empty string")
            events = sa.select(e.c.id).where(e.c.cancellation_key == cancellation_key)
            if tenant is not None:
                events = events.where(e.c.tenant == tenant_key(tenant))
            where.append(r.c.event_id.in_(events))
            by["cancellation_key"] = cancellation_key
        if not by:
            raise NotFoundError("cancel_run needs run_id, notification_id or cancellation_key")
        link, d = workflow_deliveries_table, deliveries_table
        with self._writer.begin() as conn:
            rows = self.locked_runs(conn, where)
            if not rows:
                return 0
            batch = self.new_batch(conn, rows)
            for row in rows:
                run = load_run(row)
                batch.transition(run, "cancelled", run.step, "cancelled", {"by": by})
            run_ids = [row.id for row in rows]
            open_ids = conn.execute(
                sa.select(d.c.id).join(link, link.c.delivery_id == d.c.id)
                .where(link.c.run_id.in_(run_ids), d.c.status.in_(CLAIMABLE))
            ).scalars().all()
            cancel_deliveries(conn, open_ids, reason="workflow_cancelled", now=batch.now, checkpoint="workflow",
                              detail=by)
            self.write(conn, batch)
        return len(rows)

