"""Record triggers: a notifier fired once per row of your table that matches a filter.

A record trigger is declared next to the data (AshOban's triggers, in
SQLAlchemy terms): a model, a ``where`` expression and a notifier. On its
cron schedule a scan job reads the matching rows in primary-key order
(keyset pagination, ``batch_size`` rows per transaction) and triggers the
notifier for each row with an idempotency key derived from the row, so a row
is notified once however many scans see it: overlapping scans, a scanner
killed halfway and restarted, or a row that keeps matching for hours.

A row that fails (its ``params`` raise, its recipients are invalid, ...) does
not hold up its batch: the batch is redone without it and the row gets its own
job, retried with the queue's backoff; ``on_error(row_id, exc)`` is called
after the last attempt and the discarded job marks the row as given up, so
later scans skip it until the job is retried (``chimeway jobs retry``).
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapper, Session

from chimeway.clock import Clock, utc
from chimeway.cron import CronExpression, CronSchedule, Scheduler
from chimeway.db import tenant_key, writer
from chimeway.errors import InvalidInputError
from chimeway.jsonvalues import check_json
from chimeway.models import Job, events_table
from chimeway.notifier import Notifier
from chimeway.planning import TriggerRequest, TriggerResult
from chimeway.queue.manager import JobQueue
from chimeway.queue.outcomes import JobInfo

__all__ = ["RecordTrigger", "RecordTriggers", "ScanResult"]

log = logging.getLogger("chimeway.record_triggers")

SCAN_WORKER = "chimeway.record_trigger.scan"
ROW_WORKER = "chimeway.record_trigger.row"
# Row jobs in these states mean "someone is on it" or "given up": scans skip the row.
_SKIP_STATES = ("available", "scheduled", "executing", "retryable", "discarded", "cancelled")

Where = Any  # a SQL boolean expression, or a function of ``now`` returning one
RowFn = Callable[[Any], Any]
TriggerFn = Callable[..., TriggerResult]
TriggerManyFn = Callable[[Session, type[Notifier], Sequence[TriggerRequest]], list[TriggerResult]]


@dataclass(frozen=True, kw_only=True)
class ScanResult:
    """What one scan of a record trigger did.

    Args:
        trigger: the trigger's name.
        matched: rows that matched ``where``.
        triggered: rows notified by this scan.
        already: rows whose notification already existed (earlier or overlapping scans).
        failed: rows that failed and were handed to a row job.
        skipped: rows skipped because a row job is retrying them or gave up.
    """

    trigger: str
    matched: int = 0
    triggered: int = 0
    already: int = 0
    failed: int = 0
    skipped: int = 0


@dataclass(frozen=True, kw_only=True, eq=False)
class RecordTrigger:
    """One declared record trigger; see :meth:`chimeway.Chimeway.record_trigger`."""

    name: str
    model: Any
    table: sa.FromClause
    pk: tuple[sa.ColumnElement[Any], ...]
    pk_attrs: tuple[str, ...]
    orm: bool
    where: Where
    notifier: type[Notifier]
    params: RowFn | Mapping[str, Any]
    idempotency_key: RowFn | None
    tenant: RowFn | str | None
    on_error: Callable[[Any, BaseException], object] | None
    cron: CronExpression
    batch_size: int
    concurrency: int
    max_attempts: int
    queue: str

    def condition(self, now: datetime) -> Any:
        """The ``where`` expression at ``now``.

        Args:
            now: the time a callable ``where`` is given.
        """
        return _check_where(self.name, self.where(now) if callable(self.where) else self.where)

    def row_id(self, row: Any) -> Any:
        """The row's primary key as a JSON value (a list when composite).

        Args:
            row: a model instance or row.
        """
        values = [_json_key(getattr(row, attr)) for attr in self.pk_attrs]
        return values[0] if len(values) == 1 else values

    def key_for(self, row: Any, row_id: Any) -> str:
        """The row's idempotency key.

        Args:
            row: a model instance or row.
            row_id: its :meth:`row_id`.
        """
        if self.idempotency_key is None:
            return f"{self.name}:{_row_key(row_id)}"
        key = self.idempotency_key(row)
        if not isinstance(key, str):
            raise InvalidInputError(
                f"record trigger {self.name!r}: idempotency_key returned {type(key).__name__}, expected str"
            )
        return key

    def tenant_for(self, row: Any) -> str | None:
        """The row's tenant.

        Args:
            row: a model instance or row.
        """
        tenant = self.tenant(row) if callable(self.tenant) else self.tenant
        if tenant is not None and not isinstance(tenant, str):
            raise InvalidInputError(
                f"record trigger {self.name!r}: tenant returned {type(tenant).__name__}, expected str or None"
            )
        return tenant

    def params_for(self, row: Any) -> Mapping[str, Any]:
        """The notifier params for the row.

        Args:
            row: a model instance or row.
        """
        params = self.params(row) if callable(self.params) else self.params
        if not isinstance(params, Mapping):
            raise InvalidInputError(
                f"record trigger {self.name!r}: params returned {type(params).__name__}, expected a dict"
            )
        return params

    def select(self, condition: Any) -> sa.Select[Any]:
        """Rows matching ``condition``, in primary-key order.

        Args:
            condition: a SQL boolean expression.
        """
        base = sa.select(self.model) if self.orm else sa.select(self.table)
        return base.where(condition).order_by(*self.pk)

    def after(self, last: tuple[Any, ...] | None) -> Any:
        """The keyset predicate: primary key greater than ``last``.

        Args:
            last: the previous batch's last primary key, or ``None`` to start.
        """
        if last is None:
            return sa.true()
        if len(self.pk) == 1:
            return self.pk[0] > last[0]
        return sa.tuple_(*self.pk) > sa.tuple_(*last)

    def upto(self, end: tuple[Any, ...]) -> Any:
        """The keyset predicate: primary key at most ``end``.

        Args:
            end: a batch's last primary key.
        """
        if len(self.pk) == 1:
            return self.pk[0] <= end[0]
        return sa.tuple_(*self.pk) <= sa.tuple_(*end)

    def pk_values(self, row_id: Any) -> tuple[Any, ...]:
        """Column values for a JSON row id (UUID strings back to UUIDs).

        Args:
            row_id: a value from :meth:`row_id`.
        """
        raw = row_id if len(self.pk) > 1 else [row_id]
        if not isinstance(raw, list) or len(raw) != len(self.pk):
            raise InvalidInputError(f"record trigger {self.name!r}: bad row id {row_id!r}")
        return tuple(_from_json_key(col, value) for col, value in zip(self.pk, raw, strict=True))


class _RowFailed(Exception):
    def __init__(self, row_id: Any, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.row_id = row_id
        self.exc = exc


class _BatchFailed(Exception):
    """The batch trigger failed; redo the batch row by row to find the row."""


class RecordTriggers:
    """The record triggers of one app: declaring, scanning and per-row jobs.

    Args:
        jobs: the app's job queue (scans and row retries run on it).
        scheduler: the app's scheduler (scans are cron schedules).
        trigger: the app's ``trigger`` verb.
        clock: where ``now`` comes from.
        trigger_many: the app's ``trigger_many`` verb (one pass per batch).
    """

    def __init__(self, jobs: JobQueue, scheduler: Scheduler, trigger: TriggerFn, clock: Clock,
                 trigger_many: TriggerManyFn | None = None) -> None:
        self.jobs = jobs
        self.scheduler = scheduler
        self._trigger = trigger
        self._trigger_many = trigger_many
        self.clock = clock
        self._writer = writer(jobs.engine)
        self._triggers: dict[str, RecordTrigger] = {}
        self._registered = False

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
        """Declare a trigger and its scan schedule.

        Args:
            trigger: a trigger built by :func:`build`.
        """
        if trigger.name in self._triggers:
            raise InvalidInputError(f"a record trigger named {trigger.name!r} is already declared")
        self._register_jobs()
        self.scheduler.add(CronSchedule(
            name=f"record_trigger:{trigger.name}", cron=trigger.cron, worker=SCAN_WORKER,
            args={"trigger": trigger.name}, queue=trigger.queue, kind="record_trigger",
            target=f"{trigger.notifier.key} per {trigger.table.description} row",
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
        self.jobs.register(self._row_job, name=ROW_WORKER)
        self._registered = True

    # --- scanning ---------------------------------------------------------------------

    def _scan_job(self, trigger: str) -> None:
        result = self.scan(trigger)
        log.info("record trigger %s: %s", trigger, result)

    def scan(self, name: str, now: datetime | None = None) -> ScanResult:
        """Trigger the notifier for every matching row not yet notified.

        One transaction per batch; a crash loses at most the batch in flight,
        which the next scan redoes.

        Args:
            name: the trigger.
            now: the time ``where`` is evaluated at (default: the clock's).
        """
        trigger = self.get(name)
        now = utc(now) if now is not None else self.clock.now()
        condition = trigger.condition(now)
        skip = self._given_to_row_jobs(trigger)
        totals = {"matched": 0, "triggered": 0, "already": 0, "failed": 0, "skipped": 0}

        def add(counts: Mapping[str, int]) -> None:
            for field_, n in counts.items():
                totals[field_] += n

        last: tuple[Any, ...] | None = None
        if trigger.concurrency == 1:
            while True:
                counts, last = self._scan_batch(trigger, condition, last, skip)
                add(counts)
                if last is None:
                    return ScanResult(trigger=name, **totals)
        # Batches in flight at once, each in its own transaction: the main
        # thread only pages primary-key bounds, the pool does the triggering.
        in_flight: deque[Future[tuple[dict[str, int], tuple[Any, ...] | None]]] = deque()
        with ThreadPoolExecutor(trigger.concurrency, thread_name_prefix=f"chimeway-scan-{name}") as pool:
            try:
                while (upto := self._batch_end(trigger, condition, last)) is not None:
                    in_flight.append(pool.submit(self._scan_batch, trigger, condition, last, skip, upto))
                    last = upto
                    if len(in_flight) >= 2 * trigger.concurrency:
                        add(in_flight.popleft().result()[0])
                while in_flight:
                    add(in_flight.popleft().result()[0])
            finally:
                for future in in_flight:
                    future.cancel()
        return ScanResult(trigger=name, **totals)

    def _batch_end(self, trigger: RecordTrigger, condition: Any,
                   last: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        keys = (
            sa.select(*trigger.pk).where(condition, trigger.after(last)).order_by(*trigger.pk)
            .limit(trigger.batch_size).subquery()
        )
        query = sa.select(*keys.c).order_by(*(sa.desc(c) for c in keys.c)).limit(1)
        with self.jobs.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else tuple(row)

    def _scan_batch(
        self,
        trigger: RecordTrigger,
        condition: Any,
        last: tuple[Any, ...] | None,
        skip: set[str],
        upto: tuple[Any, ...] | None = None,
    ) -> tuple[dict[str, int], tuple[Any, ...] | None]:
        failed: dict[str, tuple[Any, BaseException]] = {}
        per_row = self._trigger_many is None
        while True:
            try:
                with Session(self._writer, expire_on_commit=False) as session, session.begin():
                    rows = self._fetch(session, trigger, condition, last, upto)
                    if not rows:
                        return {}, None
                    counts = self._trigger_rows(session, trigger, rows, skip, failed, per_row=per_row)
                    for row_id, exc in failed.values():
                        self._enqueue_row_job(session, trigger, row_id, exc)
                    next_last = tuple(getattr(rows[-1], attr) for attr in trigger.pk_attrs)
                return counts, next_last
            except _RowFailed as failure:
                # The batch rolled back; redo it without the failing row.
                failed[_row_key(failure.row_id)] = (failure.row_id, failure.exc)
            except _BatchFailed:
                # Rolled back too; row by row finds which row it was.
                per_row = True

    def _fetch(self, session: Session, trigger: RecordTrigger, condition: Any,
               last: tuple[Any, ...] | None, upto: tuple[Any, ...] | None = None) -> list[Any]:
        query = trigger.select(condition).where(trigger.after(last))
        query = query.limit(trigger.batch_size) if upto is None else query.where(trigger.upto(upto))
        if trigger.orm:
            return list(session.scalars(query).all())
        return list(session.execute(query).all())

    def _trigger_rows(
        self,
        session: Session,
        trigger: RecordTrigger,
        rows: Sequence[Any],
        skip: set[str],
        failed: dict[str, tuple[Any, BaseException]],
        *,
        per_row: bool = True,
    ) -> dict[str, int]:
        counts = {"matched": len(rows), "triggered": 0, "already": 0, "failed": 0, "skipped": 0}
        todo: list[tuple[Any, Any, str, str | None]] = []
        for row in rows:
            row_id = trigger.row_id(row)
            rkey = _row_key(row_id)
            if rkey in skip:
                counts["skipped"] += 1
                continue
            if rkey in failed:
                counts["failed"] += 1
                continue
            try:
                todo.append((row, row_id, trigger.key_for(row, row_id), trigger.tenant_for(row)))
            except Exception as exc:
                failed[rkey] = (row_id, exc)
                counts["failed"] += 1
        done = _existing_keys(session, [(tenant, key) for _, _, key, tenant in todo])
        if not per_row and self._trigger_many is not None:
            requests: list[TriggerRequest] = []
            for row, row_id, key, tenant in todo:
                if (tenant_key(tenant), key) in done:
                    counts["already"] += 1
                    continue
                try:
                    requests.append(TriggerRequest(params=trigger.params_for(row), idempotency_key=key,
                                                   tenant=tenant))
                except Exception as exc:
                    raise _RowFailed(row_id, exc) from exc
            if requests:
                try:
                    results = self._trigger_many(session, trigger.notifier, requests)
                except sa.exc.OperationalError:
                    raise
                except Exception as exc:
                    raise _BatchFailed() from exc
                for result in results:
                    counts["already" if result.duplicate else "triggered"] += 1
            return counts
        for row, row_id, key, tenant in todo:
            if (tenant_key(tenant), key) in done:
                counts["already"] += 1
                continue
            try:
                result = self._trigger(session, trigger.notifier, trigger.params_for(row),
                                       idempotency_key=key, tenant=tenant)
            except sa.exc.OperationalError:
                raise
            except Exception as exc:
                raise _RowFailed(row_id, exc) from exc
            counts["already" if result.duplicate else "triggered"] += 1
        return counts

    def _given_to_row_jobs(self, trigger: RecordTrigger) -> set[str]:
        prefix = f"{ROW_WORKER}:{trigger.name}:"
        query = sa.select(Job.unique_key).where(
            Job.worker == ROW_WORKER, Job.state.in_(_SKIP_STATES), Job.unique_key.startswith(prefix, autoescape=True)
        )
        with self.jobs.engine.connect() as conn:
            return {key[len(prefix):] for key in conn.execute(query).scalars() if key}

    def _enqueue_row_job(self, session: Session, trigger: RecordTrigger, row_id: Any,
                         exc: BaseException) -> None:
        log.warning("record trigger %s: row %r failed (%s: %s); retrying it in its own job",
                    trigger.name, row_id, type(exc).__name__, exc)
        self.jobs.enqueue(
            session, ROW_WORKER, {"trigger": trigger.name, "row": row_id}, queue=trigger.queue,
            schedule_in=self.jobs.backoff(1), max_attempts=trigger.max_attempts,
            unique_key=f"{ROW_WORKER}:{trigger.name}:{_row_key(row_id)}",
        )

    # --- one row ------------------------------------------------------------------------

    def run_one(self, session: Session | sa.Connection, name: str, row: Any) -> TriggerResult:
        """Trigger the notifier for one row inside the caller's transaction.

        ``where`` is not checked: the caller decided the row should be notified.

        Args:
            session: the caller's ``Session`` or ``Connection``.
            name: the trigger.
            row: a model instance (or a row with the primary-key attributes).
        """
        trigger = self.get(name)
        key = trigger.key_for(row, trigger.row_id(row))
        return self._trigger(session, trigger.notifier, trigger.params_for(row),
                             idempotency_key=key, tenant=trigger.tenant_for(row))

    def _row_job(self, trigger: str, row: Any, job: JobInfo) -> None:
        declared = self.get(trigger)
        try:
            with Session(self._writer, expire_on_commit=False) as session, session.begin():
                condition = sa.and_(declared.condition(self.clock.now()),
                                    *(col == value for col, value in zip(declared.pk, declared.pk_values(row), strict=True)))
                found = self._fetch(session, declared, condition, None)
                if not found:
                    # The row stopped matching (cancelled, rescheduled, deleted).
                    return
                self.run_one(session, trigger, found[0])
        except Exception as exc:
            if job.attempt >= job.max_attempts and declared.on_error is not None:
                try:
                    declared.on_error(row, exc)
                except Exception:
                    log.exception("record trigger %s: on_error failed for row %r", trigger, row)
            raise

    # --- status -------------------------------------------------------------------------

    def status(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Each trigger with its rows matching, pending, retrying and given up.

        ``pending`` counts matching rows with no notification yet (read-only;
        it computes every matching row's idempotency key).

        Args:
            now: when ``where`` is evaluated (default: the clock's).
        """
        now = utc(now) if now is not None else self.clock.now()
        schedules = {s["name"]: s for s in self.scheduler.listing(now)}
        out: list[dict[str, Any]] = []
        for trigger in sorted(self._triggers.values(), key=lambda t: t.name):
            matching, pending = self._pending(trigger, now)
            retrying, failed = self._row_job_counts(trigger)
            schedule = schedules.get(f"record_trigger:{trigger.name}", {})
            out.append({
                "name": trigger.name,
                "model": trigger.table.description,
                "notifier": trigger.notifier.key,
                "schedule": trigger.cron.expression,
                "matching": matching,
                "pending": pending,
                "retrying": retrying,
                "failed": failed,
                "last_scan": schedule.get("last_tick"),
                "next_scan": schedule.get("next_run"),
            })
        return out

    def _pending(self, trigger: RecordTrigger, now: datetime) -> tuple[int, int]:
        condition = trigger.condition(now)
        matching = pending = 0
        last: tuple[Any, ...] | None = None
        with Session(self.jobs.engine) as session:
            while True:
                rows = self._fetch(session, trigger, condition, last)
                if not rows:
                    return matching, pending
                keys = []
                for row in rows:
                    try:
                        keys.append((trigger.tenant_for(row), trigger.key_for(row, trigger.row_id(row))))
                    except Exception:
                        continue
                done = _existing_keys(session, keys)
                matching += len(rows)
                pending += sum(1 for tenant, key in keys if (tenant_key(tenant), key) not in done)
                last = tuple(getattr(rows[-1], attr) for attr in trigger.pk_attrs)
                session.expunge_all()

    def _row_job_counts(self, trigger: RecordTrigger) -> tuple[int, int]:
        prefix = f"{ROW_WORKER}:{trigger.name}:"
        query = (
            sa.select(Job.state, sa.func.count())
            .where(Job.worker == ROW_WORKER, Job.unique_key.startswith(prefix, autoescape=True))
            .group_by(Job.state)
        )
        with self.jobs.engine.connect() as conn:
            by_state = {state: int(n) for state, n in conn.execute(query)}
        retrying = sum(by_state.get(s, 0) for s in ("available", "scheduled", "executing", "retryable"))
        return retrying, by_state.get("discarded", 0)


# --- declaring --------------------------------------------------------------------------


def build(
    name: str,
    *,
    model: Any,
    where: Where,
    notifier: Any,
    params: Any,
    idempotency_key: Any,
    tenant: Any,
    on_error: Any,
    cron: str,
    timezone: str,
    batch_size: int,
    concurrency: int,
    max_attempts: int,
    queue: str,
    jobs: JobQueue,
    now: datetime,
) -> RecordTrigger:
    """Validate a record trigger's declaration; every error names its field.

    Raises:
        InvalidInputError: a field is unusable (``InvalidScheduleError`` for ``cron``/``timezone``).
    """
    if not isinstance(name, str) or not name.strip() or len(name) > 150:
        raise InvalidInputError(f"record trigger name must be 1-150 characters, got {name!r}")
    label = f"record trigger {name!r}"
    table, pk, pk_attrs, orm = _model(label, model)
    if not (isinstance(notifier, type) and issubclass(notifier, Notifier)) or notifier.__dict__.get("abstract"):
        raise InvalidInputError(f"{label}: notifier must be a Notifier subclass, got {notifier!r}")
    if callable(where):
        try:
            sample = where(now)
        except Exception as exc:
            raise InvalidInputError(f"{label}: where(now) raised {type(exc).__name__}: {exc}") from exc
        _check_where(name, sample)
    else:
        _check_where(name, where)
    if isinstance(params, Mapping):
        check_json(params, name=f"{label}: params")
    elif not callable(params):
        raise InvalidInputError(f"{label}: params must be a function of the row or a dict, got {type(params).__name__}")
    if idempotency_key is not None and not callable(idempotency_key):
        raise InvalidInputError(f"{label}: idempotency_key must be a function of the row, got {type(idempotency_key).__name__}")
    if tenant is not None and not isinstance(tenant, str) and not callable(tenant):
        raise InvalidInputError(f"{label}: tenant must be a string, None or a function of the row")
    if on_error is not None and not callable(on_error):
        raise InvalidInputError(f"{label}: on_error must be a function (row_id, exc), got {type(on_error).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 10_000:
        raise InvalidInputError(f"{label}: batch_size must be an int from 1 to 10000, got {batch_size!r}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 32:
        raise InvalidInputError(f"{label}: concurrency must be an int from 1 to 32, got {concurrency!r}")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise InvalidInputError(f"{label}: max_attempts must be an int >= 1, got {max_attempts!r}")
    if queue not in jobs.queues:
        raise InvalidInputError(f"{label}: queue {queue!r} is not declared; declared: {sorted(jobs.queues)}")
    return RecordTrigger(
        name=name, model=model, table=table, pk=pk, pk_attrs=pk_attrs, orm=orm, where=where, notifier=notifier,
        params=params, idempotency_key=idempotency_key, tenant=tenant, on_error=on_error,
        cron=CronExpression(cron, timezone), batch_size=batch_size, concurrency=concurrency,
        max_attempts=max_attempts,
        queue=queue,
    )


def _model(
    label: str, model: Any
) -> tuple[sa.FromClause, tuple[sa.ColumnElement[Any], ...], tuple[str, ...], bool]:
    if isinstance(model, sa.Table):
        pk: tuple[sa.ColumnElement[Any], ...] = tuple(model.primary_key.columns)
        attrs = tuple(str(col.key) for col in pk)
        table: sa.FromClause = model
        orm = False
    else:
        mapper = sa.inspect(model, raiseerr=False) if isinstance(model, type) else None
        if not isinstance(mapper, Mapper):
            raise InvalidInputError(
                f"{label}: model must be a SQLAlchemy mapped class or Table, got {model!r}"
            )
        pk = tuple(mapper.primary_key)
        # Mapped attribute names may differ from column names.
        attrs = tuple(mapper.get_property_by_column(col).key for col in mapper.primary_key)
        table = mapper.local_table
        orm = True
    if not pk:
        raise InvalidInputError(f"{label}: model {table.description} has no primary key to page by")
    return table, pk, attrs, orm


def _check_where(name: str, expr: Any) -> Any:
    boolean = isinstance(expr, sa.ColumnElement) and isinstance(expr.type, sa.Boolean | sa.types.NullType)
    if not (boolean or isinstance(expr, sa.TextClause)):
        raise InvalidInputError(
            f"record trigger {name!r}: where must be a SQLAlchemy boolean expression "
            f"(e.g. Appointment.cancelled.is_(False)) or a function of now returning one, got {expr!r}"
        )
    return expr


def _existing_keys(session: Session | sa.Connection, keys: Sequence[tuple[str | None, str]]) -> set[tuple[str, str]]:
    by_tenant: dict[str, list[str]] = {}
    for tenant, key in keys:
        by_tenant.setdefault(tenant_key(tenant), []).append(key)
    found: set[tuple[str, str]] = set()
    e = events_table.c
    for tenant, names in by_tenant.items():
        query = sa.select(e.idempotency_key).where(e.tenant == tenant, e.idempotency_key.in_(names))
        found.update((tenant, key) for key in session.execute(query).scalars())
    return found


def _json_key(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | str):
        return value
    return str(value)


def _from_json_key(col: sa.ColumnElement[Any], value: Any) -> Any:
    try:
        python_type = col.type.python_type
    except NotImplementedError:
        return value
    if python_type is uuid.UUID and isinstance(value, str):
        return uuid.UUID(value)
    if python_type is datetime and isinstance(value, str):
        return datetime.fromisoformat(value)
    return value


def _row_key(row_id: Any) -> str:
    return ",".join(str(v) for v in row_id) if isinstance(row_id, list) else str(row_id)
