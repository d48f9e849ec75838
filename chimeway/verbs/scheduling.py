"""Cron schedules, scheduled notifiers and record triggers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from chimeway.cron import CronExpression, CronSchedule, FiredTick, job_target
from chimeway.errors import InvalidInputError
from chimeway.notifier import Notifier
from chimeway.planning import TriggerResult
from chimeway.queue import JobHandle
from chimeway.record_triggers import RecordTrigger, ScanResult, build
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
    ) -> CronSchedule:
        """Run a job (or trigger a notifier) on a cron schedule, once per tick across all workers.

        Args:
            schedule: five fields (``"*/5 * * * *"``), six with seconds last,
                or an alias (``@hourly``, ``@daily``, ``@weekly``, ``@monthly``, ``@yearly``).
            target: a job handle from :meth:`job`, a plain function (registered
                as a job), a worker name registered elsewhere, or a
                ``Notifier`` subclass (as :meth:`schedule`).
            args: the job's JSON args. A job function with a ``tick``
                parameter also gets the tick's ISO time as ``tick``.
            timezone: IANA zone the fields are read in; a wall-clock time
                skipped by DST does not fire, a repeated one fires once.
            name: unique, stable schedule name (default: from the target).
            catch_up: fire every tick missed within this window when workers
                come back; ``None`` fires only the latest missed tick.
            queue: the job's queue (default: the job's own).

        Raises:
            InvalidScheduleError: the expression or the time zone is unusable.
            InvalidInputError: ``args`` are not JSON, or the target is unusable.
        """
        import inspect

        if isinstance(target, type) and issubclass(target, Notifier):
            if args:
                raise InvalidInputError("args: a scheduled notifier takes its params from params_for_schedule()")
            return self.scheduled_notifiers.add(target, cron=schedule, timezone=timezone, name=name,
                                                tenant=None, catch_up=catch_up)
        fn: Callable[..., Any] | None = None
        if isinstance(target, JobHandle):
            worker, label, fn = target.name, job_target(target.fn), target.fn
        elif isinstance(target, str) and target:
            worker, label = target, target
        elif callable(target):
            handle = self.queue.register(target)
            worker, label, fn = handle.name, job_target(target), target
        else:
            raise InvalidInputError(f"target must be a job, a function, a worker name or a Notifier, got {target!r}")
        # A job function with a ``tick`` parameter is told which tick it runs for.
        wants_tick = fn is not None and "tick" in inspect.signature(fn).parameters and "tick" not in (args or {})
        return self.scheduler.add(CronSchedule(
            name=name or worker, cron=CronExpression(schedule, timezone), worker=worker,
            args=dict(args or {}), queue=queue, kind="job", target=label, catch_up=catch_up,
            tick_arg="tick" if wants_tick else None,
        ))

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
        where: Any,
        notifier: type[Notifier],
        params: Any,
        idempotency_key: Callable[[Any], str] | None = None,
        cron: str = "* * * * *",
        timezone: str = "UTC",
        batch_size: int = 500,
        concurrency: int = 1,
        tenant: Any = None,
        on_error: Callable[[Any, BaseException], object] | None = None,
        max_attempts: int = 3,
        queue: str = "default",
    ) -> RecordTrigger:
        """Trigger ``notifier`` once for every row of ``model`` matching ``where``.

        On each ``cron`` tick a scan job pages through the matching rows by
        primary key and triggers the notifier per row, one transaction per
        batch. The idempotency key makes a row's notification happen once
        across scans, overlaps and restarts.

        Args:
            name: unique, stable trigger name.
            model: a mapped class (scans see instances) or a ``Table`` (rows).
            where: a SQLAlchemy boolean expression, or a function of ``now``
                (the app's clock) returning one.
            notifier: the ``Notifier`` subclass.
            params: function of the row returning the notifier's JSON params (or a dict).
            idempotency_key: function of the row; default ``"<name>:<primary key>"``.
            cron: how often to scan.
            timezone: IANA zone of ``cron``.
            batch_size: rows per transaction.
            concurrency: batches a scan works on at once, each in its own
                transaction (PostgreSQL; SQLite serializes writers anyway).
            tenant: a tenant, or a function of the row returning one.
            on_error: ``on_error(row_id, exc)`` after a failing row's last attempt.
            max_attempts: attempts of a failing row's own job.
            queue: queue of the scan and row jobs.

        Raises:
            InvalidInputError: a field is unusable; the message names it.
        """

        trigger = build(name, model=model, where=where, notifier=notifier, params=params,
                        idempotency_key=idempotency_key, tenant=tenant, on_error=on_error, cron=cron,
                        timezone=timezone, batch_size=batch_size, concurrency=concurrency,
                        max_attempts=max_attempts, queue=queue,
                        jobs=self.queue, now=self.clock.now())
        return self.record_triggers.add(trigger)

    def run_record_trigger(self, session: Session | Connection, name: str, row: Any) -> TriggerResult:
        """Trigger record trigger ``name`` for one row, inside the caller's transaction.

        ``where`` is not checked. The same idempotency key as the scans is used,
        so a later scan does not notify the row again.

        Args:
            session: the caller's ``Session`` or ``Connection``.
            name: the record trigger.
            row: the model instance.
        """
        return self.record_triggers.run_one(session, name, row)

    def scan_record_trigger(self, name: str, *, now: Any = None) -> ScanResult:
        """Run one scan of record trigger ``name`` in this thread (what its scan job does).

        Args:
            name: the record trigger.
            now: the time ``where`` is evaluated at (default: the clock's).
        """
        return self.record_triggers.scan(name, now=now)

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
