"""The dashboard in a real headless Chromium: find a failed delivery, send it again, watch it succeed.

One dashboard (a real HTTP server), one worker thread, one webhook receiver
that fails until told otherwise, and an "attacker" page on another origin.
Screenshots of every page go to test-artifacts/browser/.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from channels_support import FakeServer, Recorded, Reply
from sqlalchemy.orm import Session

from chimeway import Chimeway, Notifier, Recipient
from chimeway.channels import Webhook
from chimeway.web import Dashboard, Request

pytestmark = pytest.mark.browser


class Receiver(FakeServer):
    """A webhook endpoint that answers 503 until ``ok`` is set."""

    ok = False

    def handle(self, request: Recorded) -> Reply:
        return Reply(200, "ok") if self.ok else Reply(503, "down for maintenance")


class Reminder(Notifier):
    key = "browser_reminder"
    channels = ["webhook"]
    templates = {"webhook": {"body": "reminder {{ n }}"}}

    def recipients(self, params: dict[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"user:{params['user']}")]


def role_from_cookie(request: Request) -> str:
    # The test's own access rule: a "role=read" cookie makes a reader; anyone else is admin,
    # so a cross-site POST reaches the CSRF check rather than stopping at access.
    return "read" if request.cookies.get("role") == "read" else "admin"


class _Threading(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Site:
    app: Chimeway
    receiver: Receiver
    base: str
    attacker: str
    delivery_ids: list[str]


def _serve(server: Any) -> None:
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[Site]:
    from chimeway.models import metadata

    receiver = Receiver()
    url = f"sqlite:///{tmp_path_factory.mktemp('browser') / 'chimeway.db'}"
    app = Chimeway(url, dispatcher="queue", channels={"webhook": Webhook(url=receiver.base_url + "/hook",
                                                                         secret="s")})
    metadata.create_all(app.engine)
    stop = threading.Event()
    worker = threading.Thread(target=app.queue.run_worker,
                              kwargs={"poll_interval": 0.2, "stop_event": stop}, daemon=True)
    worker.start()
    with Session(app.engine) as session, session.begin():
        results = [app.trigger(session, Reminder, {"n": n, "user": n}, idempotency_key=f"r{n}", tenant="acme")
                   for n in range(2)]
    ids = [str(r.delivery_ids[0]) for r in results]
    deadline = time.monotonic() + 30
    while any(app.explain(i).status != "failed" for i in ids):
        assert time.monotonic() < deadline, [app.explain(i).status for i in ids]
        time.sleep(0.1)

    dashboard = Dashboard(app, authorize=role_from_cookie, refresh_seconds=1)
    server = make_server("127.0.0.1", 0, dashboard.wsgi, server_class=_Threading, handler_class=_Quiet)
    _serve(server)
    base = f"http://127.0.0.1:{server.server_address[1]}"

    forged = (f'<form method="post" action="{base}/queues/pause"><input name="queue" value="default">'
              '<input name="csrf" value="forged"></form><script>document.forms[0].submit()</script>').encode()

    class Attacker(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(forged)))
            self.end_headers()
            self.wfile.write(forged)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    evil = ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    _serve(evil)
    # "localhost" is another site than "127.0.0.1": its form posts cross-site.
    yield Site(app, receiver, base, f"http://localhost:{evil.server_address[1]}/", ids)
    stop.set()
    worker.join(timeout=20)
    for s in (server, evil):
        s.shutdown()
        s.server_close()
    receiver.close()
    app.close()


def _wait(browser: Any, condition: Any, timeout: float = 20.0) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The live parts of a page are replaced as they refresh: an element found
    # just before a refresh is gone by the time its text is read; look again.
    return WebDriverWait(browser, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def _text(browser: Any, css: str) -> str:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(4):
        try:
            return str(browser.find_element(By.CSS_SELECTOR, css).text)
        except StaleElementReferenceException:  # replaced by a live refresh between find and read
            continue
    return str(browser.find_element(By.CSS_SELECTOR, css).text)


def _fits(browser: Any) -> bool:
    return bool(browser.execute_script(
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth"))


def test_find_a_failed_delivery_send_it_again_and_watch_it_succeed(
    site: Site, browser: Any, artifacts: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.set_window_size(1280, 900)
    browser.get(site.base + "/")
    assert "chimeway_delivery" in _text(browser, "#queues")
    browser.save_screenshot(str(artifacts / "overview.png"))

    browser.find_element(By.LINK_TEXT, "Deliveries").click()
    Select(browser.find_element(By.NAME, "status")).select_by_visible_text("failed")
    browser.find_element(By.NAME, "tenant").send_keys("acme")
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    _wait(browser, lambda b: "status=failed" in b.current_url)
    rows = browser.find_elements(By.CSS_SELECTOR, "#delivery-list tbody tr")
    assert len(rows) == 2 and all("503" in row.text for row in rows)
    browser.save_screenshot(str(artifacts / "deliveries-failed.png"))

    target = site.delivery_ids[0]
    browser.find_element(By.CSS_SELECTOR, f'a[href="/deliveries/{target}"]').click()
    explanation = _text(browser, "#delivery")
    assert "failed" in explanation and "attempt" in explanation and "503" in explanation
    assert "browser_reminder" in explanation and "chimeway_delivery" in explanation  # the job
    browser.save_screenshot(str(artifacts / "delivery-failed.png"))

    site.receiver.ok = True
    browser.find_element(By.XPATH, "//button[normalize-space()='Send again']").click()
    _wait(browser, lambda b: _text(b, ".flash") == "Delivery sent again.")
    # The worker sends it; the page's live refresh shows the new status without a reload.
    _wait(browser, lambda b: "succeeded" in _text(b, "#delivery .status"))
    assert "resent" in _text(browser, "#delivery")
    browser.save_screenshot(str(artifacts / "delivery-succeeded.png"))

    browser.find_element(By.CSS_SELECTOR, "#delivery a[href^='/events/']").click()
    _wait(browser, lambda b: "/events/" in b.current_url)
    assert "Deliveries" in _text(browser, "main")
    browser.save_screenshot(str(artifacts / "event.png"))

    # The other delivery's job, retried from the jobs page.
    waiting = site.app.queue.for_delivery(site.delivery_ids[1])[0]
    browser.get(site.base + "/jobs?state=retryable&queue=chimeway_delivery")
    assert str(waiting.id) in _text(browser, "#job-list")
    browser.save_screenshot(str(artifacts / "jobs.png"))
    browser.find_element(By.CSS_SELECTOR, f"input[name=ids][value='{waiting.id}']").click()
    browser.find_element(By.CSS_SELECTOR, "button[value=retry]").click()
    _wait(browser, lambda b: _text(b, ".flash") == "1 job(s) made due again.")
    deadline = time.monotonic() + 20
    while site.app.explain(site.delivery_ids[1]).status != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.1)

    job = site.app.queue.for_delivery(site.delivery_ids[1])[-1]
    browser.get(f"{site.base}/jobs/{job.id}")
    browser.find_element(By.CSS_SELECTOR, "details summary").click()
    assert "Retry: temporary" in _text(browser, "main")
    browser.save_screenshot(str(artifacts / "job.png"))
    for name in ("workflows", "schedules", "inbox?recipient=user:0&tenant=acme"):
        browser.get(f"{site.base}/{name}")
        assert "Traceback" not in browser.page_source
        browser.save_screenshot(str(artifacts / f"{name.split('?')[0]}.png"))


def test_every_page_works_at_320px_and_with_the_keyboard(site: Site, browser: Any, artifacts: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    browser.set_window_size(320, 800)
    pages = ["/", "/jobs", "/deliveries", f"/deliveries/{site.delivery_ids[0]}", "/workflows", "/schedules",
             "/inbox?recipient=user:0&tenant=acme"]
    for path in pages:
        browser.get(site.base + path)
        assert _fits(browser), path
        name = path.strip("/").split("?")[0].replace("/", "-") or "overview"
        browser.save_screenshot(str(artifacts / f"320-{name[:20]}.png"))

    browser.set_window_size(1024, 800)
    browser.get(site.base + "/")
    focused = ""
    for _ in range(150):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        focused = browser.execute_script("return document.activeElement.textContent.trim()")
        if focused == "Pause default":
            break
    assert focused == "Pause default"
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    _wait(browser, lambda b: "Queue default paused" in _text(b, "main"))
    assert set(site.app.queue.paused_queues()) == {"default"}
    site.app.queue.resume_queue("default")


def test_a_reader_sees_no_buttons_and_is_refused_when_posting(site: Site, browser: Any, artifacts: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.set_window_size(1280, 900)
    browser.get(site.base + "/")
    browser.add_cookie({"name": "role", "value": "read", "path": "/"})
    try:
        for path in ("/", "/jobs", f"/deliveries/{site.delivery_ids[0]}"):
            browser.get(site.base + path)
            assert browser.find_elements(By.CSS_SELECTOR, "form[method=post], button[value]") == []
        browser.save_screenshot(str(artifacts / "read-only.png"))
        status = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/queues/pause', {method: 'POST', body: new URLSearchParams({queue: 'default'})})"
            ".then(r => done(r.status));")
        assert status == 403
    finally:
        browser.delete_cookie("role")
    assert site.app.queue.paused_queues() == {}


def test_a_cross_site_post_is_refused(site: Site, browser: Any, artifacts: Path) -> None:
    browser.get(site.base + "/")  # the browser holds the dashboard's cookies
    browser.get(site.attacker)
    _wait(browser, lambda b: b.current_url.startswith(site.base))
    refused = _text(browser, "main")
    assert "Request refused" in refused and "cross-site" in refused
    browser.save_screenshot(str(artifacts / "cross-site-refused.png"))
    assert site.app.queue.paused_queues() == {}
