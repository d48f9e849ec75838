"""Apns against a local HTTP/2 + TLS server that speaks APNs's wire format."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from channels_support import make_message
from channels_support.apns import FakeApns
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from chimeway.channels import Apns
from chimeway.errors import ConfigurationError
from chimeway.testing import channel_contract
from chimeway.values import Message, Recipient

TEAM, KEY_ID, TOPIC = "TEAM123456", "KEY9876543", "com.example.shop"


def _pem(key: Any) -> str:
    return str(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode())


@pytest.fixture(scope="module")
def team_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def apns(team_key: ec.EllipticCurvePrivateKey) -> Iterator[FakeApns]:
    with FakeApns(team_key.public_key(), team_id=TEAM, key_id=KEY_ID, topic=TOPIC) as fake:
        yield fake


def build(apns: FakeApns, team_key: Any, **options: Any) -> Apns:
    settings: dict[str, Any] = {"team_id": TEAM, "key_id": KEY_ID, "private_key": _pem(team_key), "topic": TOPIC,
                                "base_url": apns.base_url, "verify": apns.tls.client, "timeout": 5.0}
    return Apns(**(settings | options))


@pytest.fixture
def channel(apns: FakeApns, team_key: Any) -> Iterator[Apns]:
    channel = build(apns, team_key)
    yield channel
    channel.close()


def message(*tokens: str, fields: dict[str, Any] | None = None) -> Message:
    return make_message("apns", fields if fields is not None else {
        "title": "Order 7 shipped", "body": "It is on its way", "badge": "3", "sound": "default",
        "data": '{"order_id": 7, "url": "/o/7"}', "collapse_id": "order-7"},
        recipient=Recipient(id="user:42", push_tokens=tokens or ("a1b2c3d4e5f6",)))


def test_a_push_goes_out_over_http2_in_apnss_format(apns: FakeApns, channel: Apns) -> None:
    sent = message()
    result = channel.send(sent)
    assert (result.outcome, result.provider_message_id) == ("succeeded", str(sent.delivery_id))
    assert apns.problems == []
    [request] = apns.requests
    assert request.path == "/3/device/a1b2c3d4e5f6"
    h = request.headers
    assert (h[":method"], h["apns-topic"], h["apns-push-type"], h["apns-priority"]) == ("POST", TOPIC, "alert", "10")
    assert h["apns-id"] == str(sent.delivery_id), "a retried send carries the same apns-id"
    assert h["apns-collapse-id"] == "order-7"
    assert int(h["apns-expiration"]) > 0
    assert request.json() == {
        "aps": {"alert": {"title": "Order 7 shipped", "body": "It is on its way"}, "badge": 3, "sound": "default"},
        "order_id": 7, "url": "/o/7"}
    assert request.claims["iss"] == TEAM and isinstance(request.claims["iat"], int)


def test_the_signed_token_is_reused_across_threads_then_renewed(apns: FakeApns, channel: Apns) -> None:
    # The first token is signed 50 minutes ago (APNs refuses an iat in the future).
    channel._clock = lambda: time.time() - 50 * 60
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: channel.send(message()).outcome, range(24)))
    assert outcomes == ["succeeded"] * 24
    assert len({r.token for r in apns.requests}) == 1
    assert apns.connections <= 8, "each thread keeps its HTTP/2 connection"
    first = apns.requests[0].token
    channel._clock = time.time                           # now past token_ttl
    assert channel.send(message()).outcome == "succeeded"
    assert channel.send(message()).outcome == "succeeded"
    assert [r.token == first for r in apns.requests[-2:]] == [False, False]
    assert apns.requests[-1].token == apns.requests[-2].token


def test_an_expired_provider_token_is_renewed_once(apns: FakeApns, channel: Apns) -> None:
    channel._clock = lambda: time.time() - 60
    assert channel.send(message()).outcome == "succeeded"
    stale = apns.requests[-1].token
    assert stale is not None
    apns.expired.add(stale)
    channel._clock = time.time                           # a new token needs a new iat
    assert channel.send(message()).outcome == "succeeded"
    refused, accepted = apns.requests[-2:]
    assert (refused.token, accepted.token != stale) == (stale, True)


@pytest.mark.parametrize(("device", "outcome", "reason"), [
    ("bad-token-000001", "bounced", "BadDeviceToken"),
    ("gone-token-00002", "bounced", "Unregistered"),
    ("busy-token-00003", "temporary", "TooManyRequests"),
    ("down-token-00004", "temporary", "ServiceUnavailable"),
    ("oops-token-00005", "temporary", "InternalServerError"),
    ("topic-token-0006", "permanent", "DeviceTokenNotForTopic"),
])
def test_apns_reasons_are_classified(channel: Apns, device: str, outcome: str, reason: str) -> None:
    result = channel.send(message(device))
    assert (result.outcome, result.vendor_code, result.error_class) == (outcome, reason, f"apns_{reason}")
    assert device not in (result.detail or ""), "only the token's tail is shown"
    assert device[-6:] in (result.detail or "")
    if reason == "TooManyRequests":
        assert result.retry_after == 120


def test_a_wrong_key_is_refused_as_permanent(apns: FakeApns, team_key: Any) -> None:
    other = build(apns, ec.generate_private_key(ec.SECP256R1()))
    result = other.send(message())
    assert (result.outcome, result.vendor_code) == ("permanent", "InvalidProviderToken")
    other.close()


def test_several_devices_one_outcome(channel: Apns) -> None:
    partly = channel.send(message("a1b2c3d4e5f6", "gone-token-00002"))
    assert partly.outcome == "succeeded" and "sent to 1 of 2 devices" in (partly.detail or "")
    assert "…-00002" in (partly.detail or "")
    dead = channel.send(message("bad-token-000001", "gone-token-00002"))
    assert dead.outcome == "bounced"
    mixed = channel.send(message("bad-token-000001", "busy-token-00003"))
    assert (mixed.outcome, mixed.retry_after) == ("temporary", 120)


def test_send_async_shares_one_connection(apns: FakeApns, channel: Apns) -> None:
    result = asyncio.run(channel.send_async(message("a1b2c3d4e5f6", "f6e5d4c3b2a1", "gone-token-00002")))
    assert result.outcome == "succeeded"
    assert len(apns.requests) == 3 and len({r.connection for r in apns.requests}) == 1


def test_validate_refuses_what_apns_would(channel: Apns) -> None:
    device = Recipient(id="user:1", push_tokens=("a1b2c3d4e5f6",))
    assert channel.validate({"title": "Hi"}, device) is None
    assert channel.validate({"title": "Hi"}, Recipient(id="user:1")) == "recipient has no push tokens"
    assert "'title' or 'body'" in (channel.validate({"sound": "default"}, device) or "")
    assert "badge" in (channel.validate({"title": "Hi", "badge": "lots"}, device) or "")
    assert "aps" in (channel.validate({"title": "Hi", "data": '{"aps": {}}'}, device) or "")
    assert "4096" in (channel.validate({"title": "Hi", "body": "x" * 5000}, device) or "")


def test_background_pushes_are_content_available(apns: FakeApns, team_key: Any) -> None:
    channel = build(apns, team_key, push_type="background")
    assert channel.validate({"data": '{"sync": true}'}, Recipient(id="u", push_tokens=("a1b2c3d4e5f6",))) is None
    assert channel.send(message(fields={"data": '{"sync": true}'})).outcome == "succeeded"
    request = apns.requests[-1]
    assert (request.headers["apns-push-type"], request.headers["apns-priority"]) == ("background", "5")
    assert request.json() == {"aps": {"content-available": 1}, "sync": True}
    channel.close()


def test_configuration_is_checked_when_built(tmp_path: Path, apns: FakeApns, team_key: Any) -> None:
    p8 = tmp_path / "AuthKey_KEY9876543.p8"
    p8.write_text(_pem(team_key))
    ca = tmp_path / "apns-ca.pem"
    ca.write_text(apns.tls.cert_pem)
    from_file = build(apns, team_key, private_key=p8, verify=str(ca))
    assert from_file.send(message()).outcome == "succeeded"
    from_file.close()
    untrusted = build(apns, team_key, verify=True)          # the system's CAs do not know the test server
    refused = untrusted.send(message())
    assert (refused.outcome, refused.error_class) == ("temporary", "ConnectError")
    untrusted.close()
    with pytest.raises(ConfigurationError, match="P-256"):
        build(apns, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(ConfigurationError, match="PEM"):
        build(apns, team_key, private_key="-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----")
    with pytest.raises(ConfigurationError, match="cannot be read"):
        build(apns, team_key, private_key=tmp_path / "missing.p8")
    with pytest.raises(ConfigurationError, match="team_id"):
        build(apns, team_key, team_id="")
    with pytest.raises(ConfigurationError, match="push_type"):
        build(apns, team_key, push_type="shout")
    with pytest.raises(ConfigurationError, match="token_ttl"):
        build(apns, team_key, token_ttl=timedelta(hours=2))


def test_apns_meets_the_channel_contract(apns: FakeApns, team_key: Any) -> None:
    pem = _pem(team_key)
    report = channel_contract(
        lambda host, port: Apns(team_id=TEAM, key_id=KEY_ID, private_key=pem, topic=TOPIC,
                                base_url=f"https://{host}:{port}", verify=apns.tls.client, timeout=2.0),
        server=("127.0.0.1", apns.port),
        secrets=[pem, pem.splitlines()[1]],
    )
    assert {"validate", "validate_empty", "unreachable", "unreachable_async", "hangup", "server",
            "server_async"} <= set(report.passed)
    assert all(r.token and r.token not in json.dumps(report.results[c].__dict__)
               for r in apns.requests for c in ("server", "server_async"))
