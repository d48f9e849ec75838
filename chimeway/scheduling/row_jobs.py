"""Row jobs: the jobs that run a record trigger's action (or notifier) on its rows.

Rows are handed out in batches: a **batch job** (``chimeway.record_trigger.rows``)
carries the trigger's name, up to ``batch_size`` primary keys, and the actor
and tenant it runs for. It opens one transaction, reads its rows again with
``where`` (a row that stopped matching is left alone) — locking them first
when the trigger says ``lock_for_update`` (``FOR UPDATE SKIP LOCKED``: a row
another transaction holds is not waited for but handed to a row job of its
own that looks again shortly) — and runs the action on each row inside a
savepoint, so a row whose action raises is rolled back alone. That attempt
is the row's first; a failed row gets a **row job** of its own
(``chimeway.record_trigger.row``), retried with the queue's backoff for the
rest of ``max_attempts``, and the trigger's ``on_error`` runs on the row in a
transaction of its own after the last attempt.

A row that a batch or row job is waiting for, running, or gave up on is not
handed out again: scans and ``run_record_triggers`` skip it, and at most one
row job per trigger and row is active (a unique key).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from chimeway.clock import Clock
from chimeway.db import locked, plain, writer
from chimeway.models import Job
from chimeway.planning import TriggerResult
from chimeway.queue import JobInfo, JobOutcome, JobQueue, NewJob, Retry, Snooze
from chimeway.scheduling.declare import RecordTrigger, row_key

__all__ = ["BATCH_WORKER", "LOCKED_SNOOZE", "ROW_WORKER", "RowJobs", "row_ids_of"]

log = logging.getLogger("chimeway.record_triggers")

ROW_WORKER = "chimeway.record_trigger.row"
BATCH_WORKER = "chimeway.record_trigger.rows"
# Row jobs in these states mean "someone is on it" or "given up": scans skip the row.
SKIP_STATES = ("available", "scheduled", "executing", "retryable", "discarded", "cancelled")
ACTIVE_STATES = ("available", "scheduled", "executing", "retryable")
# How long a row job waits before looking again at a row another transaction holds.
LOCKED_SNOOZE = 1.0

TriggerFn = Callable[..., TriggerResult]


class GaveUp(Exception):
    """A row that used every attempt in its batch; its job records that it was given up."""


class _Redo(Exception):
    """An action raised in a batch without savepoints: redo the batch with them."""

    def __init__(self, row_id: Any) -> None:
        super().__init__(f"row {row_id!r} failed")
        self.row_id = row_id


class RowJobs:
    """Enqueues and runs the row jobs of every record trigger of one app.

    Args:
        jobs: the app's job queue.
        clock: where ``now`` comes from.
        trigger: the app's ``trigger`` verb (notifier triggers).
        lookup: the declared trigger called ``name``.
    """

    def __init__(self, jobs: JobQueue, clock: Clock, trigger: TriggerFn,
                 lookup: Callable[[str], RecordTrigger]) -> None:
        self.jobs = jobs
        self.clock = clock
        self._trigger = trigger
        self._lookup = lookup
        self._writer = writer(plain(jobs.engine))  # the application's table: see chimeway.db.own_tables
        self._registered = False

    def register(self) -> None:
        """Register the row and batch jobs' workers (once)."""
        if not self._registered:
            self.jobs.register(self.run, name=ROW_WORKER)
            # A batch that fails as a whole (the database, not an action) is
            # redone; its rows' own attempts start once it has run.
            self.jobs.register(self.run_batch, name=BATCH_WORKER, max_attempts=5)
            self._registered = True

    # --- enqueueing ------------------------------------------------------------------

    @staticmethod
    def unique_key(trigger: RecordTrigger, row_id: Any) -> str:
        """The key that allows one active job per trigger and row.

        Args:
            trigger: the trigger.
            row_id: the row's JSON primary key.
        """
        return f"{ROW_WORKER}:{trigger.name}:{row_key(row_id)}"

    def new_job(self, trigger: RecordTrigger, row_id: Any, *, actor: str | None, tenant: str | None,
                delay: float | None = None, tried: int = 0, error: str | None = None) -> NewJob:
        """The row job for one row.

        Args:
            trigger: the trigger.
            row_id: the row's JSON primary key.
            actor: who the work is done for.
            tenant: the tenant the row was found in (``tenants=`` scans).
            delay: seconds before it is due.
            tried: attempts the row already had (in its batch).
            error: the last of those attempts' error.
        """
        args: dict[str, Any] = {"trigger": trigger.name, "row": row_id}
        if tried:
            args["tried"] = tried
        if error is not None:
            args["error"] = error
        if actor is not None:
            args["actor"] = actor
        if tenant is not None:
            args["tenant"] = tenant
        return NewJob(worker=ROW_WORKER, args=args, queue=trigger.queue, schedule_in=delay,
                      max_attempts=max(1, trigger.max_attempts - tried), unique_key=self.unique_key(trigger, row_id))

    def enqueue(self, session: Session | sa.Connection, trigger: RecordTrigger, row_ids: Sequence[Any], *,
                actor: str | None, tenant: str | None) -> list[int]:
        """Hand rows to batch jobs of ``batch_size`` rows each (one statement).

        The caller leaves out rows :meth:`given` names.

        Args:
            session: the transaction to insert in.
            trigger: the trigger.
            row_ids: the rows' JSON primary keys.
            actor: who the work is done for.
            tenant: the tenant the rows were found in.

        Returns:
            the ids of the jobs inserted.
        """
        self.register()
        extra: dict[str, Any] = {}
        if actor is not None:
            extra["actor"] = actor
        if tenant is not None:
            extra["tenant"] = tenant
        size = trigger.batch_size
        batches = [list(row_ids[i:i + size]) for i in range(0, len(row_ids), size)]
        return self.jobs.insert_many(session, [
            NewJob(worker=BATCH_WORKER, args={"trigger": trigger.name, "rows": batch, **extra}, queue=trigger.queue,
                   unique_key=f"{BATCH_WORKER}:{trigger.name}:{row_key(batch[0])}")
            for batch in batches
        ])

    def enqueue_failed(self, session: Session, trigger: RecordTrigger, row_id: Any, exc: BaseException, *,
                       actor: str | None, tenant: str | None) -> None:
        """Hand a row that failed inside a scan's batch to its own job, retried with backoff.

        Args:
            session: the scan's batch transaction.
            trigger: the trigger.
            row_id: the row's JSON primary key.
            exc: why it failed.
            actor: who the scan runs for.
            tenant: the tenant scanned.
        """
        log.warning("record trigger %s: row %r failed (%s: %s); retrying it in its own job",
                    trigger.name, row_id, type(exc).__name__, exc)
        self.register()
        self.jobs.insert_many(session, [self.new_job(trigger, row_id, actor=actor, tenant=tenant,
                                                     delay=self.jobs.backoff(1))])

    def given(self, trigger: RecordTrigger) -> set[str]:
        """Row keys not to hand out again: a job is waiting for them, running them, or gave up on them."""
        prefix = f"{ROW_WORKER}:{trigger.name}:"
        query = sa.select(Job.unique_key).where(
            Job.worker == ROW_WORKER, Job.state.in_(SKIP_STATES), Job.unique_key.startswith(prefix, autoescape=True)
        )
        batches = sa.select(Job.args).where(
            Job.worker == BATCH_WORKER, Job.state.in_(ACTIVE_STATES),
            Job.unique_key.startswith(f"{BATCH_WORKER}:{trigger.name}:", autoescape=True),
        )
        with self.jobs.engine.connect() as conn:
            keys = {key[len(prefix):] for key in conn.execute(query).scalars() if key}
            for args in conn.execute(batches).scalars():
                keys.update(row_key(rid) for rid in (args or {}).get("rows", ()))
        return keys

    def counts(self, trigger: RecordTrigger) -> tuple[int, int]:
        """The trigger's row jobs retrying (or waiting) and given up."""
        prefix = f"{ROW_WORKER}:{trigger.name}:"
        query = (
            sa.select(Job.state, sa.func.count())
            .where(Job.worker == ROW_WORKER, Job.unique_key.startswith(prefix, autoescape=True))
            .group_by(Job.state)
        )
        with self.jobs.engine.connect() as conn:
            by_state = {state: int(n) for state, n in conn.execute(query)}
        return sum(by_state.get(s, 0) for s in ACTIVE_STATES), by_state.get("discarded", 0)

    # --- running -----------------------------------------------------------------------

    def run(self, trigger: str, row: Any, job: JobInfo, actor: str | None = None,
            tenant: str | None = None, tried: int = 0, error: str | None = None) -> None:
        """The row job: run the trigger on one row, if it still matches.

        Args:
            trigger: the trigger's name.
            row: the row's JSON primary key.
            job: the job.
            actor: who the work is done for.
            tenant: the tenant the row was found in.
            tried: attempts the row had before this job (in its batch).
            error: the error of the last of those, when they were all it had.
        """
        declared = self._lookup(trigger)
        if job.attempt == 1 and tried >= declared.max_attempts:
            raise GaveUp(f"row {row!r} used its {tried} attempt(s) in its batch: {error}")
        try:
            with Session(self._writer, expire_on_commit=False) as session, session.begin():
                found = self.fetch(session, declared, row, tenant=tenant, check=True)
                if found is None:
                    if declared.lock_for_update and self.fetch(session, declared, row, tenant=tenant,
                                                               check=True, lock=False) is not None:
                        # Held by another transaction: look again shortly
                        # (no attempt spent); it may have stopped matching by then.
                        raise Snooze(LOCKED_SNOOZE)
                    return  # the row stopped matching (done, cancelled, deleted)
                self.apply(session, declared, found, row, actor=actor, tenant=tenant, job=job)
        except JobOutcome as outcome:
            if not isinstance(outcome, Retry):
                raise
            self._after_failure(declared, row, outcome, job, actor=actor, tenant=tenant)
            raise
        except Exception as exc:
            self._after_failure(declared, row, exc, job, actor=actor, tenant=tenant)
            raise

    def run_batch(self, trigger: str, rows: list[Any], job: JobInfo, actor: str | None = None,
                  tenant: str | None = None) -> None:
        """The batch job: run the trigger on each of its rows that still matches.

        With ``isolate_rows`` each row runs in a savepoint; without, the batch
        runs in one transaction, and an action that raises rolls it back and
        the batch is redone with savepoints.

        Args:
            trigger: the trigger's name.
            rows: the rows' JSON primary keys.
            job: the job.
            actor: who the work is done for.
            tenant: the tenant the rows were found in.
        """
        declared = self._lookup(trigger)
        isolate = declared.isolate_rows
        while True:
            try:
                failed = self._batch(declared, rows, job, actor, tenant, isolate=isolate)
                break
            except _Redo as redo:
                log.info("record trigger %s: row %r failed in a batch without savepoints (%s); "
                         "redoing the batch row by row", trigger, redo.row_id, redo.__cause__)
                isolate = True
        # This was each row's first attempt: a failed row's own job has the
        # rest; without any left, on_error runs now.
        if declared.max_attempts == 1 and declared.on_error is not None:
            for rid, error in failed:
                try:
                    self.run_on_error(declared, rid, error, actor=actor, tenant=tenant, job=job)
                except Exception:
                    log.exception("record trigger %s: on_error failed for row %r", trigger, rid)

    def _batch(self, declared: RecordTrigger, rows: list[Any], job: JobInfo, actor: str | None,
               tenant: str | None, *, isolate: bool) -> list[tuple[Any, BaseException]]:
        failed: list[tuple[Any, BaseException]] = []
        left = declared.max_attempts - 1
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            found = self._fetch_many(session, declared, rows, tenant)
            held = [rid for rid in rows if row_key(rid) not in found]
            if declared.lock_for_update and held:
                # Still matching but not returned: another transaction holds them.
                still = self._fetch_many(session, declared, held, tenant, lock=False)
                self.jobs.insert_many(session, [
                    self.new_job(declared, rid, actor=actor, tenant=tenant, delay=LOCKED_SNOOZE)
                    for rid in held if row_key(rid) in still
                ])
            for rid in rows:
                row = found.get(row_key(rid))
                if row is None:
                    continue
                if not isolate:
                    try:
                        self.apply(session, declared, row, rid, actor=actor, tenant=tenant, job=job)
                    except Exception as exc:
                        raise _Redo(rid) from exc
                    continue
                try:
                    with session.begin_nested():
                        self.apply(session, declared, row, rid, actor=actor, tenant=tenant, job=job)
                except Exception as exc:
                    log.warning("record trigger %s: row %r failed (%s: %s)", declared.name, rid,
                                type(exc).__name__, exc)
                    failed.append((rid, exc))
            if failed:
                # With attempts left the row's own job retries it; without, the
                # job only records that the row was given up (scans skip it
                # until an operator retries the job, which tries the row again).
                self.jobs.insert_many(session, [
                    self.new_job(declared, rid, actor=actor, tenant=tenant, tried=1,
                                 delay=self.jobs.backoff(1) if left else None,
                                 error=None if left else f"{type(exc).__name__}: {exc}"[:500])
                    for rid, exc in failed
                ])
        return failed

    def _fetch_many(self, session: Session, trigger: RecordTrigger, row_ids: Sequence[Any], tenant: str | None,
                    *, lock: bool | None = None) -> dict[str, Any]:
        keys = sa.or_(*(trigger.by_key(rid) for rid in row_ids)) if len(trigger.pk) > 1 else \
            trigger.pk[0].in_([trigger.pk_values(rid)[0] for rid in row_ids])
        query = trigger.select(sa.and_(trigger.condition(self.clock.now(), tenant), keys))
        if trigger.lock_for_update if lock is None else lock:
            query = locked(query, session.connection(), skip_locked=True, of=trigger.table)
        found = session.scalars(query).all() if trigger.orm else session.execute(query).all()
        return {row_key(trigger.row_id(row)): row for row in found}

    def fetch(self, session: Session, trigger: RecordTrigger, row_id: Any, *, tenant: str | None,
              check: bool, lock: bool | None = None) -> Any:
        """Read one row (``None`` when gone, not matching, or held by another transaction).

        Args:
            session: the row job's transaction.
            trigger: the trigger.
            row_id: the row's JSON primary key.
            tenant: the tenant scanned.
            check: also require ``where``.
            lock: take the row lock (default: the trigger's ``lock_for_update``);
                with ``check``, skip a row another transaction holds.
        """
        condition = trigger.by_key(row_id)
        if check:
            condition = sa.and_(trigger.condition(self.clock.now(), tenant), condition)
        query = trigger.select(condition).limit(1)
        if trigger.lock_for_update if lock is None else lock:
            query = locked(query, session.connection(), skip_locked=check, of=trigger.table)
        if trigger.orm:
            return session.scalars(query).first()
        return session.execute(query).first()

    def apply(self, session: Session | sa.Connection, trigger: RecordTrigger, row: Any, row_id: Any, *,
              actor: str | None, tenant: str | None, job: JobInfo | None) -> Any:
        """Run the trigger on one row inside ``session``'s transaction: its action, or its notifier.

        Args:
            session: the transaction.
            trigger: the trigger.
            row: the row (a model instance or a row).
            row_id: its JSON primary key.
            actor: who the work is done for.
            tenant: the tenant scanned.
            job: the row job, when run by one.
        """
        the_tenant = trigger.tenant_for(row, tenant)
        if trigger.action is None:
            assert trigger.notifier is not None
            return self._trigger(session, trigger.notifier, trigger.params_for(row),
                                 idempotency_key=trigger.key_for(row, row_id), tenant=the_tenant, actor=actor)
        if isinstance(session, Session) or "session" not in trigger.action.extras:
            return trigger.action.call(row, row_id, session=session, actor=actor, tenant=the_tenant, job=job)
        # A caller holding a Connection: a Session on it joins its transaction.
        with Session(bind=session) as joined:
            done = trigger.action.call(row, row_id, session=joined, actor=actor, tenant=the_tenant, job=job)
            joined.flush()
        return done

    def _after_failure(self, trigger: RecordTrigger, row_id: Any, exc: BaseException, job: JobInfo, *,
                       actor: str | None, tenant: str | None) -> None:
        if job.attempt < job.max_attempts or trigger.on_error is None:
            return
        try:
            self.run_on_error(trigger, row_id, exc, actor=actor, tenant=tenant, job=job)
        except Exception:
            log.exception("record trigger %s: on_error failed for row %r", trigger.name, row_id)

    def run_on_error(self, trigger: RecordTrigger, row_id: Any, exc: BaseException, *, actor: str | None,
                     tenant: str | None, job: JobInfo | None) -> None:
        """Run ``on_error`` on a row whose last attempt failed, in a transaction of its own.

        Args:
            trigger: the trigger.
            row_id: the row's JSON primary key.
            exc: the last attempt's error.
            actor: who the work was done for.
            tenant: the tenant scanned.
            job: the row job.
        """
        on_error = trigger.on_error
        assert on_error is not None
        if on_error.legacy:
            on_error.call(None, row_id, error=exc)
            return
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            # The row as it is now, whether or not it still matches; locked
            # (waiting for the lock) when the trigger locks its rows.
            found = self.fetch(session, trigger, row_id, tenant=tenant, check=False)
            if found is None:
                log.warning("record trigger %s: row %r is gone; on_error not run", trigger.name, row_id)
                return
            on_error.call(found, row_id, session=session, actor=actor, tenant=trigger.tenant_for(found, tenant),
                          job=job, error=exc)


def row_ids_of(trigger: RecordTrigger, rows: Iterable[Any]) -> list[Any]:
    """JSON primary keys of rows given as instances, rows or key values.

    Args:
        trigger: the trigger.
        rows: model instances (or rows), or primary-key values (a list for a composite key).

    Raises:
        InvalidInputError: a value is neither.
    """
    out = []
    for row in rows:
        if all(hasattr(row, attr) for attr in trigger.pk_attrs) and not isinstance(row, str | int | list):
            out.append(trigger.row_id(row))
        else:
            trigger.pk_values(row)  # raises InvalidInputError naming the trigger
            out.append(row)
    return out

