"""The dashboard mounted in real ASGI (FastAPI) and WSGI (Flask) apps: pages, access, CSRF, actions."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from flask import Flask
from sqlalchemy.orm import Session
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from chimeway import Chimeway, Notifier, Recipient
from chimeway.channels import Webhook
from chimeway.queue import JobFilter
from chimeway.web import Dashboard, Request
from chimeway.workflow import deliver, wait

ROLE_HEADER = "x-test-role"


class Shipped(Notifier):
    key = "dash_shipped"
    channels = ["webhook"]
    templates = {"webhook": {"body": "order {{ order_id }}"}}

    def recipients(self, params: dict[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"user:{params['user_id']}")]


def by_header(request: Request) -> str | None:
    return request.headers.get(ROLE_HEADER)


@pytest.fixture
def app(any_url: str) -> Iterator[Chimeway]:
    chimeway = Chimeway(any_url, dispatcher="queue",
                        channels={"webhook": Webhook(url="http://127.0.0.1:9/refused", secret="s")})

    @chimeway.job(queue="mailers", max_attempts=1)
    def mail(n: int, password: str) -> None:
        raise RuntimeError(f"smtp said no to {n}")

    with Session(chimeway.engine) as session, session.begin():
        for n in range(3):
            chimeway.trigger(session, Shipped, {"order_id": n, "user_id": 7, "api_token": "tok-SECRET"},
                             idempotency_key=f"o{n}", tenant="acme", correlation_id="req-9")
            mail.enqueue(session, n=n, password="hunter2")
    chimeway.work()
    yield chimeway
    chimeway.close()


def _client(app: Chimeway, **options: Any) -> TestClient:
    api = FastAPI()
    api.mount("/ops", Dashboard(app, authorize=by_header, **options))
    return TestClient(api, base_url="http://testserver")


def _csrf(client: TestClient, role: str = "admin") -> str:
    page = client.get("/ops/jobs", headers={ROLE_HEADER: role})
    token = client.cookies.get("chimeway_csrf")
    assert token, page.headers
    if role == "admin":
        assert f'name="csrf" value="{token}"' in page.text
    return str(token)


def test_refuses_everyone_by_default_and_says_how_to_enable(app: Chimeway) -> None:
    api = FastAPI()
    api.mount("/ops", Dashboard(app))
    client = TestClient(api)
    for path in ("/ops/", "/ops/jobs", "/ops/deliveries"):
        page = client.get(path)
        assert page.status_code == 403
        assert "Dashboard(app, authorize=" in page.text and "hunter2" not in page.text
    assert client.post("/ops/queues/pause", data={"queue": "mailers"}).status_code == 403
    assert app.queue.paused_queues() == {}


def test_every_page_renders_for_readers_without_buttons_or_secrets(app: Chimeway) -> None:
    client = _client(app)
    read = {ROLE_HEADER: "read"}
    with app.engine.connect() as conn:
        delivery_id, event_id = conn.execute(sa.text(
            "SELECT id, event_id FROM chimeway_deliveries ORDER BY id LIMIT 1")).one()
    delivery_id, event_id = str(app.explain(delivery_id).delivery_id), str(app.explain(delivery_id).event_id)
    job = app.queue.list_jobs()[0]
    pages = [
        "/ops/", "/ops/jobs", "/ops/jobs?state=discarded&queue=mailers", "/ops/jobs?args=hunter",
        f"/ops/jobs/{job.id}", "/ops/deliveries", "/ops/deliveries?status=failed&tenant=acme",
        "/ops/deliveries?recipient=user:7&tenant=acme", "/ops/deliveries?notifier=dash_shipped",
        "/ops/deliveries?correlation=req-9&since=2000-01-01T00:00&until=2999-01-01T00:00",
        f"/ops/deliveries/{delivery_id}", f"/ops/events/{event_id}", "/ops/workflows",
        "/ops/schedules", "/ops/inbox?recipient=user:7&tenant=acme",
    ]
    for path in pages:
        page = client.get(path, headers=read)
        assert page.status_code == 200, (path, page.text)
        assert 'method="post"' not in page.text, path  # no action button for readers
        assert "hunter2" not in page.text and "tok-SECRET" not in page.text, path
        assert 'href="/ops/jobs"' in page.text, path  # links carry the mount prefix
    overview = client.get("/ops/", headers=read).text
    assert "mailers" in overview and "Read-only" in overview
    failed = client.get("/ops/deliveries?status=failed&tenant=acme", headers=read).text
    assert failed.count("Connection refused") == 3
    assert "No deliveries match" in client.get("/ops/deliveries?tenant=other", headers=read).text
    discarded = client.get("/ops/jobs?state=discarded", headers=read).text
    assert "RuntimeError: smtp said no to 2" in discarded
    detail = client.get(f"/ops/deliveries/{delivery_id}", headers=read).text
    assert "ConnectError" in detail and f"/ops/jobs/{app.queue.for_delivery(delivery_id)[0].id}" in detail
    assert client.get(f"/ops/find?id={delivery_id}", headers=read, follow_redirects=False).headers[
        "location"] == f"/ops/deliveries/{delivery_id}"
    assert client.get("/ops/jobs/999999", headers=read).status_code == 404
    # A reader's POST is refused even with a good token.
    token = _csrf(client, "read")
    refused = client.post("/ops/queues/pause", data={"queue": "mailers", "csrf": token}, headers=read)
    assert refused.status_code == 403 and "read-only" in refused.text
    assert app.queue.paused_queues() == {}


def test_actions_need_the_token_from_this_site(app: Chimeway) -> None:
    client = _client(app)
    admin = {ROLE_HEADER: "admin"}
    token = _csrf(client)
    form = {"queue": "mailers", "csrf": token}
    assert client.post("/ops/queues/pause", data={"queue": "mailers"}, headers=admin).status_code == 403
    assert client.post("/ops/queues/pause", data={**form, "csrf": "0" * 32 + ".x"}, headers=admin).status_code == 403
    cross = client.post("/ops/queues/pause", data=form, headers={**admin, "sec-fetch-site": "cross-site"})
    assert cross.status_code == 403 and "cross-site" in cross.text
    other = client.post("/ops/queues/pause", data=form, headers={**admin, "origin": "http://evil.example"})
    assert other.status_code == 403
    assert app.queue.paused_queues() == {}
    done = client.post("/ops/queues/pause", data=form, headers={**admin, "origin": "http://testserver",
                                                               "sec-fetch-site": "same-origin"},
                       follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].startswith("/ops/?flash=paused")
    assert set(app.queue.paused_queues()) == {"mailers"}
    assert "Resume mailers" in client.get("/ops/", headers=admin).text
    client.post("/ops/queues/resume", data=form, headers=admin)
    assert app.queue.paused_queues() == {}


def test_job_actions_on_selected_and_matching_jobs(app: Chimeway) -> None:
    client = _client(app)
    admin = {ROLE_HEADER: "admin"}
    token = _csrf(client)
    discarded = [j.id for j in app.queue.list_jobs()]
    mail_ids = [j.id for j in app.queue.list_jobs() if j.queue == "mailers"]
    assert len(mail_ids) == 3 and discarded
    retried = client.post("/ops/jobs/action", headers=admin, follow_redirects=False,
                          data={"csrf": token, "action": "retry", "scope": "selected", "ids": mail_ids[:2]})
    assert retried.status_code == 303 and "n=2" in retried.headers["location"]
    assert sorted(j.id for j in app.queue.list_jobs() if j.state == "available") == sorted(mail_ids[:2])
    cancelled = client.post("/ops/jobs/action", headers=admin, follow_redirects=False,
                            data={"csrf": token, "action": "cancel", "scope": "matching", "queue": "mailers",
                                  "state": "available"})
    assert "n=2" in cancelled.headers["location"]
    page = client.get(cancelled.headers["location"], headers=admin).text
    assert "2 job(s) cancelled." in page
    client.post(f"/ops/jobs/{mail_ids[2]}/delete", headers=admin, data={"csrf": token})
    assert mail_ids[2] not in [j.id for j in app.queue.list_jobs()]
    bad = client.post("/ops/jobs/action", headers=admin, data={"csrf": token, "action": "retry"})
    assert bad.status_code == 400 and "select at least one job" in bad.text


def test_wsgi_mount_in_flask_and_resend(sqlite_url: str) -> None:
    app = Chimeway(sqlite_url, channels={"webhook": Webhook(url="http://127.0.0.1:9/refused", secret="s")},
                   max_attempts=1)
    with Session(app.engine) as session, session.begin():
        result = app.trigger(session, Shipped, {"order_id": 1, "user_id": 7}, idempotency_key="w1")
    delivery_id = result.delivery_ids[0]
    assert app.explain(delivery_id).status == "cancelled"
    flask_app = Flask("host")
    flask_app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, {"/ops": Dashboard(app, authorize=by_header)})
    client = flask_app.test_client()
    page = client.get(f"/ops/deliveries/{delivery_id}", headers={ROLE_HEADER: "admin"})
    assert page.status_code == 200 and "Send again" in page.text
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    from chimeway.testing import RecordingChannel

    app.channels["webhook"] = recording = RecordingChannel()  # the receiver is fixed
    sent = client.post(f"/ops/deliveries/{delivery_id}/resend", headers={ROLE_HEADER: "admin"},
                       data={"csrf": token})
    assert sent.status_code == 303
    assert app.explain(delivery_id).status == "succeeded" and len(recording.sent) == 1
    events = [t.event for t in app.explain(delivery_id).timeline]
    assert "resent" in events
    again = client.post(f"/ops/deliveries/{delivery_id}/resend", headers={ROLE_HEADER: "admin"},
                        data={"csrf": token})
    assert again.status_code == 400 and "only failed or cancelled" in again.text
    app.close()


def test_workers_honour_a_pause_within_one_poll(sqlite_url: str) -> None:
    app = Chimeway(sqlite_url)
    ran: list[int] = []

    @app.job(queue="reports")
    def report(n: int) -> None:
        ran.append(n)

    app.queue.pause_queue("reports", by="test")
    with Session(app.engine) as session, session.begin():
        report.enqueue(session, n=1)
    stop = threading.Event()
    worker = threading.Thread(target=app.queue.run_worker, kwargs={
        "queues": {"reports": 2}, "poll_interval": 0.1, "stop_event": stop})
    worker.start()
    try:
        # Several polls pass: the paused queue's job stays where it is.
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            assert ran == []
            time.sleep(0.05)
        assert [j.state for j in app.queue.list_jobs(JobFilter(queue="reports"))] == ["available"]
        app.queue.resume_queue("reports")
        deadline = time.monotonic() + 30
        while not ran and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ran == [1]
    finally:
        stop.set()
        worker.join(timeout=30)
    app.close()


def test_a_deliverys_jobs_are_found_through_their_index(any_engine: sa.Engine) -> None:
    from chimeway.queue import JobQueue

    seen: list[tuple[str, Any]] = []

    def keep(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        seen.append((statement, parameters))

    queue = JobQueue(any_engine)
    sa.event.listen(any_engine, "before_cursor_execute", keep)
    assert queue.for_delivery("01a2019b-0000-7000-8000-000000000000") == []
    sa.event.remove(any_engine, "before_cursor_execute", keep)
    [(statement, parameters)] = [s for s in seen if "chimeway_jobs" in s[0]]
    with any_engine.connect() as conn:
        if any_engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = "\n".join(conn.exec_driver_sql("EXPLAIN " + statement, parameters).scalars())
        else:
            plan = "\n".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement,
                                                                         parameters))
    assert "ix_chimeway_jobs_delivery" in plan, plan


class Nudge(Notifier):
    key = "dash_nudge"
    templates = {"in_app": {"title": "Order {{ order_id }}"}, "webhook": {"body": "order {{ order_id }}"}}
    workflow = [deliver("in_app"), wait(minutes=30, unless="notification.read"), deliver("webhook")]

    def recipients(self, params: dict[str, Any]) -> list[Recipient]:
        return [Recipient(id="user:3")]


def test_workflow_runs_listed_explained_and_cancelled(sqlite_url: str) -> None:
    from chimeway.testing import RecordingChannel

    app = Chimeway(sqlite_url, channels={"webhook": RecordingChannel()})
    with Session(app.engine) as session, session.begin():
        app.trigger(session, Nudge, {"order_id": 5}, idempotency_key="n5", tenant="acme")
    client = _client(app)
    admin = {ROLE_HEADER: "admin"}
    listing = client.get("/ops/workflows?state=waiting&notifier=dash_nudge", headers=admin).text
    run_id = re.search(r'href="/ops/workflows/([0-9a-f-]{36})"', listing).group(1)  # type: ignore[union-attr]
    run = client.get(f"/ops/workflows/{run_id}", headers=admin).text
    assert "Waiting until" in run and "notification.read" in run and "Cancel this run" in run
    assert "No runs match" in client.get("/ops/workflows?state=completed", headers=admin).text
    token = str(client.cookies.get("chimeway_csrf"))
    done = client.post(f"/ops/workflows/{run_id}/cancel", headers=admin, data={"csrf": token},
                       follow_redirects=False)
    assert done.status_code == 303 and "n=1" in done.headers["location"]
    assert app.explain_run(run_id).state == "cancelled"
    assert "Cancel this run" not in client.get(f"/ops/workflows/{run_id}", headers=admin).text
    app.close()
