"""Teams channel against a local fake of a Workflows HTTP trigger."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from channels_support import FakeTeams, Reply, make_message, refused_url, running

from chimeway.channels.teams import Teams, adaptive_card
from chimeway.errors import ConfigurationError
from chimeway.values import Recipient


@pytest.fixture
def teams() -> Iterator[FakeTeams]:
    yield from running(FakeTeams())


@pytest.fixture
def channel(teams: FakeTeams) -> Iterator[Teams]:
    ch = Teams(teams.webhook_url, timeout=2.0)
    yield ch
    ch.close()


def _no_secret(detail: str | None) -> None:
    assert FakeTeams.sig not in (detail or "")


def test_success_posts_adaptive_card(teams: FakeTeams, channel: Teams) -> None:
    fields = {
        "title": "Order 7 shipped",
        "body": "Track it",
        "url": "https://shop/7",
        "url_title": "Track",
    }
    result = channel.send(make_message("teams", fields))
    assert result.outcome == "succeeded"
    assert result.provider_message_id is None
    assert teams.problems == []
    [request] = teams.requests
    body = request.json()
    assert body["type"] == "message"
    [attachment] = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert [block["text"] for block in card["body"]] == ["Order 7 shipped", "Track it"]
    assert card["body"][0]["weight"] == "Bolder"
    assert card["actions"] == [
        {"type": "Action.OpenUrl", "title": "Track", "url": "https://shop/7"}
    ]


def test_card_without_title_or_url() -> None:
    card = adaptive_card({"body": "only body"})["attachments"][0]["content"]
    assert [b["text"] for b in card["body"]] == ["only body"]
    assert "actions" not in card


def test_schema_mismatch_is_permanent_with_code(teams: FakeTeams, channel: Teams) -> None:
    teams.enqueue(
        Reply(
            400,
            {
                "error": {
                    "code": "TriggerInputSchemaMismatch",
                    "message": "did not match its schema",
                }
            },
        )
    )
    result = channel.send(make_message("teams", {"body": "x"}))
    assert (result.outcome, result.vendor_code) == ("permanent", "TriggerInputSchemaMismatch")
    assert "schema" in (result.detail or "")


def test_bad_signature_is_permanent(teams: FakeTeams) -> None:
    ch = Teams(teams.webhook_url.replace(FakeTeams.sig, "forged"))
    result = ch.send(make_message("teams", {"body": "x"}))
    assert (result.outcome, result.vendor_code) == ("permanent", "DirectApiAuthorizationRequired")
    assert "forged" not in (result.detail or "")
    ch.close()


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_throttled_and_server_errors_are_temporary(
    teams: FakeTeams, channel: Teams, status: int
) -> None:
    teams.enqueue(
        Reply(
            status,
            {"error": {"code": "WorkflowTriggerIsThrottled", "message": "slow"}},
            {"Retry-After": "12"},
        )
    )
    result = channel.send(make_message("teams", {"body": "x"}))
    assert (result.outcome, result.retry_after) == ("temporary", 12.0)


def test_timeout_and_refused_are_temporary(teams: FakeTeams) -> None:
    teams.delay = 1.0
    slow = Teams(teams.webhook_url, timeout=0.2)
    result = slow.send(make_message("teams", {"body": "x"}))
    assert (result.outcome, result.error_class) == ("temporary", "ReadTimeout")
    _no_secret(result.detail)
    refused = Teams(f"{refused_url()}{FakeTeams.flow_path}?sig={FakeTeams.sig}", timeout=1.0)
    result = refused.send(make_message("teams", {"body": "x"}))
    assert (result.outcome, result.error_class) == ("temporary", "ConnectError")
    _no_secret(result.detail)
    slow.close()
    refused.close()


def test_validate(channel: Teams) -> None:
    who = Recipient(id="user:1")
    assert channel.validate({"body": "x"}, who) is None
    assert "body" in (channel.validate({"title": "only title"}, who) or "")


def test_configuration_and_repr() -> None:
    with pytest.raises(ConfigurationError):
        Teams("prod.westus.logic.azure.com/workflows/1")
    assert "sig" not in repr(Teams("https://example.com/workflows/1?sig=abc"))


def test_send_async(teams: FakeTeams, channel: Teams) -> None:
    async def run() -> str:
        result = await channel.send_async(make_message("teams", {"body": "x"}))
        await channel.async_client.aclose()
        return result.outcome

    assert asyncio.run(run()) == "succeeded"
    assert teams.problems == []
