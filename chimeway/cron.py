"""Cron: schedules whose ticks fire exactly once, on however many workers.

Every worker may run the scheduler; there is no leader. A tick is identified by
``(schedule name, tick time)`` and is claimed by inserting that row into
``chimeway_cron_ticks`` with ``ON CONFLICT DO NOTHING ... RETURNING``. Only the
transaction whose insert went through enqueues the tick's job, in the same
transaction, so a tick fires once whether one node or ten look at it, and a
crash between the two writes leaves neither.

Times:

- Expressions are read by croniter: five fields, or six with seconds last
  (``"*/10 * * * * 30"``), or an alias (``@hourly``, ``@daily``, ``@midnight``,
  ``@weekly``, ``@monthly``, ``@yearly``, ``@annually``).
- Fields are wall-clock times in the schedule's time zone. A wall-clock time
  skipped by a daylight-saving jump does not exist and does not fire; one that
  occurs twice when clocks go back fires once, at its first occurrence.
- The scheduler fires ticks due at ``now``, which comes from the app's clock
  (a ``FakeClock`` in tests) unless given explicitly.

Missed ticks (no worker was running): by default only the most recent missed
tick fires; ``catch_up=timedelta(...)`` fires every missed tick inside that
window, oldest first, capped at :data:`CATCH_UP_LIMIT`. A schedule that has
never ticked starts fresh: only a tick due within the last
:data:`FIRST_RUN_GRACE` fires.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from croniter import croniter
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from chimeway.clock import Clock, utc
from chimeway.db import insert, locked, writer
from chimeway.errors import ConfigurationError, InvalidInputError, InvalidScheduleError
from chimeway.models import cron_ticks_table
from chimeway.notifier import Notifier
from chimeway.planning import TriggerResult
from chimeway.queue.args import check_args
from chimeway.queue.manager import JobQueue
from chimeway.workflow.names import PROGRESS_WORKER, WORKFLOW_QUEUE

__all__ = [
    "CATCH_UP_LIMIT",
    "FIRST_RUN_GRACE",
    "TICK_RETENTION",
    "Cron",
    "CronExpression",
    "CronSchedule",
    "FiredTick",
    "ScheduledNotifiers",
    "Scheduler",
    "prune_ticks",
    "workflow_sweep_schedule",
]

log = logging.getLogger("chimeway.cron")

ALIASES = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
FIRST_RUN_GRACE = timedelta(minutes=1)
CATCH_UP_LIMIT = 1000
# Tick rows older than this are pruned by default (``Retention.cron_ticks``);
# each schedule's latest tick is kept, since it is what "missed since" is
# measured from.
TICK_RETENTION = timedelta(days=7)
MAX_NAME = 200


@dataclass(frozen=True)
class CronExpression:
    """A validated cron expression in a named time zone.

    Args:
        expression: the cron expression.
        timezone: an IANA time zone name (``"UTC"``, ``"Europe/Berlin"``).

    Raises:
        InvalidScheduleError: the expression or the time zone cannot be used.
    """

    expression: str
    timezone: str = "UTC"
    zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        expr = self.expression
        if not isinstance(expr, str) or not expr.strip():
            raise InvalidScheduleError(f"cron expression must be a non-empty string, got {expr!r}")
        expr = " ".join(expr.split())
        object.__setattr__(self, "expression", expr)
        if expr.startswith("@"):
            if expr.lower() not in ALIASES:
                raise InvalidScheduleError(
                    f"cron expression {expr!r}: unknown alias; use one of {sorted(ALIASES)}"
                )
        elif len(expr.split()) not in (5, 6):
            raise InvalidScheduleError(
                f"cron expression {expr!r} has {len(expr.split())} fields; "
                "use 5 (minute hour day month weekday) or 6 (seconds last)"
            )
        try:
            valid = croniter.is_valid(expr)
        except Exception:
            valid = False
        if not valid:
            raise InvalidScheduleError(f"cron expression {expr!r} is not valid")
        object.__setattr__(self, "zone", _zone(self.timezone))
        try:
            croniter(expr, datetime(2000, 1, 1)).get_next(datetime)
        except Exception as exc:
            raise InvalidScheduleError(f"cron expression {expr!r} never matches a date") from exc

    def _local(self, at: datetime) -> datetime:
        return utc(at).astimezone(self.zone).replace(tzinfo=None)

    def _utc(self, wall: datetime) -> datetime | None:
        # fold=0 picks the first of a repeated wall-clock time; a time inside
        # a spring-forward gap does not survive the round trip and is skipped.
        aware = wall.replace(tzinfo=self.zone)
        instant = aware.astimezone(UTC)
        if instant.astimezone(self.zone).replace(tzinfo=None) != wall:
            return None
        return instant

    def _walk(self, start: datetime, *, backwards: bool = False) -> Iterator[datetime]:
        it = croniter(self.expression, start, is_prev=backwards)
        step = it.get_prev if backwards else it.get_next
        while True:
            wall = step(datetime)
            instant = self._utc(wall)
            if instant is not None:
                yield instant

    def ticks_between(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """Ticks ``t`` with ``after < t <= until``, in order, as aware UTC datetimes.

        Args:
            after: exclusive lower bound.
            until: inclusive upper bound.
        """
        after, until = utc(after), utc(until)
        # Wall time → UTC is monotonic, so no tick before after's wall time
        # can land after ``after``; repeated-hour ticks are filtered below.
        for tick in self._walk(self._local(after)):
            if tick > until:
                return
            if tick > after:
                yield tick

    def latest(self, at: datetime) -> datetime:
        """The latest tick at or before ``at`` (aware UTC).

        Args:
            at: the moment to look back from.
        """
        at = utc(at)
        wall = self._local(at).replace(microsecond=0)
        best = next(self._walk(wall + timedelta(seconds=1), backwards=True))
        # During a repeated hour the wall clock runs behind ticks already
        # fired at the first pass, so look a little forward too.
        for tick in self._walk(wall):
            if tick > at:
                break
            best = max(best, tick)
        return best

    def next_after(self, at: datetime) -> datetime:
        """The first tick strictly after ``at`` (aware UTC).

        Args:
            at: the moment to look forward from.
        """
        at = utc(at)
        return next(t for t in self._walk(self._local(at)) if t > at)

    def due(self, now: datetime, since: datetime | None, catch_up: timedelta | None) -> list[datetime]:
        """The ticks to fire at ``now``, oldest first.

        Args:
            now: the scheduler's time.
            since: the schedule's latest recorded tick, or ``None`` if it never ticked.
            catch_up: the window missed ticks are fired in; ``None`` fires
                only the most recent one.
        """
        now = utc(now)
        if since is None:
            latest = self.latest(now)
            return [latest] if latest > now - FIRST_RUN_GRACE else []
        since = utc(since)
        if catch_up is None:
            latest = self.latest(now)
            return [latest] if latest > since else []
        ticks: list[datetime] = []
        skipped = 0
        for tick in self.ticks_between(max(since, now - catch_up), now):
            ticks.append(tick)
            if len(ticks) > CATCH_UP_LIMIT:
                ticks.pop(0)
                skipped += 1
        if skipped:
            log.warning("cron %r: %d missed tick(s) beyond the catch-up limit of %d were skipped",
                        self.expression, skipped, CATCH_UP_LIMIT)
        return ticks


def _zone(name: Any) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise InvalidScheduleError(f"timezone must be an IANA time zone name, got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InvalidScheduleError(
            f"timezone {name!r} is not a known IANA time zone (e.g. 'UTC', 'Europe/Berlin')"
        ) from exc


@dataclass(frozen=True, kw_only=True)
class CronSchedule:
    """One registered schedule: on each tick, one job is enqueued.

    Args:
        name: unique schedule name; the tick rows' key.
        cron: the expression and its time zone.
        worker: the job's worker name.
        args: the job's JSON args.
        queue: the job's queue (``None``: the worker's own).
        kind: ``"job"``, ``"notifier"``, ``"record_trigger"`` or ``"builtin"``.
        target: what the schedule runs, for listings.
        catch_up: window for missed ticks (``None``: only the latest).
        tick_arg: when set, the tick's ISO time is added to the args under this name.
        unique_key: a unique key for the job, so a slow run is not doubled.
        max_attempts: attempts of each tick's job (``None``: the worker's own).
    """

    name: str
    cron: CronExpression
    worker: str
    args: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    kind: str = "job"
    target: str = ""
    catch_up: timedelta | None = None
    tick_arg: str | None = None
    unique_key: str | None = None
    max_attempts: int | None = None

    def job_args(self, tick: datetime) -> dict[str, Any]:
        """The job args for one tick.

        Args:
            tick: the tick time.
        """
        args = dict(self.args)
        if self.tick_arg is not None:
            args[self.tick_arg] = tick.isoformat()
        return args


@dataclass(frozen=True, kw_only=True)
class FiredTick:
    """A tick this scheduler run claimed and fired.

    Args:
        name: the schedule.
        at: the tick time (aware UTC).
        job_id: the job enqueued for it (``None`` when a unique job was already active).
    """

    name: str
    at: datetime
    job_id: int | None


class Scheduler:
    """The schedules of one app and the function workers call to fire them.

    Args:
        jobs: the app's job queue; ticks enqueue onto it.
        clock: where ``now`` comes from.
    """

    def __init__(self, jobs: JobQueue, clock: Clock) -> None:
        self.jobs = jobs
        self.clock = clock
        self._writer = writer(jobs.engine)
        self._schedules: dict[str, CronSchedule] = {}

    @property
    def schedules(self) -> Mapping[str, CronSchedule]:
        """Registered schedules by name."""
        return dict(self._schedules)

    def add(self, schedule: CronSchedule) -> CronSchedule:
        """Register a schedule; re-registering an identical one is a no-op.

        Args:
            schedule: the schedule.

        Raises:
            ConfigurationError: another schedule already has that name.
        """
        name = schedule.name
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise InvalidInputError(f"cron name must be 1-{MAX_NAME} characters, got {name!r}")
        check_args(schedule.args)
        if schedule.queue is not None and schedule.queue not in self.jobs.queues:
            raise InvalidInputError(
                f"cron {name!r}: queue {schedule.queue!r} is not declared; declared: {sorted(self.jobs.queues)}"
            )
        if schedule.catch_up is not None and (
            not isinstance(schedule.catch_up, timedelta) or schedule.catch_up <= timedelta(0)
        ):
            raise InvalidScheduleError(f"catch_up must be a positive timedelta or None, got {schedule.catch_up!r}")
        existing = self._schedules.get(name)
        if existing is not None and existing != schedule:
            raise ConfigurationError(
                f"a cron schedule named {name!r} is already registered "
                f"({existing.cron.expression!r} → {existing.target}); pass another name="
            )
        self._schedules[name] = schedule
        return schedule

    def remove(self, name: str) -> None:
        """Stop firing schedule ``name`` (its recorded ticks stay).

        Args:
            name: the schedule, e.g. ``"chimeway.workflow.sweep"``.

        Raises:
            InvalidInputError: no schedule has that name.
        """
        if name not in self._schedules:
            raise InvalidInputError(f"no cron schedule named {name!r}; registered: {sorted(self._schedules)}")
        del self._schedules[name]

    # --- firing ----------------------------------------------------------------------

    def run(self, now: datetime | None = None) -> list[FiredTick]:
        """Fire every tick due at ``now`` that no other worker has fired.

        Args:
            now: the time to schedule at (default: the clock's).

        Returns:
            The ticks this call fired, oldest first per schedule.

        Raises:
            Exception: the first schedule that failed to fire, once every
                other schedule has had its turn.
        """
        if not self._schedules:
            return []
        now = utc(now) if now is not None else self.clock.now()
        schedules = list(self._schedules.values())
        last = self.last_ticks()
        fired: list[FiredTick] = []
        failure: Exception | None = None
        for schedule in schedules:
            ticks = schedule.cron.due(now, last.get(schedule.name), schedule.catch_up)
            if not ticks:
                continue
            # One broken schedule must not hold up the others.
            try:
                fired.extend(self._fire(schedule, ticks, now))
            except Exception as exc:
                log.exception("cron %s: could not fire %d tick(s)", schedule.name, len(ticks))
                failure = failure or exc
        if failure is not None:
            raise failure
        return fired

    def _fire(self, schedule: CronSchedule, ticks: list[datetime], now: datetime) -> list[FiredTick]:
        fired: list[FiredTick] = []
        with self._writer.begin() as conn:
            claimed = _claim_ticks(conn, schedule.name, ticks, now)
            for tick in sorted(claimed):
                job_id = self.jobs.enqueue(
                    conn, schedule.worker, schedule.job_args(tick), queue=schedule.queue,
                    scheduled_at=tick, unique_key=schedule.unique_key, max_attempts=schedule.max_attempts,
                )
                fired.append(FiredTick(name=schedule.name, at=tick, job_id=job_id))
        for done in fired:
            log.debug("cron %s fired tick %s (job %s)", done.name, done.at.isoformat(), done.job_id)
        return fired

    def last_ticks(self) -> dict[str, datetime]:
        """The latest recorded tick of each registered schedule."""
        names = list(self._schedules)
        if not names:
            return {}
        t = cron_ticks_table
        query = sa.select(t.c.name, sa.func.max(t.c.tick_at)).where(t.c.name.in_(names)).group_by(t.c.name)
        with self.jobs.engine.connect() as conn:
            return {name: utc(at) for name, at in conn.execute(query) if at is not None}

    def prune(self, before: datetime) -> int:
        """Delete tick rows older than ``before``, keeping each schedule's latest.

        Args:
            before: the cutoff.

        Returns:
            How many rows were deleted.
        """
        deleted = 0
        while True:
            with self._writer.begin() as conn:
                n = prune_ticks(conn, utc(before), PRUNE_BATCH)
            deleted += n
            if n < PRUNE_BATCH:
                return deleted

    # --- listing -----------------------------------------------------------------------

    def listing(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Every schedule with its last tick and next run, for ``chimeway cron``.

        Args:
            now: the time to compute next runs from (default: the clock's).
        """
        now = utc(now) if now is not None else self.clock.now()
        last = self.last_ticks()
        return [
            {
                "name": s.name,
                "kind": s.kind,
                "schedule": s.cron.expression,
                "timezone": s.cron.timezone,
                "target": s.target,
                "last_tick": last.get(s.name),
                "next_run": s.cron.next_after(now),
            }
            for s in sorted(self._schedules.values(), key=lambda s: s.name)
        ]


PRUNE_BATCH = 1000


def prune_ticks(conn: Connection, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` tick rows older than ``before``, never a schedule's latest.

    Args:
        conn: a write transaction.
        before: the cutoff.
        limit: at most this many rows.

    Returns:
        How many rows were deleted.
    """
    t = cron_ticks_table
    newer = t.alias("newer")
    has_newer = sa.exists().where(newer.c.name == t.c.name, newer.c.tick_at > t.c.tick_at)
    doomed = locked(sa.select(t.c.name, t.c.tick_at).where(t.c.tick_at < before, has_newer).limit(limit),
                    conn, skip_locked=True, of=t).cte("doomed_ticks")
    stmt = (sa.delete(t).where(sa.tuple_(t.c.name, t.c.tick_at).in_(sa.select(doomed.c.name, doomed.c.tick_at)))
            .returning(t.c.tick_at))
    # Counted from RETURNING: sqlite3 reports no rowcount for a statement that starts with WITH.
    return len(conn.execute(stmt).all())


class Cron:
    """The plugin that fires due cron ticks (every second on every worker).

    Each tick fires once however many workers run it (see the module's
    description).

    Args:
        scheduler: the app's scheduler.
        interval: time between looks at the schedules.
    """

    name = "cron"

    def __init__(self, scheduler: Scheduler, *, interval: timedelta = timedelta(seconds=1)) -> None:
        self.scheduler = scheduler
        self.interval = interval

    def __repr__(self) -> str:
        return f"<Cron of {len(self.scheduler.schedules)} schedule(s) every {self.interval.total_seconds():g}s>"

    def run(self, now: datetime) -> int:
        """Fire every tick due at ``now``; returns how many this pass fired."""
        return len(self.scheduler.run(now))


def _claim_ticks(conn: Connection, name: str, ticks: list[datetime], now: datetime) -> set[datetime]:
    """Insert tick rows; return the ticks this transaction inserted.

    ``RETURNING`` names the rows that went in (``rowcount`` is not reliable
    for ``ON CONFLICT DO NOTHING`` on every driver). On PostgreSQL a racing
    insert of the same tick waits for the other transaction and then skips.
    """
    rows = [{"name": name, "tick_at": tick, "inserted_at": now} for tick in ticks]
    stmt = (
        insert(conn, cron_ticks_table)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["name", "tick_at"])
        .returning(cron_ticks_table.c.tick_at)
    )
    return {utc(at) for at in conn.execute(stmt).scalars()}


def job_target(fn: Callable[..., Any]) -> str:
    """How a job function is named in listings.

    Args:
        fn: the job function.
    """
    return f"{fn.__module__}.{fn.__qualname__}"


# --- scheduled notifiers -------------------------------------------------------------

NOTIFIER_WORKER = "chimeway.scheduled_notifier"


@dataclass(frozen=True, kw_only=True)
class _ScheduledNotifier:
    notifier: type[Notifier]
    tenant: str | None


class ScheduledNotifiers:
    """Notifiers triggered on a cron schedule, once per tick.

    Each tick enqueues a job that triggers the notifier with
    ``params_for_schedule(tick)`` and the idempotency key
    ``schedule:<schedule name>:<tick ISO time>``, so a retried job never
    notifies twice.

    Args:
        scheduler: the app's scheduler.
        trigger: the app's ``trigger`` verb.
    """

    def __init__(self, scheduler: Scheduler, trigger: Callable[..., TriggerResult]) -> None:
        self.scheduler = scheduler
        self._trigger = trigger
        self._writer = writer(scheduler.jobs.engine)
        self._entries: dict[str, _ScheduledNotifier] = {}

    def add(
        self,
        notifier: type[Notifier],
        *,
        cron: str | None,
        timezone: str,
        name: str | None,
        tenant: str | None,
        catch_up: timedelta | None,
    ) -> CronSchedule:
        """Schedule ``notifier``; see :meth:`chimeway.Chimeway.schedule`.

        Args:
            notifier: the ``Notifier`` subclass.
            cron: an expression overriding the class's ``schedule``.
            timezone: IANA zone of the expression.
            name: schedule name (default ``notifier:<key>``).
            tenant: the tenant every run is triggered for.
            catch_up: window for missed ticks (``None``: only the latest).
        """
        if not (isinstance(notifier, type) and issubclass(notifier, Notifier)) or notifier.__dict__.get("abstract"):
            raise InvalidInputError(f"notifier must be a Notifier subclass, got {notifier!r}")
        expression = cron if cron is not None else notifier.schedule
        if expression is None:
            raise InvalidScheduleError(
                f"notifier {notifier.__qualname__} has no `schedule`; set schedule = \"0 8 * * *\" "
                "or pass cron="
            )
        if tenant is not None and not isinstance(tenant, str):
            raise InvalidInputError(f"tenant must be a string or None, got {type(tenant).__name__}")
        name = name or f"notifier:{notifier.key}"
        if NOTIFIER_WORKER not in self.scheduler.jobs.handles:
            self.scheduler.jobs.register(self._run, name=NOTIFIER_WORKER, max_attempts=5)
        schedule = self.scheduler.add(CronSchedule(
            name=name, cron=CronExpression(expression, timezone), worker=NOTIFIER_WORKER,
            args={"schedule": name}, kind="notifier", target=notifier.key, catch_up=catch_up,
            tick_arg="tick",
        ))
        self._entries[name] = _ScheduledNotifier(notifier=notifier, tenant=tenant)
        return schedule

    def _run(self, schedule: str, tick: str) -> None:
        entry = self._entries.get(schedule)
        if entry is None:
            raise ConfigurationError(f"no scheduled notifier named {schedule!r} is registered on this node")
        at = datetime.fromisoformat(tick)
        params = entry.notifier().params_for_schedule(at)
        with Session(self._writer) as session, session.begin():
            self._trigger(session, entry.notifier, params, idempotency_key=f"schedule:{schedule}:{tick}",
                          tenant=entry.tenant)


def workflow_sweep_schedule() -> CronSchedule:
    """The built-in schedule running the workflow ``ProgressionWorker`` sweep every minute."""
    return CronSchedule(
        name="chimeway.workflow.sweep", cron=CronExpression("* * * * *"), worker=PROGRESS_WORKER,
        queue=WORKFLOW_QUEUE, kind="builtin", target="workflow progress sweep",
        unique_key="chimeway.workflow.sweep",
    )
