"""Workflow runs: by state and definition, one run's steps and transitions, cancel a run."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import sqlalchemy as sa

from chimeway.ids import as_uuid
from chimeway.models import workflow_runs_table
from chimeway.web.http import Response

if TYPE_CHECKING:
    from chimeway.web.dashboard import Dashboard, View

__all__ = ["RUN_STATES", "register"]

PAGE = 50
RUN_STATES = ("active", "waiting", "completed", "stopped", "cancelled")
OPEN_STATES = ("active", "waiting")
r = workflow_runs_table


def runs_page(view: View) -> Response:
    request = view.request
    state = request.arg("state")
    notifier = request.arg("notifier")
    recipient = request.arg("recipient")
    before = request.arg("before")
    query = sa.select(r.c.id, r.c.notifier_key, r.c.notifier_version, r.c.recipient_id, r.c.tenant, r.c.state,
                      r.c.step, r.c.wait_until, r.c.created_at, r.c.updated_at)
    if state:
        query = query.where(r.c.state == state)
    if notifier:
        query = query.where(r.c.notifier_key == notifier)
    if recipient:
        query = query.where(r.c.recipient_id == recipient)
    if before:
        query = query.where(r.c.id < as_uuid(before, name="before"))
    with view.app.engine.connect() as conn:
        rows = conn.execute(query.order_by(r.c.id.desc()).limit(PAGE)).all()
    values = {"state": state, "notifier": notifier, "recipient": recipient}
    next_url = view.url("/workflows", **values, before=rows[-1].id) if len(rows) == PAGE else None
    return view.render("workflows.html", rows=rows, values=values, states=RUN_STATES, next_url=next_url)


def run_page(view: View, id: str) -> Response:
    run = view.app.explain_run(as_uuid(id, name="run id"))
    return view.render("run.html", run=run, cancellable=run.state in OPEN_STATES)


def cancel(view: View, id: str) -> Response:
    run_id: uuid.UUID = as_uuid(id, name="run id")
    count = view.app.cancel_run(run_id)
    return view.back(f"/workflows/{run_id}", flash="run_cancelled", n=count)


def register(dashboard: Dashboard) -> None:
    dashboard.route("GET", "/workflows")(runs_page)
    dashboard.route("GET", "/workflows/{id}")(run_page)
    dashboard.route("POST", "/workflows/{id}/cancel")(cancel)
