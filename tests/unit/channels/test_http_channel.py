"""``chimeway.channels.HTTPChannel``: the public base for channels that call an HTTP API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from channels_support.server import FakeServer, Reply, refused_url

import chimeway.channels
import chimeway.channels._http
from chimeway import DeliveryResult, Message, Recipient
from chimeway.channels import HTTPChannel, classify_http, parse_retry_after


class Hook(HTTPChannel):
    def send(self, message: Message) -> DeliveryResult:
        response = self.request("POST", "/hook", json=dict(message.fields))
        if isinstance(response, DeliveryResult):
            return response
        return self.classify(response, provider_message_id=response.headers.get("x-id"))


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as fake:
        yield fake


def _message() -> Message:
    return Message(delivery_id=uuid.uuid4(), notification_id=uuid.uuid4(), event_id=uuid.uuid4(),
                   tenant=None, channel="hook", notifier_key="n", recipient=Recipient(id="u"),
                   fields={"body": "hi"})


def test_public_and_the_old_path_are_the_same_objects() -> None:
    assert {"HTTPChannel", "classify_http", "parse_retry_after"} <= set(chimeway.channels.__all__)
    assert chimeway.channels._http.HTTPChannel is HTTPChannel
    assert chimeway.channels._http.classify_http is classify_http
    assert chimeway.channels._http.parse_retry_after is parse_retry_after
    assert issubclass(chimeway.channels.Webhook, HTTPChannel)


def test_a_subclass_gets_classification_and_retry_after(server: FakeServer) -> None:
    hook = Hook(base_url=server.base_url)
    server.enqueue(Reply(200, "ok", headers={"X-Id": "m-1"}),
                   Reply(429, "slow down", headers={"Retry-After": "12"}),
                   Reply(503, ""),
                   Reply(404, "no such hook"))
    ok, limited, down, missing = (hook.send(_message()) for _ in range(4))
    assert (ok.outcome, ok.provider_message_id) == ("succeeded", "m-1")
    assert (limited.outcome, limited.retry_after, limited.error_class) == ("temporary", 12.0, "http_429")
    assert (down.outcome, down.retry_after) == ("temporary", None)
    assert (missing.outcome, missing.detail) == ("permanent", "HTTP 404: no such hook")
    assert [r.json() for r in server.requests] == [{"body": "hi"}] * 4
    hook.close()


def test_unreachable_is_temporary_and_retry_after_reads_dates() -> None:
    hook = Hook(base_url=refused_url(), timeout=2)
    result = hook.send(_message())
    assert (result.outcome, result.error_class) == ("temporary", "ConnectError")
    response = httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert HTTPChannel.retry_after(response) == 0.0      # a date in the past: retry now
    hook.close()


def test_a_providers_cookie_is_never_sent_back(server: FakeServer) -> None:
    # One endpoint's Set-Cookie must not ride along on later deliveries (to it
    # or to anyone else on the same host): channels keep no cookie jar.
    hook = Hook(base_url=server.base_url)
    server.enqueue(Reply(200, "ok", headers={"Set-Cookie": "session=planted; Path=/"}), Reply(200, "ok"))
    assert [hook.send(_message()).outcome for _ in range(2)] == ["succeeded", "succeeded"]
    assert "cookie" not in {k.lower() for k in server.requests[1].headers}
    hook.close()


def test_direct_requests_carry_the_clients_headers_and_the_callers(server: FakeServer) -> None:
    class Tagged(HTTPChannel):
        def send(self, message: Message) -> DeliveryResult:
            response = self.request("POST", "/t", content=b"x", headers={"X-Call": "1"}, params={"q": "a b"})
            assert not isinstance(response, DeliveryResult)
            assert response.request.url.params["q"] == "a b" and response.read() == b"ok"
            return self.classify(response)

    hook = Tagged(base_url=server.base_url, headers={"X-Team": "core"})
    assert hook.send(_message()).outcome == "succeeded"
    (seen,) = server.requests
    headers = {k.lower(): v for k, v in seen.headers.items()}
    assert (headers["x-team"], headers["x-call"], seen.query, seen.body) == ("core", "1", {"q": ["a b"]}, b"x")
    assert headers["user-agent"].startswith("python-httpx/") and headers["connection"] == "keep-alive"
    hook.close()
