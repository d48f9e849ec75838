"""Pruner: delete what is past its age, in short batches, until nothing is left.

A pass works through its targets (finished jobs by state, and whatever the
app adds: old events, signals, ...) one batch each in turn, every batch in a
transaction of its own. It ends when no target has anything past its age,
or when its time limit is spent (the next pass carries on), never after a
fixed number of rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chimeway.db import writer
from chimeway.errors import ConfigurationError
from chimeway.queue import sql

__all__ = [
    "BEGINNING",
    "DEFAULT_JOB_AGES",
    "AgePrune",
    "PruneBatch",
    "PruneTarget",
    "Pruner",
    "check_age",
    "job_targets",
]

DEFAULT_JOB_AGES: Mapping[str, timedelta] = {
    "completed": timedelta(days=1),
    "cancelled": timedelta(days=7),
    "discarded": timedelta(days=7),
}
BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)
"""Where a key range over a time column starts."""


@dataclass(frozen=True)
class PruneBatch:
    """What one batch deleted, and where the next one starts.

    Args:
        deleted: rows deleted per table.
        done: nothing of this target is left past its age (for this pass).
        cursor: the next batch's starting point (the target's own value).
    """

    deleted: Mapping[str, int]
    done: bool
    cursor: Any = None


class PruneTarget(Protocol):
    """One kind of row the pruner deletes once it is past its age."""

    @property
    def name(self) -> str:
        """What reports call it (``"jobs.completed"``, ``"events"``)."""
        ...

    @property
    def batch_size(self) -> int:
        """How many rows (of the kind the age applies to) one transaction takes."""
        ...

    def prune_batch(self, conn: Connection, now: datetime, limit: int, cursor: Any) -> PruneBatch:
        """Delete up to ``limit`` rows past their age at ``now``, in ``conn``'s transaction.

        ``cursor`` is ``None`` for a pass's first batch, then what the
        previous batch returned.
        """
        ...


def check_age(field: str, value: Any) -> timedelta | None:
    """``value`` if it is ``None`` or a timedelta >= 0; else a ``ConfigurationError`` naming ``field``."""
    if value is None:
        return None
    if not isinstance(value, timedelta) or value < timedelta(0):
        raise ConfigurationError(f"{field} must be a timedelta >= 0 or None (keep forever), got {value!r}")
    return value


class AgePrune:
    """Rows of one table whose ``age_column`` is older than ``max_age``.

    Each batch takes rows in the order of ``order_column`` (indexed) from
    where the previous batch ended, so a pass never walks again over what it
    deleted, and skips rows another transaction holds (``SKIP LOCKED``), so
    pruners on several workers share the work without waiting on each other
    or on anyone else.

    Args:
        name: what reports call it.
        table: the table.
        age_column: the time a row's age is measured from.
        max_age: how long a row stays.
        where: further conditions a row must meet to go.
        order_column: the indexed column batches walk along (default
            ``age_column``); every row past its age must have it before the
            cutoff too.
        batch_size: rows per transaction.
        children: the rows that belong to a doomed row, deleted first in the
            same transaction, children before parents: each maps the doomed
            keys (an expanding bind parameter) to a ``(table, condition)``
            pair. The table needs a one-column primary key then.
    """

    def __init__(
        self,
        name: str,
        table: sa.Table,
        age_column: sa.Column[Any],
        max_age: timedelta,
        *,
        where: Sequence[sa.ColumnElement[bool]] = (),
        order_column: sa.Column[Any] | None = None,
        batch_size: int = 1000,
        children: Sequence[Callable[[sa.BindParameter[Any]], tuple[sa.Table, sa.ColumnElement[bool]]]] = (),
    ) -> None:
        self.name = name
        self.max_age = check_age(name, max_age) or timedelta(0)
        self.batch_size = batch_size
        order = order_column if order_column is not None else age_column
        cutoff = sa.bindparam("cutoff", type_=age_column.type)
        keys = list(table.primary_key.columns)
        chosen = (
            sa.select(*keys)
            .where(order >= sa.bindparam("after", type_=order.type), order < cutoff, age_column < cutoff,
                   *where)
            .order_by(order)
            .limit(sa.bindparam("limit", type_=sa.Integer))
            .with_for_update(skip_locked=True)
        )
        key: Any = keys[0] if len(keys) == 1 else sa.tuple_(*keys)
        self._table = table.name
        self._children: list[tuple[str, sa.Delete]] = []
        self._select = chosen.add_columns(order)
        self._statement: sa.Executable
        if not children:
            doomed = chosen.cte(f"doomed_{table.name}")
            self._statement = sa.delete(table).where(key.in_(sa.select(*doomed.c))).returning(order)
            return
        if len(keys) != 1:
            raise ConfigurationError(f"{name}: a target with children needs a one-column primary key")
        # With children the doomed keys are read (and locked) first, then
        # every child table is emptied of their rows before the parents go.
        doomed_keys = sa.bindparam("keys", expanding=True, type_=key.type)
        for child in children:
            child_table, condition = child(doomed_keys)
            self._children.append((child_table.name, sa.delete(child_table).where(condition)))
        self._statement = sa.delete(table).where(key.in_(doomed_keys))

    def __repr__(self) -> str:
        return f"<AgePrune {self.name} after {self.max_age}>"

    def prune_batch(self, conn: Connection, now: datetime, limit: int, cursor: Any) -> PruneBatch:
        after = cursor if cursor is not None else BEGINNING
        bounds = {"cutoff": now - self.max_age, "after": after, "limit": limit}
        if not self._children:
            marks = conn.execute(self._statement, bounds).scalars().all()
            return PruneBatch({self._table: len(marks)}, done=len(marks) < limit,
                              cursor=max(marks, default=after))
        rows = conn.execute(self._select, bounds).all()
        if not rows:
            return PruneBatch({self._table: 0}, done=True, cursor=after)
        doomed = {"keys": [row[0] for row in rows]}
        deleted: dict[str, int] = {}
        for name, statement in self._children:
            n = conn.execute(statement, doomed).rowcount
            if n:
                deleted[name] = deleted.get(name, 0) + n
        deleted[self._table] = conn.execute(self._statement, doomed).rowcount
        return PruneBatch(deleted, done=len(rows) < limit, cursor=max(row[-1] for row in rows))


_jobs = sql.jobs
# Completed and discarded jobs are walked in ``attempted_at`` order, along
# ix_chimeway_jobs_finished (a job is attempted before it finishes, so every
# one past its age lies in that range); cancelled ones, which may never have
# run, along ix_chimeway_jobs_cancelled.
_JOB_COLUMNS = {
    "completed": (_jobs.c.completed_at, _jobs.c.attempted_at),
    "cancelled": (_jobs.c.cancelled_at, _jobs.c.cancelled_at),
    "discarded": (_jobs.c.discarded_at, _jobs.c.attempted_at),
}


def job_targets(
    *,
    completed: timedelta | None = DEFAULT_JOB_AGES["completed"],
    cancelled: timedelta | None = DEFAULT_JOB_AGES["cancelled"],
    discarded: timedelta | None = DEFAULT_JOB_AGES["discarded"],
    batch_size: int = 1000,
) -> list[PruneTarget]:
    """The prune targets for finished jobs; ``None`` keeps that state's jobs forever.

    Args:
        completed: how long a completed job stays after it finished.
        cancelled: how long a cancelled job stays.
        discarded: how long a discarded job stays.
        batch_size: jobs per transaction.
    """
    ages = {"completed": completed, "cancelled": cancelled, "discarded": discarded}
    targets: list[PruneTarget] = []
    for state, age in ages.items():
        if check_age(f"{state} jobs' age", age) is None:
            continue
        finished, order = _JOB_COLUMNS[state]
        targets.append(AgePrune(f"jobs.{state}", _jobs, finished, age or timedelta(0),
                                where=[_jobs.c.state == state], order_column=order,
                                batch_size=batch_size))
    return targets


class Pruner:
    """Delete everything past its age (every minute by default; Oban's Pruner).

    Args:
        engine: the database.
        targets: what to prune (e.g. :func:`job_targets`).
        interval: time between passes.
        time_limit: how long one pass may go on; the next pass carries on
            where it stopped.
        batch_size: rows per transaction for every target (default: each
            target's own).
    """

    name = "pruner"

    def __init__(
        self,
        engine: Engine,
        targets: Sequence[PruneTarget],
        *,
        interval: timedelta = timedelta(minutes=1),
        time_limit: timedelta = timedelta(seconds=10),
        batch_size: int | None = None,
    ) -> None:
        if not isinstance(time_limit, timedelta) or time_limit <= timedelta(0):
            raise ConfigurationError(f"time_limit must be a positive timedelta, got {time_limit!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigurationError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.engine = writer(engine)
        self.targets = tuple(targets)
        self.interval = interval
        self.time_limit = time_limit
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"<Pruner of {', '.join(t.name for t in self.targets)} every {self.interval.total_seconds():g}s>"

    def run(self, now: datetime) -> int:
        """One pass of at most ``time_limit``; returns how many rows it deleted."""
        return sum(self.prune(now, time_limit=self.time_limit).values())

    def prune(
        self,
        now: datetime,
        *,
        time_limit: timedelta | None = None,
        on_batch: Callable[[str, Mapping[str, int]], None] | None = None,
    ) -> dict[str, int]:
        """Delete what is past its age at ``now``, batch by batch, taking turns between targets.

        Args:
            now: the time ages are measured from.
            time_limit: stop starting new batches after this long (``None``:
                go on until nothing is left).
            on_batch: called after each batch's commit with the target's
                name and the rows it deleted per table (progress reports).

        Returns:
            rows deleted per table.
        """
        deadline = None if time_limit is None else time.monotonic() + time_limit.total_seconds()
        deleted: dict[str, int] = {}
        pending: list[tuple[PruneTarget, Any]] = [(t, None) for t in self.targets]
        while pending:
            still: list[tuple[PruneTarget, Any]] = []
            for target, cursor in pending:
                if deadline is not None and time.monotonic() >= deadline:
                    return deleted
                with self.engine.begin() as conn:
                    batch = target.prune_batch(conn, now, self.batch_size or target.batch_size, cursor)
                for table, n in batch.deleted.items():
                    deleted[table] = deleted.get(table, 0) + n
                if on_batch is not None:
                    on_batch(target.name, batch.deleted)
                if not batch.done:
                    still.append((target, batch.cursor))
            pending = still
        return deleted
