"""The overview page: each queue's jobs by state, its oldest due job, a chart of the last hour, workers.

Counts stop at :data:`COUNT_CAP` per queue and waiting or running state, and
at :data:`FINISHED_CAP` for finished states (shown as "10,000+"), so the
page costs the same with millions of finished jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chimeway.db import sql_in
from chimeway.errors import InvalidInputError
from chimeway.models import jobs_table
from chimeway.queue import JOB_STATES
from chimeway.types import UTCDateTime
from chimeway.web.http import Response

if TYPE_CHECKING:
    from chimeway.web.dashboard import Dashboard, View

__all__ = ["COUNT_CAP", "FINISHED_CAP", "QueueRow", "cap_for", "register"]

COUNT_CAP = 100_000
FINISHED_CAP = 10_000
DUE_STATES = ("available", "scheduled", "retryable")
FINISHED = ("completed", "retryable", "discarded")
MINUTES = 60
c = jobs_table.c

# Every queue that has a job, one index probe per queue (a loose index scan).
_QUEUES = (
    "WITH RECURSIVE q(name) AS ("
    " SELECT min(queue) FROM {chimeway_jobs}"
    " UNION ALL SELECT (SELECT min(queue) FROM {chimeway_jobs} WHERE queue > q.name)"
    " FROM q WHERE q.name IS NOT NULL)"
    " SELECT name FROM q WHERE name IS NOT NULL"
)

# The oldest job of one queue and state, whatever its priority: the fetch
# index is ordered by priority first, so visit each priority present once.
_OLDEST = (
    "WITH RECURSIVE p(priority) AS ("
    " SELECT min(priority) FROM {chimeway_jobs} WHERE queue = :q AND state = :s"
    " UNION ALL SELECT (SELECT min(priority) FROM {chimeway_jobs}"
    "  WHERE queue = :q AND state = :s AND priority > p.priority)"
    " FROM p WHERE p.priority IS NOT NULL)"
    " SELECT min((SELECT min(scheduled_at) FROM {chimeway_jobs} j"
    "  WHERE j.queue = :q AND j.state = :s AND j.priority = p.priority)) AS oldest"
    " FROM p WHERE p.priority IS NOT NULL"
)


@dataclass
class QueueRow:
    """One queue on the overview."""

    name: str
    declared: bool
    counts: dict[str, int] = field(default_factory=dict)
    oldest_due: datetime | None = None
    paused_at: datetime | None = None
    completed: list[int] = field(default_factory=lambda: [0] * MINUTES)
    failed: list[int] = field(default_factory=lambda: [0] * MINUTES)

    @property
    def waiting(self) -> int:
        return sum(self.counts.get(s, 0) for s in DUE_STATES)

    def chart(self) -> dict[str, Any]:
        """Bars for an SVG chart: one per minute, completed above failed."""
        top = max([a + b for a, b in zip(self.completed, self.failed, strict=True)] + [1])
        bars = []
        for i, (done, bad) in enumerate(zip(self.completed, self.failed, strict=True)):
            h_done = round(40 * done / top, 2)
            h_bad = round(40 * bad / top, 2)
            bars.append({"x": i * 5, "done": h_done, "bad": h_bad, "y_done": 40 - h_done - h_bad,
                         "y_bad": 40 - h_bad})
        return {"bars": bars, "top": top, "completed": sum(self.completed), "failed": sum(self.failed)}


def cap_for(state: str) -> int:
    """Where counting stops for jobs in ``state``."""
    return FINISHED_CAP if state in ("completed", "cancelled", "discarded") else COUNT_CAP


def _capped_counts(conn: Connection, queues: list[str]) -> dict[tuple[str, str], int]:
    columns = []
    for queue in queues:
        for state in JOB_STATES:
            capped = (sa.select(sa.literal(1)).where(c.queue == queue, c.state == state)
                      .limit(cap_for(state)).subquery())
            columns.append(sa.select(sa.func.count()).select_from(capped).scalar_subquery())
    if not columns:
        return {}
    row = conn.execute(sa.select(*columns)).one()
    keys = [(q, s) for q in queues for s in JOB_STATES]
    return {key: int(value) for key, value in zip(keys, row, strict=True)}


def _oldest_due(conn: Connection, queue: str, counts: dict[tuple[str, str], int], now: datetime) -> datetime | None:
    oldest: datetime | None = None
    for state in DUE_STATES:
        if not counts.get((queue, state)):
            continue
        at = conn.execute(sql_in(conn, _OLDEST).columns(oldest=UTCDateTime()), {"q": queue, "s": state}).scalar()
        if at is not None and at <= now and (oldest is None or at < oldest):
            oldest = at
    return oldest


def queue_rows(view: View) -> list[QueueRow]:
    """Every declared queue and every queue holding jobs, with counts, oldest due job and the last hour."""
    app = view.app
    now = app.clock.now()
    declared = set(app.queue.queues)
    paused = app.queue.paused_queues()
    since = now - timedelta(minutes=MINUTES)
    with app.engine.connect() as conn:
        names = sorted(declared | set(conn.execute(sql_in(conn, _QUEUES)).scalars()) | set(paused))
        counts = _capped_counts(conn, names)
        rows = {n: QueueRow(name=n, declared=n in declared, paused_at=paused.get(n)) for n in names}
        for name, row in rows.items():
            row.counts = {s: counts.get((name, s), 0) for s in JOB_STATES}
            row.oldest_due = _oldest_due(conn, name, counts, now)
        finished = conn.execute(
            sa.select(c.attempted_at, c.state, c.queue)
            .where(c.state.in_(FINISHED), c.attempted_at >= since, c.attempted_at <= now)
        )
        for at, state, queue in finished:
            target = rows.get(queue)
            if target is None:
                continue
            minute = min(MINUTES - 1, int((at - since).total_seconds() // 60))
            (target.completed if state == "completed" else target.failed)[minute] += 1
    return list(rows.values())


def overview(view: View) -> Response:
    now = view.app.clock.now()
    workers = view.app.queue.live_workers()
    stale = view.app.queue.stale_after
    return view.render(
        "overview.html", queues=queue_rows(view), states=JOB_STATES, caps={s: cap_for(s) for s in JOB_STATES},
        workers=[(w, now - w.heartbeat_at <= stale) for w in workers],
    )


def _queue_field(view: View) -> str:
    name = view.request.field("queue")
    if name is None:
        raise InvalidInputError("the form names no queue")
    return name


def pause(view: View) -> Response:
    name = _queue_field(view)
    view.app.queue.pause_queue(name, by=view.request.client)
    return view.back("/", flash="paused", name=name)


def resume(view: View) -> Response:
    name = _queue_field(view)
    view.app.queue.resume_queue(name)
    return view.back("/", flash="resumed", name=name)


def register(dashboard: Dashboard) -> None:
    dashboard.route("GET", "/")(overview)
    dashboard.route("POST", "/queues/pause")(pause)
    dashboard.route("POST", "/queues/resume")(resume)
