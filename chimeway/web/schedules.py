"""Cron schedules and record triggers, the inbox viewer, and finding anything by its id."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from chimeway.errors import NotFoundError
from chimeway.ids import as_uuid
from chimeway.models import deliveries_table, events_table, notifications_table, workflow_runs_table
from chimeway.web.http import Response

if TYPE_CHECKING:
    from chimeway.web.dashboard import Dashboard, View

__all__ = ["register"]


def schedules_page(view: View) -> Response:
    return view.render("schedules.html", crons=view.app.cron_schedules(),
                       triggers=view.app.record_triggers_status())


def inbox_page(view: View) -> Response:
    recipient = view.request.arg("recipient")
    tenant = view.request.arg("tenant")
    page = None
    unread = 0
    if recipient:
        inbox = view.app.inbox(recipient, tenant)
        page = inbox.list(limit=50, include_archived=True)
        unread = inbox.unread_count()
    return view.render("inbox.html", recipient=recipient, tenant=tenant, page=page, unread=unread)


def find(view: View) -> Response:
    raw = (view.request.arg("id") or "").strip()
    if raw.isdigit():
        return view.back(f"/jobs/{int(raw)}")
    wanted = as_uuid(raw, name="id")
    targets = ((deliveries_table, "/deliveries/"), (events_table, "/events/"),
               (workflow_runs_table, "/workflows/"))
    with view.app.engine.connect() as conn:
        for table, path in targets:
            if conn.execute(sa.select(table.c.id).where(table.c.id == wanted)).first():
                return view.back(path + str(wanted))
        notification = conn.execute(sa.select(notifications_table.c.event_id)
                                    .where(notifications_table.c.id == wanted)).first()
    if notification is not None:
        return view.back(f"/events/{notification.event_id}")
    raise NotFoundError(f"no job, delivery, event, notification or workflow run has the id {raw}")


def register(dashboard: Dashboard) -> None:
    dashboard.route("GET", "/schedules")(schedules_page)
    dashboard.route("GET", "/inbox")(inbox_page)
    dashboard.route("GET", "/find")(find)
