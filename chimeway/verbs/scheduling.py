"""Cron schedules, scheduled notifiers and record triggers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from chimeway.cron import CronSchedule, FiredTick
from chimeway.errors import InvalidInputError
from chimeway.notifier import Notifier
from chimeway.record_triggers import RecordTrigger, ScanResult, build
from chimeway.scheduling.actions import schedule_action
from chimeway.verbs.base import AppBase

__all__ = ["SchedulingVerbs"]


class SchedulingVerbs(AppBase):
    """Cron schedules, scheduled notifiers and record triggers."""

    # Cron schedules, scheduled notifiers and record triggers (``chimeway.cron``,
    # ``chimeway.record_triggers``). Every worker runs the scheduler about once
    # a second; ``run_scheduler`` does the same on demand (tests, scripts).

    def cron(
        self,
        schedule: str,
        target: Any,
        *,
        args: Mapping[str, Any] | None = None,
        timezone: str = "UTC",
        name: str | None = None,
        catch_up: timedelta | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        actor: str | None = None,
    ) -> CronSchedule:
        """Run an action (or trigger a notifier) on a cron schedule, once per tick across all workers.

        Args:
            schedule: five fields (``"*/5 * * * *"``), six with seconds last,
                or an alias (``@hourly``, ``@daily``, ``@weekly``, ``@monthly``, ``@yearly``).
            target: a plain function (registered as a job), a job handle from
                :meth:`job`, a worker name registered elsewhere, or a
                ``Notifier`` subclass (as :meth:`schedule`). A function that
                declares ``session`` runs inside a transaction its job commits.
            args: the job's JSON args. A job function with a ``tick``
                parameter also gets the tick's ISO time as ``tick``.
            timezone: IANA zone the fields are read in; a wall-clock time
                skipped by DST does not fire, a repeated one fires once.
            name: unique, stable schedule name (default: from the target).
            catch_up: fire every tick missed within this window when workers
                come back; ``None`` fires only the latest missed tick.
            queue: the job's queue (default: the job's own).
            max_attempts: attempts of each tick's job (default: the job's own; 20
                for a plain function).
            actor: who the work is done for (an id), stored in the job's args
                and handed to a target that declares ``actor``.

        Raises:
            InvalidScheduleError: the expression or the time zone is unusable.
            InvalidInputError: ``args`` are not JSON, or the target is unusable.
        """
        if isinstance(target, type) and issubclass(target, Notifier):
            if args or actor is not None or max_attempts is not None:
                raise InvalidInputError("args: a scheduled notifier takes its params from params_for_schedule()")
            return self.scheduled_notifiers.add(target, cron=schedule, timezone=timezone, name=name,
                                                tenant=None, catch_up=catch_up)
        return schedule_action(self.scheduler, self.queue, schedule, target, args=args, timezone=timezone,
                               name=name, catch_up=catch_up, queue=queue, max_attempts=max_attempts, actor=actor)

    def schedule(
        self,
        notifier: type[Notifier],
        *,
        timezone: str = "UTC",
        tenant: str | None = None,
        name: str | None = None,
        catch_up: timedelta | None = None,
    ) -> CronSchedule:
        """Trigger ``notifier`` on its ``schedule`` (a cron expression on the class).

        Each tick triggers it once with ``params_for_schedule(tick)`` and the
        idempotency key ``schedule:<name>:<tick ISO time>``.

        Args:
            notifier: a ``Notifier`` subclass with ``schedule = "0 8 * * *"``.
            timezone: IANA zone the schedule is read in.
            tenant: the tenant every run is triggered for.
            name: schedule name (default ``notifier:<key>``).
            catch_up: as for :meth:`cron`.
        """
        return self.scheduled_notifiers.add(notifier, cron=None, timezone=timezone, name=name,
                                            tenant=tenant, catch_up=catch_up)

    def record_trigger(
        self,
        name: str,
        *,
        model: Any,
        where: Any = None,
        action: Any = None,
        notifier: type[Notifier] | None = None,
        params: Any = None,
        idempotency_key: Callable[[Any], str] | None = None,
        cron: str | None = "* * * * *",
        timezone: str = "UTC",
        batch_size: int = 500,
        concurrency: int = 1,
        record_limit: int | None = None,
        lock_for_update: bool = False,
        isolate_rows: bool = True,
        tenant: Any = None,
        tenants: Callable[[], Any] | None = None,
        actor: str | None = None,
        on_error: Callable[..., object] | None = None,
        max_attempts: int = 3,
        queue: str | None = None,
    ) -> RecordTrigger:
        """Run ``action`` (or trigger ``notifier``) once for every row of ``model`` matching ``where``.

        On each ``cron`` tick a scan job pages through the matching rows by
        primary key, one transaction per batch. A notifier is triggered in
        the batch, once per row across scans (its idempotency key); an
        action runs in a row job of its own, inside that job's transaction.

        Args:
            name: unique, stable trigger name.
            model: a mapped class (actions get instances) or a ``Table`` (rows).
            where: a SQLAlchemy boolean expression, or a function of ``now``
                (the app's clock) returning one; ``None`` matches every row.
                With ``tenants``: a function of ``(now, tenant)``.
            action: a function called with the row, or a registered job called
                with its primary key; it may declare ``session`` (the row job's
                transaction), ``actor``, ``tenant`` and ``job``. A
                ``Notifier`` subclass here is the same as ``notifier=``.
            notifier: the ``Notifier`` subclass to trigger per row (instead of an action).
            params: with a notifier: function of the row returning its JSON params (or a dict).
            idempotency_key: with a notifier: function of the row; default ``"<name>:<primary key>"``.
            cron: how often to scan; ``None``: never by itself, only on demand
                (:meth:`run_record_triggers`, :meth:`scan_record_trigger`).
            timezone: IANA zone of ``cron``.
            batch_size: rows per transaction.
            concurrency: batches a notifier scan works on at once, each in its
                own transaction (PostgreSQL; SQLite serializes writers anyway).
            record_limit: at most this many rows per scan (and tenant).
            lock_for_update: lock each row while working on it, passing over
                rows another transaction holds (the row job looks again shortly).
            isolate_rows: a savepoint per row, so an action that raises undoes
                only its row; ``False``: one transaction per batch, redone row
                by row when an action raises (the actions before it run
                again) — several times faster for actions that only write to
                the database.
            tenant: a tenant, or a function of the row returning one.
            tenants: a function returning the tenants to scan, each in turn.
            actor: who the scheduled work is done for (an id), stored with the
                jobs and handed to an action that declares ``actor``.
            on_error: an action run on the row, in a transaction of its own,
                after its last attempt failed (it may declare ``error``); the
                older ``on_error(row_id, exc)`` form still works.
            max_attempts: attempts of a row's job (3: each attempt rolls back
                when it fails, so a retry starts clean).
            queue: queue of the scan and row jobs; default a queue named after
                the trigger, declared for you.

        Raises:
            InvalidInputError: a field is unusable; the message names it.
        """

        trigger = build(name, model=model, where=where, notifier=notifier, action=action, params=params,
                        idempotency_key=idempotency_key, tenant=tenant, tenants=tenants, on_error=on_error,
                        cron=cron, timezone=timezone, batch_size=batch_size, concurrency=concurrency,
                        max_attempts=max_attempts, queue=queue, record_limit=record_limit,
                        lock_for_update=lock_for_update, actor=actor, jobs=self.queue, now=self.clock.now(),
                        isolate_rows=isolate_rows)
        return self.record_triggers.add(trigger)

    def run_record_trigger(self, session: Session | Connection, name: str, row: Any, *,
                           actor: str | None = None) -> Any:
        """Run record trigger ``name`` on one row now, inside the caller's transaction.

        ``where`` is not checked. A notifier is triggered with the same
        idempotency key as the scans use, so a later scan does not notify the
        row again; an action gets the caller's session.

        Args:
            session: the caller's ``Session`` or ``Connection``.
            name: the record trigger.
            row: the model instance.
            actor: who the work is done for (default: the trigger's ``actor``).

        Returns:
            the notifier's ``TriggerResult``, or what the action returned.
        """
        return self.record_triggers.run_one(session, name, row, actor=actor)

    def run_record_triggers(self, name: str, rows: Iterable[Any], *, session: Session | Connection | None = None,
                            actor: str | None = None, tenant: str | None = None) -> list[int]:
        """Hand rows to record trigger ``name``'s row jobs (AshOban's ``run_triggers``).

        Each row job checks ``where`` again when it runs, so a row that
        stopped matching is left alone; a row whose job is already waiting
        or running gets no second one.

        Args:
            name: the record trigger (any, including one with ``cron=None``).
            rows: model instances, rows, or primary-key values.
            session: enqueue inside the caller's transaction (default: its own).
            actor: who the work is done for (default: the trigger's ``actor``).
            tenant: the rows' tenant, for a ``tenants=`` trigger.

        Returns:
            the ids of the jobs inserted.
        """
        return self.record_triggers.run_many(name, rows, session=session, actor=actor, tenant=tenant)

    def scan_record_trigger(self, name: str, *, now: Any = None, actor: str | None = None) -> ScanResult:
        """Run one scan of record trigger ``name`` in this thread (what its scan job does).

        Args:
            name: the record trigger.
            now: the time ``where`` is evaluated at (default: the clock's).
            actor: who the scan runs for (default: the trigger's ``actor``).
        """
        return self.record_triggers.scan(name, now=now, actor=actor)

    def run_scheduler(self, now: Any = None) -> list[FiredTick]:
        """Fire every cron tick due at ``now`` that no worker has fired yet.

        Workers call this about once a second; call it yourself in tests and
        scripts (then :meth:`work` runs the jobs the ticks enqueued).

        Args:
            now: the time to schedule at (default: the clock's).
        """
        return self.scheduler.run(now)

    def cron_schedules(self, now: Any = None) -> list[dict[str, Any]]:
        """Every cron schedule: name, kind, schedule, timezone, target, last_tick, next_run.

        Args:
            now: the time next runs are computed from (default: the clock's).
        """
        return self.scheduler.listing(now)

    def record_triggers_status(self, now: Any = None) -> list[dict[str, Any]]:
        """Every record trigger: rows matching, pending, retrying and failed; last and next scan.

        Args:
            now: when ``where`` is evaluated (default: the clock's).
        """
        return self.record_triggers.status(now)
