"""Inbound provider feedback: status webhooks that move deliveries.

``ingest()`` verifies the request through the channel's ``parse_feedback``
(which raises :class:`~chimeway.errors.SignatureError` and changes nothing
when the request is not authentic), deduplicates by the provider's event id,
finds the delivery (by our id, or by the provider's message id), records the
report on the delivery's timeline, and moves it:

- ``delivered`` / ``opened`` / ``clicked``: stays ``succeeded``; the report is recorded;
- ``bounced`` / ``complained`` / ``failed``: ``cancelled`` with reason
  ``bounced: ...`` / ``complained: ...`` / ``provider_failed: ...``.

A report only ever reaches deliveries sent through the channel whose
credentials verified it (and, when ``tenant`` is given, of that tenant): a
receiver holding the webhook secret cannot bounce an SMS, nor one tenant's
endpoint another tenant's email.

Each report is also offered as a signal ``delivery.<status>`` (for workflows
that wait on it) through the ``on_signal`` hook, in the same transaction.

:func:`wsgi_app` and :func:`asgi_app` expose ``POST /<channel>`` endpoints
for any WSGI or ASGI server.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chimeway.channels.base import Channel
from chimeway.clock import Clock
from chimeway.db import insert_ignoring_conflict, writer
from chimeway.deliveries import CLAIMABLE, Status, cancel
from chimeway.errors import ChimewayError, SignatureError, UnknownChannelError
from chimeway.ids import new_id
from chimeway.models import decisions_table, deliveries_table, provider_events_table
from chimeway.values import Feedback

__all__ = ["FeedbackOutcome", "SignalHook", "asgi_app", "ingest", "wsgi_app"]

FAILING = {"bounced": "bounced", "complained": "complained", "failed": "provider_failed"}

SignalHook = Callable[[Connection, str, Mapping[str, Any]], None]


@dataclass(frozen=True, kw_only=True)
class FeedbackOutcome:
    """What one provider report did.

    Args:
        provider_event_id: the provider's id for the report.
        status: the reported status.
        delivery_id: the delivery it was matched to, if any.
        applied: ``False`` when it was a duplicate or matched no delivery.
        note: why it was not applied, or what it changed.
    """

    provider_event_id: str
    status: str
    delivery_id: uuid.UUID | None
    applied: bool
    note: str


def ingest(
    *,
    engine: Engine,
    clock: Clock,
    channels: Mapping[str, Channel],
    channel_name: str,
    headers: Mapping[str, str],
    body: bytes,
    url: str | None = None,
    on_signal: SignalHook | None = None,
    tenant: str | None = None,
) -> list[FeedbackOutcome]:
    """Verify, deduplicate and apply a provider's status webhook.

    Args:
        engine: Chimeway's engine.
        clock: the time source.
        channels: the configured channels.
        channel_name: which configured channel the request is for.
        headers: request headers (any case).
        body: the raw request body.
        url: the full URL the provider called (Twilio signs it).
        on_signal: called per applied report with ``(conn, "delivery.<status>", payload)``.
        tenant: when the endpoint (or its credentials) belongs to one tenant,
            only that tenant's deliveries are matched; ``None`` matches any.
    """
    channel = channels.get(channel_name)
    if channel is None:
        raise UnknownChannelError(f"no channel named {channel_name!r} is configured for feedback")
    reports = channel.parse_feedback(headers, body, url=url)
    outcomes: list[FeedbackOutcome] = []
    now = clock.now()
    with writer(engine).begin() as conn:
        for report in reports:
            outcomes.append(_apply(conn, channel_name, tenant, report, now, on_signal))
    return outcomes


def _apply(conn: Connection, channel_name: str, tenant: str | None, report: Feedback,
           now: datetime, on_signal: SignalHook | None) -> FeedbackOutcome:
    d = deliveries_table
    # Scoped in the query itself, so a report naming another channel's (or
    # tenant's) delivery finds nothing rather than something to refuse.
    query = (sa.select(d.c.id, d.c.status, d.c.tenant, d.c.recipient_id, d.c.notification_id, d.c.channel)
             .where(d.c.channel == channel_name))
    if tenant is not None:
        query = query.where(d.c.tenant == tenant)
    if report.delivery_id is not None:
        row = conn.execute(query.where(d.c.id == report.delivery_id)).first()
    elif report.provider_message_id:
        row = conn.execute(query.where(d.c.provider_message_id == report.provider_message_id)).first()
    else:
        row = None
    fresh = insert_ignoring_conflict(conn, provider_events_table, {
        "id": new_id(), "channel": channel_name, "provider_event_id": report.provider_event_id,
        "delivery_id": None if row is None else row.id, "status": report.status, "received_at": now,
    }, ("channel", "provider_event_id"))
    base = {"provider_event_id": report.provider_event_id, "status": report.status}
    if not fresh:
        return FeedbackOutcome(**base, delivery_id=None if row is None else row.id, applied=False,
                               note="duplicate report, already ingested")
    if row is None:
        return FeedbackOutcome(**base, delivery_id=None, applied=False,
                               note=f"no delivery of channel {channel_name!r} matches this report")
    detail: dict[str, Any] = {"provider_event_id": report.provider_event_id, "channel": channel_name}
    for key in ("provider_message_id", "detail", "vendor_code"):
        value = getattr(report, key)
        if value is not None:
            detail[key] = value
    if report.occurred_at is not None:
        detail["occurred_at"] = report.occurred_at.isoformat()
    note = "recorded"
    prefix = FAILING.get(report.status)
    if prefix is not None and row.status not in (Status.CANCELLED, Status.SUPPRESSED):
        reason = f"{prefix}: {report.detail or report.status}"
        # A bounce may follow an accepted send: ``succeeded`` can still be cancelled.
        if cancel(conn, [row.id], reason=reason, now=now, checkpoint="provider_feedback", event=None,
                  from_statuses=[*CLAIMABLE, Status.DISPATCHED, Status.SUCCEEDED]):
            note = f"delivery {row.status} → cancelled ({reason})"
    conn.execute(sa.insert(decisions_table).values(
        id=new_id(), delivery_id=row.id, at=now, event=f"provider_{report.status}",
        checkpoint="provider_feedback", detail=detail))
    if on_signal is not None:
        on_signal(conn, f"delivery.{report.status}", {
            "tenant": row.tenant or None, "actor": row.recipient_id,
            "notification_id": str(row.notification_id), "delivery_id": str(row.id),
            "channel": row.channel, **detail,
        })
    return FeedbackOutcome(**base, delivery_id=row.id, applied=True, note=note)


Ingest = Callable[[str, Mapping[str, str], bytes, str | None], list[FeedbackOutcome]]


class _BadRequest(Exception):
    pass


def _content_length(raw: Any) -> int:
    text = str(raw or "0").strip()
    if not text.isascii() or not text.isdigit():
        raise _BadRequest("Content-Length is not a non-negative integer")
    return int(text)


def _respond(ingest_fn: Ingest, channel_name: str, headers: Mapping[str, str], body: bytes,
             url: str | None) -> tuple[int, bytes]:
    try:
        outcomes = ingest_fn(channel_name, headers, body, url)
    except SignatureError as exc:
        return 401, json.dumps({"error": str(exc)}).encode()
    except ChimewayError as exc:
        return 400, json.dumps({"error": str(exc)}).encode()
    return 200, json.dumps({"applied": sum(o.applied for o in outcomes), "reports": len(outcomes)}).encode()


def wsgi_app(ingest_fn: Ingest) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """A WSGI app answering ``POST /<channel>`` (mount it under e.g. ``/feedback``).

    Args:
        ingest_fn: ``app.ingest_feedback``.
    """
    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            start_response("405 Method Not Allowed", [("Allow", "POST")])
            return [b""]
        try:
            length = _content_length(environ.get("CONTENT_LENGTH"))
        except _BadRequest as exc:
            start_response("400 Bad Request", [("Content-Type", "application/json")])
            return [json.dumps({"error": str(exc)}).encode()]
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        query = f"?{environ['QUERY_STRING']}" if environ.get("QUERY_STRING") else ""
        url = f"{environ.get('wsgi.url_scheme', 'http')}://{host}{path}{query}"
        status, payload = _respond(ingest_fn, environ.get("PATH_INFO", "").strip("/"), headers, body, url)
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized"}[status]
        start_response(f"{status} {reason}", [("Content-Type", "application/json")])
        return [payload]

    return application


def asgi_app(ingest_fn: Ingest) -> Callable[..., Awaitable[None]]:
    """An ASGI app answering ``POST /<channel>``; the database work runs in a thread.

    Args:
        ingest_fn: ``app.ingest_feedback``.
    """
    import asyncio

    async def application(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                          send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 405, "headers": [(b"allow", b"POST")]})
            await send({"type": "http.response.body", "body": b""})
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        query = scope.get("query_string", b"").decode()
        path = scope.get("root_path", "") + scope["path"]
        url = f"{scope.get('scheme', 'http')}://{host}{path}" + (f"?{query}" if query else "")
        status, payload = await asyncio.to_thread(
            _respond, ingest_fn, scope["path"].strip("/"), headers, b"".join(chunks), url)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})

    return application
