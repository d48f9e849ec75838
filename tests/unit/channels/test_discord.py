"""Discord channel against a local fake of the webhook execute endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from channels_support import (
    FakeDiscord,
    Reply,
    discord_rate_limited,
    make_message,
    refused_url,
    running,
)

from chimeway.channels.discord import Discord
from chimeway.errors import ConfigurationError
from chimeway.values import Recipient


@pytest.fixture
def discord() -> Iterator[FakeDiscord]:
    yield from running(FakeDiscord())


@pytest.fixture
def channel(discord: FakeDiscord) -> Iterator[Discord]:
    ch = Discord(discord.webhook_url, username="Shop", timeout=2.0)
    yield ch
    ch.close()


def _no_secret(detail: str | None) -> None:
    assert FakeDiscord.webhook_token not in (detail or "")


def test_success_records_message_id(discord: FakeDiscord, channel: Discord) -> None:
    result = channel.send(make_message("discord", {"text": "Order 7 shipped @everyone"}))
    assert result.outcome == "succeeded"
    assert result.provider_message_id == "1100000000000000000"
    assert discord.problems == []
    [request] = discord.requests
    assert request.query == {"wait": ["true"]}
    assert request.json() == {
        "content": "Order 7 shipped @everyone",
        "allowed_mentions": {"parse": []},
        "username": "Shop",
    }


def test_body_field_is_used_when_no_text(discord: FakeDiscord, channel: Discord) -> None:
    assert channel.send(make_message("discord", {"body": "from body"})).outcome == "succeeded"
    assert discord.requests[0].json()["content"] == "from body"


def test_rate_limit_uses_body_retry_after(discord: FakeDiscord, channel: Discord) -> None:
    discord.enqueue(discord_rate_limited(1.25))
    result = channel.send(make_message("discord", {"text": "x"}))
    assert result.outcome == "temporary"
    assert result.retry_after == 1.25
    assert result.error_class == "http_429"


def test_rate_limit_falls_back_to_header(discord: FakeDiscord, channel: Discord) -> None:
    discord.enqueue(
        Reply(429, {"message": "You are being rate limited.", "global": True}, {"Retry-After": "3"})
    )
    assert channel.send(make_message("discord", {"text": "x"})).retry_after == 3.0


def test_unknown_webhook_and_bad_token_are_permanent(discord: FakeDiscord) -> None:
    gone = Discord(f"{discord.base_url}/api/webhooks/999/{FakeDiscord.webhook_token}")
    result = gone.send(make_message("discord", {"text": "x"}))
    assert (result.outcome, result.vendor_code) == ("permanent", "10015")
    assert "Unknown Webhook" in (result.detail or "")
    _no_secret(result.detail)
    bad = Discord(f"{discord.base_url}/api/webhooks/{FakeDiscord.webhook_id}/wrong-token")
    result = bad.send(make_message("discord", {"text": "x"}))
    assert (result.outcome, result.vendor_code, result.error_class) == (
        "permanent",
        "50027",
        "http_401",
    )
    gone.close()
    bad.close()


def test_5xx_is_temporary(discord: FakeDiscord, channel: Discord) -> None:
    discord.enqueue(Reply(502, "<html>bad gateway</html>", {"Retry-After": "2"}))
    result = channel.send(make_message("discord", {"text": "x"}))
    assert (result.outcome, result.retry_after) == ("temporary", 2.0)


def test_timeout_and_refused_are_temporary(discord: FakeDiscord) -> None:
    discord.delay = 1.0
    slow = Discord(discord.webhook_url, timeout=0.2)
    result = slow.send(make_message("discord", {"text": "x"}))
    assert (result.outcome, result.error_class) == ("temporary", "ReadTimeout")
    _no_secret(result.detail)
    refused = Discord(f"{refused_url()}/api/webhooks/1/{FakeDiscord.webhook_token}", timeout=1.0)
    result = refused.send(make_message("discord", {"text": "x"}))
    assert (result.outcome, result.error_class) == ("temporary", "ConnectError")
    _no_secret(result.detail)
    slow.close()
    refused.close()


def test_validate(channel: Discord) -> None:
    who = Recipient(id="user:1")
    assert channel.validate({"text": "hi"}, who) is None
    assert channel.validate({"text": "  "}, who) is not None
    assert "2000" in (channel.validate({"text": "x" * 2001}, who) or "")


def test_configuration_and_repr() -> None:
    with pytest.raises(ConfigurationError):
        Discord("discord.com/api/webhooks/1/2")
    assert "secret" not in repr(Discord("https://discord.com/api/webhooks/1/secret"))


def test_send_async(discord: FakeDiscord, channel: Discord) -> None:
    async def run() -> str | None:
        result = await channel.send_async(make_message("discord", {"text": "x"}))
        await channel.async_client.aclose()
        return result.provider_message_id

    assert asyncio.run(run()) == "1100000000000000000"
    assert discord.problems == []
