"""Deliveries and events: search, a delivery's explanation with its jobs, an event's trace, re-send.

Delivery and event ids are UUIDv7, ordered by creation time, so a time
filter is also a range of ids and needs no index of its own.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from chimeway.clock import SystemClock
from chimeway.explain import Explanation
from chimeway.ids import as_uuid
from chimeway.jsonvalues import redact
from chimeway.models import deliveries_table, events_table, notifications_table
from chimeway.verbs.operating import RESENDABLE
from chimeway.web.http import Response
from chimeway.web.jobs import parse_time

if TYPE_CHECKING:
    from chimeway.web.dashboard import Dashboard, View

__all__ = ["STATUSES", "register", "search_deliveries", "uuid7_floor"]

PAGE = 50
STATUSES = ("pending", "dispatched", "succeeded", "failed", "deferred", "suppressed", "cancelled")
FILTERS = ("recipient", "tenant", "notifier", "correlation", "status", "channel", "since", "until")
d, e, n = deliveries_table, events_table, notifications_table


def uuid7_floor(at: datetime) -> uuid.UUID:
    """The smallest UUIDv7 that can be minted at ``at``."""
    ms = int(at.timestamp() * 1000)
    return uuid.UUID(int=(ms << 80) | (0x7 << 76) | (0b10 << 62))


def search_deliveries(view: View, values: dict[str, str | None], before: uuid.UUID | None) -> list[Any]:
    """Deliveries matching the form's ``values``, newest first."""
    query = (
        sa.select(d.c.id, d.c.created_at, d.c.recipient_id, d.c.tenant, d.c.channel, d.c.status,
                  d.c.reason, d.c.attempts, d.c.event_id, e.c.notifier_key)
        .join(e, e.c.id == d.c.event_id)
    )
    tenant = values["tenant"]
    if values["recipient"]:
        query = query.join(n, n.c.id == d.c.notification_id).where(n.c.recipient_id == values["recipient"])
        if tenant is not None:
            query = query.where(n.c.tenant == tenant)
    elif tenant is not None:
        query = query.where(d.c.tenant == tenant)
    if values["notifier"]:
        query = query.where(e.c.notifier_key == values["notifier"])
    if values["correlation"]:
        query = query.where(e.c.correlation_id == values["correlation"])
    if values["status"]:
        query = query.where(d.c.status == values["status"])
    if values["channel"]:
        query = query.where(d.c.channel == values["channel"])
    # Ids follow the system clock; with another clock (tests) only the column is exact.
    ids_follow_time = isinstance(view.app.clock, SystemClock)
    since = parse_time(values["since"], "since")
    until = parse_time(values["until"], "until")
    if since is not None:
        query = query.where(d.c.created_at >= since)
        if ids_follow_time:
            query = query.where(d.c.id >= uuid7_floor(since))
    if until is not None:
        query = query.where(d.c.created_at < until)
        if ids_follow_time:
            query = query.where(d.c.id < uuid7_floor(until))
    if before is not None:
        query = query.where(d.c.id < before)
    with view.app.engine.connect() as conn:
        return list(conn.execute(query.order_by(d.c.id.desc()).limit(PAGE)).all())


def deliveries_page(view: View) -> Response:
    request = view.request
    values: dict[str, str | None] = {name: request.arg(name) for name in FILTERS}
    # A blank tenant means any tenant; "-" means deliveries triggered without one.
    if values["tenant"] == "-":
        values["tenant"] = ""
    before = request.arg("before")
    rows = search_deliveries(view, values, as_uuid(before, name="before") if before else None)
    shown = {k: ("-" if k == "tenant" and v == "" else v) for k, v in values.items()}
    next_url = view.url("/deliveries", **shown, before=rows[-1].id) if len(rows) == PAGE else None
    return view.render("deliveries.html", rows=rows, values=shown, statuses=STATUSES,
                       channels=sorted(view.app.channels), next_url=next_url)


def _timeline_rows(x: Explanation) -> list[dict[str, Any]]:
    rows = []
    for entry in x.timeline:
        detail = redact(dict(entry.detail))
        rows.append({"at": entry.at, "event": entry.event, "detail": detail,
                     "kind": ("attempt" if entry.event == "attempt" else
                              "decision" if "rule" in detail or "checkpoint" in detail else "status")})
    return rows


def delivery_page(view: View, id: str) -> Response:
    explanation = view.app.explain(id)
    jobs = view.app.queue.for_delivery(explanation.delivery_id)
    resendable = explanation.status in RESENDABLE and not any(
        "step" in t.detail for t in explanation.timeline if t.event == "planned")
    return view.render("delivery.html", x=explanation, timeline=_timeline_rows(explanation), jobs=jobs,
                       resendable=resendable)


def event_page(view: View, id: str) -> Response:
    trace = view.app.trace(id)
    with view.app.engine.connect() as conn:
        row = conn.execute(sa.select(e.c.params, e.c.correlation_id, e.c.notifier_version)
                           .where(e.c.id == trace.event_id)).one()
    deliveries = [(x, _timeline_rows(x)) for x in trace.deliveries]
    return view.render("event.html", trace=trace, params=redact(dict(row.params or {})),
                       correlation_id=row.correlation_id, version=row.notifier_version, deliveries=deliveries)


def resend(view: View, id: str) -> Response:
    view.app.resend(id, by=f"dashboard ({view.request.client or 'unknown client'})")
    return view.back(f"/deliveries/{id}", flash="resent")


def register(dashboard: Dashboard) -> None:
    dashboard.route("GET", "/deliveries")(deliveries_page)
    dashboard.route("GET", "/deliveries/{id}")(delivery_page)
    dashboard.route("POST", "/deliveries/{id}/resend")(resend)
    dashboard.route("GET", "/events/{id}")(event_page)
