"""How long each kind of row stays, and the prune targets every worker deletes it with.

``Chimeway(retention=Retention(...))`` sets one age per kind of row; the
app's :class:`~chimeway.queue.plugins.Pruner` (a plugin of every worker)
deletes what is past its age in short batches, each in a transaction of its
own, children before parents. ``None`` keeps a kind of row forever.

What goes together:

- an event goes with its notifications (inbox items too), deliveries,
  attempts, decisions, outbox rows and workflow runs, once its age has
  passed, every delivery is final and every run has finished;
- a finished workflow run goes with its transitions;
- signals go once routed, provider reports once received, each after
  their age;
- policy bookkeeping (cap usage, expired dedupe marks, flushed digests)
  and cron ticks (never a schedule's latest) after theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chimeway.cron import prune_ticks
from chimeway.deliveries import FINAL
from chimeway.errors import ConfigurationError
from chimeway.models import (
    attempts_table,
    cron_ticks_table,
    decisions_table,
    deliveries_table,
    events_table,
    notifications_table,
    outbox_table,
    provider_events_table,
    signals_table,
    workflow_deliveries_table,
    workflow_runs_table,
    workflow_transitions_table,
)
from chimeway.policy.bookkeeping import policy_targets
from chimeway.queue.plugins.pruner import AgePrune, PruneBatch, PruneTarget, check_age, job_targets

__all__ = ["Retention", "TickPrune"]

_Child = Callable[[sa.BindParameter[Any]], tuple[sa.Table, sa.ColumnElement[bool]]]


@dataclass(frozen=True, kw_only=True)
class Retention:
    """How long each kind of row stays after it is done with; ``None`` keeps it forever.

    Args:
        completed_jobs: a completed job, after it completed.
        cancelled_jobs: a cancelled job, after it was cancelled.
        discarded_jobs: a discarded job, after it was discarded.
        events: an event with its notifications (inbox items), deliveries,
            attempts, decisions and workflow runs, counted from the
            trigger; an event goes only once every delivery is final
            (succeeded, cancelled or suppressed) and every run has
            finished. Its idempotency key can then be used again, and
            ``explain``/``trace`` answer "not found".
        workflow_runs: a finished workflow run and its transitions, after it
            finished (a run still goes with its event when that is sooner).
        signals: a signal, after it was routed to the runs waiting for it.
        provider_events: a provider's status report, after it was received
            (a provider's retry of it is applied again after that).
        policy: cap usage, digests after they were flushed; expired
            dedupe marks go regardless. At least the longest cap window.
        cron_ticks: a cron tick's record (never a schedule's latest).
        interval: time between two passes of each worker's pruner.
        time_limit: how long one pass may go on; the next carries on.
        batch_size: rows (of the kind an age applies to) per transaction.

    Raises:
        ConfigurationError: naming the field whose value is not allowed.
    """

    completed_jobs: timedelta | None = timedelta(days=1)
    cancelled_jobs: timedelta | None = timedelta(days=7)
    discarded_jobs: timedelta | None = timedelta(days=7)
    events: timedelta | None = timedelta(days=90)
    workflow_runs: timedelta | None = timedelta(days=90)
    signals: timedelta | None = timedelta(days=30)
    provider_events: timedelta | None = timedelta(days=30)
    policy: timedelta | None = timedelta(days=2)
    cron_ticks: timedelta | None = timedelta(days=7)
    interval: timedelta = timedelta(minutes=1)
    time_limit: timedelta = timedelta(seconds=10)
    batch_size: int = 1000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            name = f"Retention.{f.name}"
            if f.name == "batch_size":
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ConfigurationError(f"{name} must be an int >= 1, got {value!r}")
            elif f.name in ("interval", "time_limit", "policy"):
                if f.name == "policy" and value is None:
                    continue
                if not isinstance(value, timedelta) or value <= timedelta(0):
                    raise ConfigurationError(f"{name} must be a positive timedelta, got {value!r}")
            else:
                check_age(name, value)

    def targets(self) -> list[PruneTarget]:
        """The prune targets these ages make, children before parents within each."""
        size = self.batch_size
        targets = job_targets(completed=self.completed_jobs, cancelled=self.cancelled_jobs,
                              discarded=self.discarded_jobs, batch_size=size)
        if self.events is not None:
            targets.append(event_target(self.events, batch_size=size))
        if self.workflow_runs is not None:
            targets.append(workflow_run_target(self.workflow_runs, batch_size=size))
        if self.signals is not None:
            s = signals_table
            targets.append(AgePrune("signals", s, s.c.routed_at, self.signals, batch_size=size))
        if self.provider_events is not None:
            p = provider_events_table
            targets.append(AgePrune("provider_events", p, p.c.received_at, self.provider_events,
                                    batch_size=size))
        if self.policy is not None:
            targets.extend(policy_targets(self.policy, batch_size=size))
        if self.cron_ticks is not None:
            targets.append(TickPrune(self.cron_ticks, batch_size=size))
        return targets


def _of_deliveries(table: sa.Table, column: sa.Column[Any]) -> _Child:
    d = deliveries_table
    return lambda keys: (table, column.in_(sa.select(d.c.id).where(d.c.event_id.in_(keys))))


def _of_runs(table: sa.Table, column: sa.Column[Any]) -> _Child:
    r = workflow_runs_table
    return lambda keys: (table, column.in_(sa.select(r.c.id).where(r.c.event_id.in_(keys))))


def _by(table: sa.Table, column: sa.Column[Any]) -> _Child:
    return lambda keys: (table, column.in_(keys))


def event_target(age: timedelta, *, batch_size: int = 1000) -> AgePrune:
    """Events older than ``age`` whose deliveries are all final and whose runs have all finished.

    Their rows go in one transaction per batch, children first: attempts,
    decisions, outbox rows, the runs' deliveries and transitions, runs,
    deliveries, notifications, then the events.

    Args:
        age: counted from the trigger.
        batch_size: events per transaction.
    """
    e, d, r = events_table, deliveries_table, workflow_runs_table
    a, dd, o = attempts_table, decisions_table, outbox_table
    wd, t, n = workflow_deliveries_table, workflow_transitions_table, notifications_table
    unfinished_delivery = sa.exists().where(d.c.event_id == e.c.id, d.c.status.not_in([str(s) for s in sorted(FINAL)]))
    unfinished_run = sa.exists().where(r.c.event_id == e.c.id, r.c.finished_at.is_(None))
    return AgePrune(
        "events", e, e.c.created_at, age, where=[~unfinished_delivery, ~unfinished_run], batch_size=batch_size,
        children=[
            _of_deliveries(a, a.c.delivery_id), _of_deliveries(dd, dd.c.delivery_id),
            _of_deliveries(o, o.c.delivery_id), _of_runs(wd, wd.c.run_id), _of_runs(t, t.c.run_id),
            _by(r, r.c.event_id), _by(d, d.c.event_id), _by(n, n.c.event_id),
        ],
    )


def workflow_run_target(age: timedelta, *, batch_size: int = 1000) -> AgePrune:
    """Workflow runs finished longer than ``age`` ago, with their transitions.

    Args:
        age: counted from the run's end.
        batch_size: runs per transaction.
    """
    r, t, wd = workflow_runs_table, workflow_transitions_table, workflow_deliveries_table
    return AgePrune("workflow_runs", r, r.c.finished_at, age, batch_size=batch_size,
                    children=[_by(wd, wd.c.run_id), _by(t, t.c.run_id)])


class TickPrune:
    """Cron tick records older than ``age``, except each schedule's latest.

    A schedule's latest tick is what "missed since" is measured from, so it
    stays however old it is.

    Args:
        age: how long a tick's record stays.
        batch_size: rows per transaction.
    """

    name = "cron_ticks"

    def __init__(self, age: timedelta, *, batch_size: int = 1000) -> None:
        self.age = check_age("cron_ticks", age) or timedelta(0)
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"<TickPrune after {self.age}>"

    def prune_batch(self, conn: Connection, now: datetime, limit: int, cursor: Any) -> PruneBatch:
        n = prune_ticks(conn, now - self.age, limit)
        return PruneBatch({cron_ticks_table.name: n}, done=n < limit)
