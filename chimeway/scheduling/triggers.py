"""Record triggers: AshOban's triggers over SQLAlchemy models.

A record trigger is declared next to the data: a model, a ``where``
expression, and what to do with each matching row — run an **action** (a
function called with the row, or a registered job called with its primary
key, inside the row job's transaction), or trigger a **notifier**. On its
cron schedule a scan job finds the matching rows
(:mod:`chimeway.scheduling.scans`); ``cron=None`` makes a trigger run on
demand only (``app.run_record_triggers(name, rows)`` or a scan call).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from chimeway.clock import Clock, utc
from chimeway.cron import CronSchedule, Scheduler
from chimeway.db import plain, tenant_key, writer
from chimeway.errors import InvalidInputError
from chimeway.notifier import Notifier
from chimeway.planning import TriggerRequest, TriggerResult
from chimeway.queue import JobQueue
from chimeway.scheduling.declare import RecordTrigger, ScanResult, row_key
from chimeway.scheduling.row_jobs import RowJobs, row_ids_of
from chimeway.scheduling.scans import Scanner, existing_keys

__all__ = ["SCAN_WORKER", "RecordTriggers"]

log = logging.getLogger("chimeway.record_triggers")

SCAN_WORKER = "chimeway.record_trigger.scan"

TriggerFn = Callable[..., TriggerResult]
TriggerManyFn = Callable[[Session, type[Notifier], Sequence[TriggerRequest]], list[TriggerResult]]


class RecordTriggers:
    """The record triggers of one app: declaring, scanning and per-row jobs.

    Args:
        jobs: the app's job queue (scans and row jobs run on it).
        scheduler: the app's scheduler (scans are cron schedules).
        trigger: the app's ``trigger`` verb.
        clock: where ``now`` comes from.
        trigger_many: the app's ``trigger_many`` verb (one pass per batch).
    """

    def __init__(self, jobs: JobQueue, scheduler: Scheduler, trigger: TriggerFn, clock: Clock,
                 trigger_many: TriggerManyFn | None = None) -> None:
        self.jobs = jobs
        self.scheduler = scheduler
        self.clock = clock
        self._writer = writer(plain(jobs.engine))  # the application's table: see chimeway.db.own_tables
        self._triggers: dict[str, RecordTrigger] = {}
        self._registered = False
        self.row_jobs = RowJobs(jobs, clock, trigger, self.get)
        self.scanner = Scanner(jobs, self.row_jobs, trigger, trigger_many)

    @property
    def triggers(self) -> Mapping[str, RecordTrigger]:
        """Declared triggers by name."""
        return dict(self._triggers)

    def get(self, name: str) -> RecordTrigger:
        """The trigger called ``name``.

        Args:
            name: the trigger's name.

        Raises:
            InvalidInputError: no trigger has that name.
        """
        try:
            return self._triggers[name]
        except (KeyError, TypeError):
            raise InvalidInputError(
                f"no record trigger named {name!r}; declared: {sorted(self._triggers)}"
            ) from None

    def add(self, trigger: RecordTrigger) -> RecordTrigger:
        """Declare a trigger, its queue, and (unless it runs on demand) its scan schedule.

        Args:
            trigger: a trigger built by :func:`chimeway.scheduling.declare.build`.
        """
        if trigger.name in self._triggers:
            raise InvalidInputError(f"a record trigger named {trigger.name!r} is already declared")
        self.jobs.declare_queue(trigger.queue)
        self._register_jobs()
        if trigger.cron is not None:
            self.scheduler.add(CronSchedule(
                name=f"record_trigger:{trigger.name}", cron=trigger.cron, worker=SCAN_WORKER,
                args={"trigger": trigger.name}, queue=trigger.queue, kind="record_trigger",
                target=f"{trigger.target} per {trigger.table.description} row",
                unique_key=f"{SCAN_WORKER}:{trigger.name}",
            ))
        self._triggers[trigger.name] = trigger
        return trigger

    def _register_jobs(self) -> None:
        if self._registered:
            return
        # One scan job at a time per trigger (the unique key): a scan slower
        # than the schedule is not doubled up by the next tick.
        self.jobs.register(self._scan_job, name=SCAN_WORKER, max_attempts=5)
        self.row_jobs.register()
        self._registered = True

    # --- scanning ---------------------------------------------------------------------

    def _scan_job(self, trigger: str, actor: str | None = None) -> None:
        result = self.scan(trigger, actor=actor)
        log.info("record trigger %s: %s", trigger, result)

    def scan(self, name: str, now: datetime | None = None, *, actor: str | None = None) -> ScanResult:
        """Scan once: notify each matching row not yet notified, or hand it to a row job.

        One transaction per batch; a crash loses at most the batch in flight,
        which the next scan redoes.

        Args:
            name: the trigger.
            now: the time ``where`` is evaluated at (default: the clock's).
            actor: who the scan runs for (default: the trigger's ``actor``).
        """
        trigger = self.get(name)
        return self.scanner.scan(trigger, utc(now) if now is not None else self.clock.now(), actor=actor)

    # --- rows given by the caller ----------------------------------------------------------

    def run_one(self, session: Session | sa.Connection, name: str, row: Any, *,
                actor: str | None = None) -> Any:
        """Run the trigger on one row now, inside the caller's transaction; ``where`` is not checked.

        Args:
            session: the caller's ``Session`` or ``Connection``.
            name: the trigger.
            row: a model instance (or a row with the primary-key attributes).
            actor: who the work is done for (default: the trigger's ``actor``).

        Returns:
            the notifier's ``TriggerResult``, or what the action returned.
        """
        trigger = self.get(name)
        return self.row_jobs.apply(session, trigger, row, trigger.row_id(row),
                                   actor=actor if actor is not None else trigger.actor, tenant=None, job=None)

    def run_many(self, name: str, rows: Iterable[Any], *, session: Session | sa.Connection | None = None,
                 actor: str | None = None, tenant: str | None = None) -> list[int]:
        """Hand rows to batch jobs (AshOban's ``run_triggers``), which check ``where`` when they run.

        Args:
            name: the trigger.
            rows: model instances, rows, or primary-key values.
            session: enqueue in the caller's transaction (default: a transaction of its own).
            actor: who the work is done for (default: the trigger's ``actor``).
            tenant: the tenant the rows belong to (a ``tenants=`` trigger).

        Returns:
            the ids of the jobs inserted; a row a job is already waiting for, running or gave
            up on is left out.
        """
        trigger = self.get(name)
        if actor is not None and (not isinstance(actor, str) or not actor):
            raise InvalidInputError(f"actor must be a non-empty string (an id), got {actor!r}")
        if tenant is not None:
            tenant_key(tenant)
        given = self.row_jobs.given(trigger)
        ids = [rid for rid in row_ids_of(trigger, rows) if row_key(rid) not in given]
        who = actor if actor is not None else trigger.actor
        if session is not None:
            return self.row_jobs.enqueue(session, trigger, ids, actor=who, tenant=tenant)
        with Session(self._writer) as own, own.begin():
            return self.row_jobs.enqueue(own, trigger, ids, actor=who, tenant=tenant)

    # --- status -------------------------------------------------------------------------

    def status(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Each trigger with its rows matching, pending, retrying and given up.

        ``pending`` counts matching rows not yet notified (notifier triggers;
        it computes every matching row's idempotency key) or not yet handed to
        a row job (action triggers). Read-only.

        Args:
            now: when ``where`` is evaluated (default: the clock's).
        """
        now = utc(now) if now is not None else self.clock.now()
        schedules = {s["name"]: s for s in self.scheduler.listing(now)}
        out: list[dict[str, Any]] = []
        for trigger in sorted(self._triggers.values(), key=lambda t: t.name):
            matching, pending = self._pending(trigger, now)
            retrying, failed = self.row_jobs.counts(trigger)
            schedule = schedules.get(f"record_trigger:{trigger.name}", {})
            out.append({
                "name": trigger.name,
                "model": trigger.table.description,
                "notifier": trigger.notifier.key if trigger.notifier is not None else None,
                "action": trigger.action.label if trigger.action is not None else None,
                "schedule": trigger.cron.expression if trigger.cron is not None else None,
                "queue": trigger.queue,
                "matching": matching,
                "pending": pending,
                "retrying": retrying,
                "failed": failed,
                "last_scan": schedule.get("last_tick"),
                "next_scan": schedule.get("next_run"),
            })
        return out

    def _pending(self, trigger: RecordTrigger, now: datetime) -> tuple[int, int]:
        matching = pending = 0
        given = self.row_jobs.given(trigger) if trigger.action is not None else set()
        for tenant in trigger.tenant_list():
            condition = trigger.condition(now, tenant)
            last: tuple[Any, ...] | None = None
            with Session(plain(self.jobs.engine)) as session:
                while True:
                    query = trigger.select(condition).where(trigger.after(last)).limit(trigger.batch_size)
                    rows = list(session.scalars(query).all() if trigger.orm else session.execute(query).all())
                    if not rows:
                        break
                    matching += len(rows)
                    pending += self._not_done(session, trigger, rows, tenant, given)
                    last = trigger.last_key(rows[-1])
                    session.expunge_all()
        return matching, pending

    def _not_done(self, session: Session, trigger: RecordTrigger, rows: Sequence[Any], tenant: str | None,
                  given: set[str]) -> int:
        if trigger.action is not None:
            return sum(1 for row in rows if row_key(trigger.row_id(row)) not in given)
        keys = []
        for row in rows:
            try:
                keys.append((trigger.tenant_for(row, tenant), trigger.key_for(row, trigger.row_id(row))))
            except Exception:
                continue
        done = existing_keys(session, keys, like=self.jobs.engine)
        return sum(1 for t, key in keys if (tenant_key(t), key) not in done)
