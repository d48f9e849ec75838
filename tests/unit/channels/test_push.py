"""Push (FCM HTTP v1) against local fakes of Google's token endpoint and FCM."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from channels_support import (
    FakeFcm,
    Reply,
    fcm_error,
    make_message,
    refused_url,
    running,
    service_account,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from chimeway.channels.push import Push
from chimeway.errors import ConfigurationError
from chimeway.values import DeliveryResult, Recipient

PROJECT = "chimeway-test"
TOKENS = ("device-token-aaaaaa1", "device-token-bbbbbb2")


@pytest.fixture
def fcm() -> Iterator[FakeFcm]:
    account, public_key = service_account("placeholder")
    yield from running(FakeFcm(PROJECT, account["client_email"], public_key))


@pytest.fixture
def account(fcm: FakeFcm) -> dict[str, Any]:
    acct, _ = service_account(fcm.token_url)
    return acct


@pytest.fixture
def channel(fcm: FakeFcm, account: dict[str, Any]) -> Iterator[Push]:
    ch = Push(account, base_url=fcm.base_url, timeout=2.0)
    yield ch
    ch.close()


def _message(fields: dict[str, Any] | None = None, tokens: tuple[str, ...] = TOKENS[:1]) -> Any:
    return make_message(
        "push",
        fields
        if fields is not None
        else {"title": "Order 7", "body": "Shipped", "data": '{"order_id": 7, "url": "/o/7"}'},
        recipient=Recipient(id="user:42", push_tokens=tokens),
    )


def _no_secrets(result: DeliveryResult, account: dict[str, Any]) -> None:
    detail = result.detail or ""
    assert "PRIVATE KEY" not in detail and "ya29." not in detail
    assert account["private_key"][40:80] not in detail
    for token in TOKENS:
        assert token not in detail


def test_success_signs_assertion_and_sends(fcm: FakeFcm, channel: Push) -> None:
    message = _message()
    result = channel.send(message)
    assert result.outcome == "succeeded"
    assert result.provider_message_id is not None
    assert result.provider_message_id.startswith(f"projects/{PROJECT}/messages/0:")
    assert fcm.problems == []
    token_request, send_request = fcm.requests
    assert token_request.path == "/token"
    assert token_request.form()["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert send_request.path == f"/v1/projects/{PROJECT}/messages:send"
    assert send_request.headers["authorization"].startswith("Bearer ya29.")
    assert send_request.json() == {
        "message": {
            "token": TOKENS[0],
            "notification": {"title": "Order 7", "body": "Shipped"},
            "data": {
                "order_id": "7",
                "url": "/o/7",
                "chimeway_delivery_id": str(message.delivery_id),
            },
        }
    }


def test_access_token_is_cached_and_shared_by_threads(fcm: FakeFcm, channel: Push) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(lambda _: channel.send(_message()).outcome, range(30)))
    assert outcomes == ["succeeded"] * 30
    assert fcm.token_requests == 1


def test_token_refreshed_shortly_before_expiry(fcm: FakeFcm, channel: Push) -> None:
    fcm.expires_in = 1
    assert channel.send(_message()).outcome == "succeeded"
    assert channel.send(_message()).outcome == "succeeded"
    assert fcm.token_requests == 1
    time.sleep(0.6)  # past expires_in minus the refresh margin
    assert channel.send(_message()).outcome == "succeeded"
    assert fcm.token_requests == 2


def test_401_refreshes_token_once(fcm: FakeFcm, channel: Push) -> None:
    assert channel.send(_message()).outcome == "succeeded"
    fcm.revoke_tokens()
    assert channel.send(_message()).outcome == "succeeded"
    assert fcm.token_requests == 2
    unauthenticated = fcm_error(
        401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", None
    )
    fcm.enqueue(unauthenticated, unauthenticated)
    result = channel.send(_message())
    assert (result.outcome, result.error_class) == ("permanent", "http_401")
    assert fcm.token_requests == 3


def test_unregistered_token_is_permanent_and_says_so(
    fcm: FakeFcm, channel: Push, account: dict[str, Any]
) -> None:
    fcm.unregistered.add(TOKENS[0])
    result = channel.send(_message())
    assert (result.outcome, result.vendor_code, result.error_class) == (
        "permanent",
        "UNREGISTERED",
        "fcm_unregistered",
    )
    assert "no longer registered" in (result.detail or "")
    assert "aaaaa1" in (result.detail or "")
    _no_secrets(result, account)


def test_invalid_argument_is_permanent(fcm: FakeFcm, channel: Push) -> None:
    fcm.enqueue(
        fcm_error(
            400, "INVALID_ARGUMENT", "Request contains an invalid argument.", "INVALID_ARGUMENT"
        )
    )
    result = channel.send(_message())
    assert (result.outcome, result.vendor_code) == ("permanent", "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    ("http", "status", "code"),
    [
        (503, "UNAVAILABLE", "UNAVAILABLE"),
        (500, "INTERNAL", "INTERNAL"),
        (429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
    ],
)
def test_temporary_errors_honour_retry_after(
    fcm: FakeFcm, channel: Push, http: int, status: str, code: str
) -> None:
    fcm.enqueue(fcm_error(http, status, "try later", code, {"Retry-After": "17"}))
    result = channel.send(_message())
    assert (result.outcome, result.vendor_code, result.retry_after) == ("temporary", code, 17.0)


def test_partial_fan_out_succeeds_and_names_the_dead_token(
    fcm: FakeFcm, channel: Push, account: dict[str, Any]
) -> None:
    fcm.unregistered.add(TOKENS[1])
    result = channel.send(_message(tokens=TOKENS))
    assert result.outcome == "succeeded"
    assert "sent to 1 of 2 devices" in (result.detail or "")
    assert "bbbbb2 is no longer registered" in (result.detail or "")
    _no_secrets(result, account)


def test_fan_out_all_failed(fcm: FakeFcm, channel: Push) -> None:
    fcm.enqueue(
        fcm_error(503, "UNAVAILABLE", "down", "UNAVAILABLE", {"Retry-After": "3"}),
        fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"),
    )
    result = channel.send(_message(tokens=TOKENS))
    assert (result.outcome, result.retry_after) == ("temporary", 3.0)
    fcm.unregistered.update(TOKENS)
    assert channel.send(_message(tokens=TOKENS)).outcome == "permanent"


def test_wrong_key_is_refused_by_token_endpoint(fcm: FakeFcm, account: dict[str, Any]) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    ch = Push({**account, "private_key": pem.decode()}, base_url=fcm.base_url)
    result = ch.send(_message())
    assert (result.outcome, result.vendor_code, result.error_class) == (
        "permanent",
        "invalid_grant",
        "oauth_invalid_grant",
    )
    assert "Invalid JWT Signature" in (result.detail or "")
    assert "PRIVATE KEY" not in (result.detail or "")
    ch.close()


def test_token_endpoint_outage_is_temporary(fcm: FakeFcm, channel: Push) -> None:
    fcm.token_replies.append(Reply(503, {"error": "internal_failure"}, {"Retry-After": "4"}))
    result = channel.send(_message())
    assert (result.outcome, result.retry_after) == ("temporary", 4.0)
    assert channel.send(_message()).outcome == "succeeded"


def test_timeout_and_refused_are_temporary(fcm: FakeFcm, account: dict[str, Any]) -> None:
    fcm.delay = 1.0
    slow = Push(account, base_url=fcm.base_url, timeout=0.2)
    result = slow.send(_message())
    assert (result.outcome, result.error_class) == ("temporary", "ReadTimeout")
    refused = Push(account, base_url=fcm.base_url, token_url=refused_url() + "/token", timeout=1.0)
    result = refused.send(_message())
    assert (result.outcome, result.error_class) == ("temporary", "ConnectError")
    _no_secrets(result, account)
    slow.close()
    refused.close()


def test_validate(channel: Push) -> None:
    with_tokens = Recipient(id="u", push_tokens=TOKENS)
    assert channel.validate({"title": "t"}, with_tokens) is None
    assert channel.validate({"title": "t"}, Recipient(id="u")) == "recipient has no push tokens"
    assert channel.validate({}, with_tokens) is not None
    assert "data" in (channel.validate({"body": "b", "data": "[1, 2]"}, with_tokens) or "")
    assert "data" in (channel.validate({"body": "b", "data": "{nope"}, with_tokens) or "")
    assert "reserves: from, google.c.a" in (
        channel.validate(
            {"body": "b", "data": {"from": "x", "google.c.a": "1", "ok": "y"}}, with_tokens
        )
        or ""
    )


def test_service_account_from_path(tmp_path: Path, fcm: FakeFcm, account: dict[str, Any]) -> None:
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(account))
    ch = Push(str(path), project_id=PROJECT, base_url=fcm.base_url)
    assert ch.send(_message()).outcome == "succeeded"
    assert "PRIVATE" not in repr(ch)
    ch.close()


def test_configuration_errors(tmp_path: Path, account: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="private_key"):
        Push({k: v for k, v in account.items() if k != "private_key"})
    with pytest.raises(ConfigurationError, match="PEM"):
        Push({**account, "private_key": "not a key"})
    with pytest.raises(ConfigurationError, match="project_id"):
        Push({k: v for k, v in account.items() if k != "project_id"})
    with pytest.raises(ConfigurationError):
        Push(tmp_path / "missing.json")


def test_send_async(fcm: FakeFcm, channel: Push) -> None:
    async def run() -> DeliveryResult:
        result = await channel.send_async(_message(tokens=TOKENS))
        fcm.revoke_tokens()
        again = await channel.send_async(_message())
        await channel.async_client.aclose()
        assert again.outcome == "succeeded"
        return result

    result = asyncio.run(run())
    assert result.outcome == "succeeded"
    assert fcm.problems == []
    assert fcm.token_requests == 2
