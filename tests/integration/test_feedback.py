"""Provider feedback moves deliveries: verified, deduplicated, explained."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from http_apps import raw_post, serve_asgi, serve_wsgi
from sqlalchemy.orm import Session
from support import count_rows

from chimeway import Chimeway, Notifier, Recipient
from chimeway.channels import Webhook, sign_webhook
from chimeway.errors import SignatureError, UnknownChannelError
from chimeway.feedback import asgi_app, wsgi_app
from chimeway.models import decisions_table, deliveries_table, provider_events_table, signals_table
from chimeway.testing import RecordingChannel

SECRET = "whsec_" + "ZmVlZGJhY2stdGVzdC1zZWNyZXQ="


class _Accept(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Accept)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()




@pytest.fixture
def app(any_engine: sa.Engine, receiver: str) -> Iterator[Chimeway]:
    from support import OnlyRec  # noqa: F401 - registers the notifier

    chimeway = Chimeway(engine=any_engine, channels={"rec": Webhook(url=receiver, secret=SECRET)})
    yield chimeway
    chimeway.close()


def _delivered(app: Chimeway) -> Any:
    from support import OnlyRec

    with Session(app.engine) as session, session.begin():
        return app.trigger(session, OnlyRec, {"n": 1}, idempotency_key="fb").delivery_ids[0]


def _callback(delivery_id: Any, status: str, event_id: str = "evt_1") -> tuple[dict[str, str], bytes]:
    body = json.dumps({"type": f"delivery.{status}", "timestamp": "2026-11-22T10:00:00+00:00",
                       "data": {"delivery_id": str(delivery_id), "detail": "mailbox full"}}).encode()
    return sign_webhook(body, SECRET, msg_id=event_id), body


def test_bounce_report_cancels_the_delivery_once(app: Chimeway) -> None:
    delivery_id = _delivered(app)
    assert app.explain(delivery_id).status == "succeeded"
    headers, body = _callback(delivery_id, "bounced")
    [outcome] = app.ingest_feedback("rec", headers, body)
    assert outcome.applied and outcome.delivery_id == delivery_id
    explanation = app.explain(delivery_id)
    assert explanation.status == "cancelled"
    assert explanation.reason == "bounced: mailbox full"
    entry = next(t for t in explanation.timeline if t.event == "provider_bounced")
    assert entry.detail["checkpoint"] == "provider_feedback"
    assert entry.detail["provider_event_id"] == "evt_1"
    # Workflows can wait on the report: it is recorded as a signal of the recipient.
    with app.engine.connect() as conn:
        signals = conn.execute(sa.select(signals_table.c.name, signals_table.c.actor)).all()
    assert [tuple(s) for s in signals] == [("delivery.bounced", "user:1")]
    # The provider retries its webhook: nothing changes the second time.
    before = count_rows(app.engine)
    [again] = app.ingest_feedback("rec", headers, body)
    assert not again.applied and "duplicate" in again.note
    assert count_rows(app.engine) == before


def test_delivered_report_is_recorded_and_keeps_success(app: Chimeway) -> None:
    delivery_id = _delivered(app)
    headers, body = _callback(delivery_id, "delivered", "evt_2")
    [outcome] = app.ingest_feedback("rec", headers, body)
    assert outcome.applied
    explanation = app.explain(delivery_id)
    assert explanation.status == "succeeded"
    assert "provider_delivered" in [t.event for t in explanation.timeline]


def test_tampered_or_unsigned_reports_change_nothing(app: Chimeway) -> None:
    delivery_id = _delivered(app)
    headers, body = _callback(delivery_id, "bounced")
    before = count_rows(app.engine)
    with pytest.raises(SignatureError):
        app.ingest_feedback("rec", headers, body.replace(b"mailbox full", b"mailbox fine"))
    with pytest.raises(SignatureError):
        app.ingest_feedback("rec", {}, body)
    with pytest.raises(UnknownChannelError):
        app.ingest_feedback("nope", headers, body)
    assert count_rows(app.engine) == before
    assert app.explain(delivery_id).status == "succeeded"


def test_report_for_unknown_delivery_is_kept_but_applies_nothing(app: Chimeway) -> None:
    headers, body = _callback("01a2019b-0000-7000-8000-000000000000", "bounced", "evt_9")
    [outcome] = app.ingest_feedback("rec", headers, body)
    assert not outcome.applied and "no delivery" in outcome.note
    with app.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(provider_events_table)).scalar_one() == 1
        assert conn.execute(sa.select(sa.func.count()).select_from(decisions_table)).scalar_one() == 0


def test_wsgi_endpoint(app: Chimeway) -> None:
    delivery_id = _delivered(app)
    headers, body = _callback(delivery_id, "failed", "evt_3")
    endpoint = wsgi_app(app.ingest_feedback)

    def call(extra: dict[str, str], payload: bytes) -> tuple[str, bytes]:
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/rec", "CONTENT_LENGTH": str(len(payload)),
                   "wsgi.input": io.BytesIO(payload), "wsgi.url_scheme": "http", "HTTP_HOST": "localhost",
                   **{f"HTTP_{k.upper().replace('-', '_')}": v for k, v in extra.items()}}
        status: list[str] = []
        out = b"".join(endpoint(environ, lambda s, h: status.append(s)))
        return status[0], out

    status, out = call(headers, body + b" ")
    assert status.startswith("401")
    status, out = call(headers, body)
    assert status == "200 OK" and json.loads(out) == {"applied": 1, "reports": 1}
    with app.engine.connect() as conn:
        reason = conn.execute(sa.select(deliveries_table.c.reason)).scalar_one()
    assert reason == "provider_failed: mailbox full"


class _OnlyOther(Notifier):
    key = "test_feedback_other_channel"
    channels = ["other"]
    templates = {"other": {"body": "n={{ n }}"}}

    def recipients(self, params: Any) -> list[Recipient]:
        return [Recipient(id="user:2")]


def test_a_report_only_reaches_deliveries_of_the_channel_that_verified_it(
    any_engine: sa.Engine, receiver: str
) -> None:
    app = Chimeway(engine=any_engine, channels={"rec": Webhook(url=receiver, secret=SECRET),
                                                "other": RecordingChannel()})
    with Session(app.engine) as session, session.begin():
        other_id = app.trigger(session, _OnlyOther, {"n": 1}, idempotency_key="o").delivery_ids[0]
    assert app.explain(other_id).status == "succeeded"
    # Signed with the webhook secret, naming a delivery sent through another channel.
    headers, body = _callback(other_id, "bounced", "evt_cross")
    [outcome] = app.ingest_feedback("rec", headers, body)
    assert not outcome.applied and outcome.delivery_id is None
    assert "no delivery of channel 'rec'" in outcome.note
    explanation = app.explain(other_id)
    assert explanation.status == "succeeded"
    assert not [t for t in explanation.timeline if t.event.startswith("provider_")]
    with app.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(signals_table)).scalar_one() == 0
    app.close()


def test_a_tenant_scoped_endpoint_only_reaches_its_tenants_deliveries(app: Chimeway) -> None:
    from support import OnlyRec

    with Session(app.engine) as session, session.begin():
        delivery_id = app.trigger(session, OnlyRec, {"n": 1}, idempotency_key="t",
                                  tenant="globex").delivery_ids[0]
    headers, body = _callback(delivery_id, "bounced", "evt_acme")
    [outcome] = app.ingest_feedback("rec", headers, body, tenant="acme")
    assert not outcome.applied
    assert app.explain(delivery_id).status == "succeeded"
    headers, body = _callback(delivery_id, "bounced", "evt_globex")
    [outcome] = app.ingest_feedback("rec", headers, body, tenant="globex")
    assert outcome.applied
    assert app.explain(delivery_id).status == "cancelled"


# What anyone on the network can send; each must be refused as unauthenticated.
_HOSTILE_TIMESTAMPS = ["9" * 309, "9" * 5000, "-1", "1_700_000_000", "1e9", "0x10", ""]


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_hostile_signature_headers_get_401_over_http(sqlite_engine: sa.Engine, kind: str) -> None:
    app = Chimeway(engine=sqlite_engine, channels={"rec": Webhook(url="http://127.0.0.1:9/", secret=SECRET)})
    headers, body = _callback("01a2019b-0000-7000-8000-000000000000", "bounced")
    serve = serve_wsgi(wsgi_app(app.ingest_feedback)) if kind == "wsgi" else serve_asgi(
        asgi_app(app.ingest_feedback))
    with serve as base, httpx.Client(base_url=base, timeout=10) as client:
        for timestamp in _HOSTILE_TIMESTAMPS:
            response = client.post("/rec", content=body, headers={**headers, "webhook-timestamp": timestamp})
            assert response.status_code == 401, (timestamp[:20], response.text)
        for name in ("webhook-id", "webhook-signature"):
            response = client.post("/rec", content=body, headers={**headers, name: "é\u00ff".encode()})
            assert response.status_code == 401, name
        if kind == "wsgi":
            reply = raw_post(base, "/rec", "Content-Length: 12abc\r\n")
            assert reply.startswith(b"HTTP/1.0 400"), reply[:40]
        # The genuine request still goes through.
        assert client.post("/rec", content=body, headers=headers).status_code == 200
    app.close()
