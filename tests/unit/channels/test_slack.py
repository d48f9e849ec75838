"""Slack channel against a local fake of incoming webhooks and chat.postMessage."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
from channels_support import FakeSlack, Reply, make_message, refused_url, running

from chimeway.channels.slack import Slack
from chimeway.errors import ConfigurationError
from chimeway.values import Recipient

BLOCKS = json.dumps([{"type": "section", "text": {"type": "mrkdwn", "text": "*Order 7* shipped"}}])


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    yield from running(FakeSlack())


@pytest.fixture
def hook(slack: FakeSlack) -> Iterator[Slack]:
    channel = Slack(webhook_url=slack.webhook_url, timeout=2.0)
    yield channel
    channel.close()


@pytest.fixture
def bot(slack: FakeSlack) -> Iterator[Slack]:
    channel = Slack(token=FakeSlack.token, channel="C0123", base_url=slack.api_url, timeout=2.0)
    yield channel
    channel.close()


def _no_secrets(detail: str | None) -> None:
    assert FakeSlack.token not in (detail or "")
    assert "hooksecret" not in (detail or "")


# -- incoming webhook ----------------------------------------------------------


def test_webhook_success(slack: FakeSlack, hook: Slack) -> None:
    result = hook.send(make_message("slack", {"text": "Order 7 shipped", "blocks": BLOCKS}))
    assert result.outcome == "succeeded"
    assert slack.problems == []
    [request] = slack.requests
    assert request.path == FakeSlack.hook_path
    assert request.json() == {"text": "Order 7 shipped", "blocks": json.loads(BLOCKS)}


@pytest.mark.parametrize(
    ("reply", "outcome", "code"),
    [
        (Reply(400, "invalid_payload"), "permanent", "invalid_payload"),
        (Reply(403, "action_prohibited"), "permanent", "action_prohibited"),
        (Reply(404, "no_service"), "permanent", "no_service"),
        (Reply(410, "channel_is_archived"), "permanent", "channel_is_archived"),
        (Reply(500, "rollup_error"), "temporary", "rollup_error"),
    ],
)
def test_webhook_errors(
    slack: FakeSlack, hook: Slack, reply: Reply, outcome: str, code: str
) -> None:
    slack.enqueue(reply)
    result = hook.send(make_message("slack", {"text": "x"}))
    assert (result.outcome, result.vendor_code) == (outcome, code)
    assert code in (result.detail or "")
    _no_secrets(result.detail)


def test_webhook_rate_limited_honours_retry_after(slack: FakeSlack, hook: Slack) -> None:
    slack.enqueue(Reply(429, "Too Many Requests", {"Retry-After": "30"}))
    result = hook.send(make_message("slack", {"text": "x"}))
    assert result.outcome == "temporary"
    assert result.retry_after == 30.0
    assert result.error_class == "http_429"


def test_webhook_unknown_hook_is_no_service(slack: FakeSlack) -> None:
    channel = Slack(webhook_url=slack.base_url + "/services/T0001/B0001/revoked")
    result = channel.send(make_message("slack", {"text": "x"}))
    assert (result.outcome, result.vendor_code) == ("permanent", "no_service")
    assert "revoked" not in (result.detail or "")
    channel.close()


def test_webhook_html_error_page_is_not_a_vendor_code(slack: FakeSlack, hook: Slack) -> None:
    slack.enqueue(Reply(502, "<html><body>Bad gateway</body></html>"))
    result = hook.send(make_message("slack", {"text": "x"}))
    assert result.outcome == "temporary"
    assert result.vendor_code is None


# -- chat.postMessage ----------------------------------------------------------


def test_bot_success_records_ts(slack: FakeSlack, bot: Slack) -> None:
    result = bot.send(make_message("slack", {"text": "Order 7 shipped", "blocks": BLOCKS}))
    assert result.outcome == "succeeded"
    assert result.provider_message_id == "1503435956.000001"
    assert slack.problems == []
    [request] = slack.requests
    assert request.path == "/api/chat.postMessage"
    assert request.headers["authorization"] == f"Bearer {FakeSlack.token}"
    assert request.headers["content-type"].startswith("application/json")
    assert request.json() == {
        "channel": "C0123",
        "text": "Order 7 shipped",
        "blocks": json.loads(BLOCKS),
    }


def test_bot_channel_from_fields_or_recipient(slack: FakeSlack) -> None:
    channel = Slack(token=FakeSlack.token, base_url=slack.api_url)
    recipient = Recipient(id="user:1", data={"slack_channel": "U999"})
    assert (
        channel.send(make_message("slack", {"text": "a"}, recipient=recipient)).outcome
        == "succeeded"
    )
    assert (
        channel.send(
            make_message("slack", {"text": "b", "channel": "C777"}, recipient=recipient)
        ).outcome
        == "succeeded"
    )
    assert [r.json()["channel"] for r in slack.requests] == ["U999", "C777"]
    assert channel.validate({"text": "x"}, Recipient(id="user:2")) is not None
    channel.close()


@pytest.mark.parametrize(
    "error", ["ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable"]
)
def test_bot_temporary_errors(slack: FakeSlack, bot: Slack, error: str) -> None:
    slack.enqueue(Reply(200, {"ok": False, "error": error}))
    result = bot.send(make_message("slack", {"text": "x"}))
    assert (result.outcome, result.vendor_code, result.error_class) == (
        "temporary",
        error,
        f"slack_{error}",
    )


@pytest.mark.parametrize(
    "error",
    [
        "invalid_auth",
        "not_authed",
        "channel_not_found",
        "is_archived",
        "account_inactive",
        "msg_too_long",
    ],
)
def test_bot_permanent_errors(slack: FakeSlack, bot: Slack, error: str) -> None:
    slack.enqueue(Reply(200, {"ok": False, "error": error}))
    result = bot.send(make_message("slack", {"text": "x"}))
    assert (result.outcome, result.vendor_code) == ("permanent", error)
    _no_secrets(result.detail)


def test_bot_wrong_token_is_invalid_auth(slack: FakeSlack) -> None:
    channel = Slack(token="xoxb-wrong", channel="C1", base_url=slack.api_url)
    result = channel.send(make_message("slack", {"text": "x"}))
    assert (result.outcome, result.vendor_code) == ("permanent", "invalid_auth")
    assert "xoxb" not in (result.detail or "")
    channel.close()


def test_bot_http_429_with_retry_after(slack: FakeSlack, bot: Slack) -> None:
    slack.enqueue(Reply(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "7"}))
    result = bot.send(make_message("slack", {"text": "x"}))
    assert (result.outcome, result.retry_after, result.vendor_code) == (
        "temporary",
        7.0,
        "ratelimited",
    )


def test_bot_5xx_is_temporary(slack: FakeSlack, bot: Slack) -> None:
    slack.enqueue(Reply(503, "<html>down</html>"))
    assert bot.send(make_message("slack", {"text": "x"})).outcome == "temporary"


# -- transport, validation, async ----------------------------------------------


def test_timeout_is_temporary(slack: FakeSlack) -> None:
    slack.delay = 1.0
    channel = Slack(token=FakeSlack.token, channel="C1", base_url=slack.api_url, timeout=0.2)
    result = channel.send(make_message("slack", {"text": "x"}))
    assert (result.outcome, result.error_class) == ("temporary", "ReadTimeout")
    _no_secrets(result.detail)
    channel.close()


def test_connection_refused_is_temporary() -> None:
    url = refused_url() + "/services/T0001/B0001/hooksecretXYZ123"
    channel = Slack(webhook_url=url, timeout=1.0)
    result = channel.send(make_message("slack", {"text": "x"}))
    assert (result.outcome, result.error_class) == ("temporary", "ConnectError")
    _no_secrets(result.detail)
    channel.close()


def test_validate(hook: Slack) -> None:
    who = Recipient(id="user:1")
    assert hook.validate({"text": "hello"}, who) is None
    assert hook.validate({"blocks": BLOCKS}, who) is None
    assert hook.validate({"text": "hello", "blocks": json.dumps({"blocks": []})}, who) is None
    assert "text" in (hook.validate({}, who) or "")
    assert "blocks" in (hook.validate({"text": "x", "blocks": "[{not json"}, who) or "")
    assert "blocks" in (hook.validate({"text": "x", "blocks": '"just a string"'}, who) or "")


def test_invalid_blocks_at_send_time_are_permanent(slack: FakeSlack, hook: Slack) -> None:
    result = hook.send(make_message("slack", {"text": "x", "blocks": "{oops"}))
    assert (result.outcome, result.error_class) == ("permanent", "invalid_blocks")
    assert slack.requests == []


def test_configuration() -> None:
    with pytest.raises(ConfigurationError):
        Slack()
    with pytest.raises(ConfigurationError):
        Slack(webhook_url="https://hooks.slack.com/services/x", token="xoxb-1")
    assert "xoxb" not in repr(Slack(token="xoxb-secret", channel="C1"))
    assert "hooks" not in repr(Slack(webhook_url="https://hooks.slack.com/services/x"))


def test_send_async(slack: FakeSlack, bot: Slack) -> None:
    async def run() -> list[str | None]:
        results = await asyncio.gather(
            *(bot.send_async(make_message("slack", {"text": str(i)})) for i in range(4))
        )
        await bot.async_client.aclose()
        return [r.provider_message_id for r in results]

    ids = asyncio.run(run())
    assert len(set(ids)) == 4 and all(ids)
    assert slack.problems == []


def test_send_async_timeout(slack: FakeSlack) -> None:
    slack.delay = 1.0
    channel = Slack(webhook_url=slack.webhook_url, timeout=0.2)

    async def run() -> str:
        started = time.monotonic()
        result = await channel.send_async(make_message("slack", {"text": "x"}))
        assert time.monotonic() - started < 0.9
        await channel.async_client.aclose()
        return result.outcome

    assert asyncio.run(run()) == "temporary"
