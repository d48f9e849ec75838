"""Actions: the functions background work runs, in the forms AshOban users expect.

An *action* is what a record trigger runs on each matching row, what its
``on_error`` runs after the last attempt, and what a scheduled action runs on
each cron tick:

- a plain function, called with the row (``action(row)``), or with nothing
  but its job args on a cron tick;
- a registered job (``@app.job``), called with the row's primary key
  (``job(42)``), since jobs take JSON values, not rows.

Either may declare keyword parameters Chimeway fills when it calls them:
``session`` (a ``Session`` inside the transaction the action runs in — a
record trigger's batch, where a savepoint per row undoes the work of an
action that raises, or a cron tick's own, committed when the action
returns), ``actor`` (who the work is done for, stored with the job),
``tenant``, ``job`` (the :class:`~chimeway.queue.JobInfo`), ``error`` (an
``on_error`` action's exception) and ``tick`` (a cron tick's ISO time). A
parameter Chimeway cannot fill is an error when the action is declared.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from chimeway.cron import CronExpression, CronSchedule, Scheduler, job_target
from chimeway.db import plain, writer
from chimeway.errors import InvalidInputError
from chimeway.queue import JobHandle, JobInfo, JobQueue

__all__ = ["EXTRAS", "Action", "as_action", "schedule_action"]

# Everything Chimeway may hand an action by keyword.
EXTRAS = ("session", "actor", "tenant", "job", "error", "tick")


@dataclass(frozen=True, kw_only=True)
class Action:
    """A validated action and how to call it.

    Args:
        fn: the function (a registered job's own function).
        label: how listings name it (``module.qualname`` or the job's name).
        by_key: a registered job: called with the row's primary key, not the row.
        extras: the keyword parameters it declares among :data:`EXTRAS`.
        legacy: an ``on_error(row_id, exc)`` callback of the older form.
    """

    fn: Callable[..., Any]
    label: str
    by_key: bool = False
    extras: frozenset[str] = frozenset()
    legacy: bool = False

    def call(self, subject: Any, key: Any, **available: Any) -> Any:
        """Call it with the row (or its key) and the extras it declares.

        Args:
            subject: the row.
            key: the row's primary key (JSON).
            **available: values for :data:`EXTRAS`.
        """
        if self.legacy:
            return self.fn(key, available.get("error"))
        kwargs = {name: value for name, value in available.items() if name in self.extras}
        return self.fn(key if self.by_key else subject, **kwargs)


def as_action(value: Any, *, field: str, allowed: Iterable[str], subject: str | None = "the row",
              legacy_ok: bool = False) -> Action:
    """Check an action when it is declared; the error names ``field``.

    Args:
        value: a function or a :class:`~chimeway.queue.JobHandle`.
        field: how the error names it (``"record trigger 'x': action"``).
        allowed: the extras this kind of action may declare.
        subject: what the first positional parameter receives (``None``: nothing).
        legacy_ok: accept ``fn(row_id, exc)`` (two positional parameters) as
            the older ``on_error`` form.

    Raises:
        InvalidInputError: not callable, or a parameter Chimeway cannot fill.
    """
    by_key = isinstance(value, JobHandle)
    fn = value.fn if isinstance(value, JobHandle) else value
    if not callable(fn) or isinstance(fn, type):
        raise InvalidInputError(f"{field} must be a function or a registered job, got {value!r}")
    label = value.name if isinstance(value, JobHandle) else job_target(fn)
    allowed = set(allowed)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # some builtins have no signature: call them plainly
        return Action(fn=fn, label=label, by_key=by_key)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if legacy_ok and len(required) == 2 and not {p.name for p in required} & allowed:
        return Action(fn=fn, label=label, by_key=by_key, legacy=True)
    rest = params
    if subject is not None:
        if not positional and not any(p.kind == p.VAR_POSITIONAL for p in params):
            raise InvalidInputError(f"{field}: {label} must take {subject} as its first parameter")
        rest = [p for p in params if p is not (positional[0] if positional else None)]
    extras: set[str] = set()
    for p in rest:
        if p.kind == p.VAR_KEYWORD:
            extras |= allowed
        elif p.name in allowed and p.kind != p.VAR_POSITIONAL:
            extras.add(p.name)
        elif p.kind not in (p.VAR_POSITIONAL,) and p.default is p.empty:
            given = f"{subject}, and " if subject else ""
            raise InvalidInputError(
                f"{field}: {label} has a parameter {p.name!r} that Chimeway cannot fill; it is called "
                f"with {given}any of {', '.join(sorted(allowed))} it declares"
            )
    return Action(fn=fn, label=label, by_key=by_key, extras=frozenset(extras))


# --- scheduled actions ----------------------------------------------------------


def schedule_action(
    scheduler: Scheduler,
    jobs: JobQueue,
    schedule: str,
    target: Any,
    *,
    args: Mapping[str, Any] | None,
    timezone: str,
    name: str | None,
    catch_up: timedelta | None,
    queue: str | None,
    max_attempts: int | None,
    actor: str | None,
) -> CronSchedule:
    """Run an action (a function, a registered job, or a worker name) on a cron schedule.

    A function that declares ``session`` runs inside a transaction the job
    commits; ``actor`` is stored in the job's args and handed to an action
    that declares it; ``tick`` gets the tick's ISO time.

    Args:
        scheduler: the app's scheduler.
        jobs: the app's job queue (a plain function is registered on it).
        schedule: the cron expression.
        target: a function, a :class:`~chimeway.queue.JobHandle` or a worker name.
        args: the job's JSON args.
        timezone: IANA zone of ``schedule``.
        name: unique schedule name (default: the job's worker name).
        catch_up: the window missed ticks fire in.
        queue: the job's queue (default: the job's own).
        max_attempts: attempts of each tick's job (default: the job's own).
        actor: who the work is done for (a string id).
    """
    where = f"cron {name or schedule!r}"
    if actor is not None and (not isinstance(actor, str) or not actor):
        raise InvalidInputError(f"{where}: actor must be a non-empty string (an id), got {actor!r}")
    if max_attempts is not None and (isinstance(max_attempts, bool) or not isinstance(max_attempts, int)
                                     or max_attempts < 1):
        raise InvalidInputError(f"{where}: max_attempts must be an int >= 1, got {max_attempts!r}")
    job_args = dict(args or {})
    if isinstance(target, str) and target:
        worker, label, takes = target, target, None
    elif isinstance(target, JobHandle) or (callable(target) and not isinstance(target, type)):
        fn = target.fn if isinstance(target, JobHandle) else target
        label = target.name if isinstance(target, JobHandle) else job_target(fn)
        takes = _named_params(fn)
        if isinstance(target, JobHandle):
            worker = target.name
        elif "session" in takes:
            worker = _register_in_session(jobs, fn, label, takes, max_attempts)
        else:
            worker = jobs.register(fn, max_attempts=max_attempts or 20).name
    else:
        raise InvalidInputError(f"target must be a job, a function, a worker name or a Notifier, got {target!r}")
    if actor is not None:
        if takes is not None and "actor" not in takes:
            raise InvalidInputError(f"{where}: actor is given but {label} takes no `actor` parameter")
        job_args["actor"] = actor
    wants_tick = takes is not None and "tick" in takes and "tick" not in job_args
    return scheduler.add(CronSchedule(
        name=name or worker, cron=CronExpression(schedule, timezone), worker=worker, args=job_args,
        queue=queue, kind="job", target=label, catch_up=catch_up, tick_arg="tick" if wants_tick else None,
        max_attempts=max_attempts,
    ))


def _named_params(fn: Callable[..., Any]) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def _register_in_session(jobs: JobQueue, fn: Callable[..., Any], label: str, takes: set[str],
                         max_attempts: int | None) -> str:
    engine = jobs.engine

    def run(job: JobInfo, **args: Any) -> Any:
        # The tick's work and its own writes commit together, or not at all.
        with Session(writer(plain(engine)), expire_on_commit=False) as session, session.begin():
            return fn(**args, session=session, **({"job": job} if "job" in takes else {}))

    return jobs.register(run, name=label, max_attempts=max_attempts or 20).name
