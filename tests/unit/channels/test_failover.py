"""Failover across providers: a failing Postmark fake, then a real SMTP server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from email_support import FakePostmark, Reply, SMTPServer, make_message, smtp_server

from chimeway.channels.base import Channel
from chimeway.channels.email import SMTP, Email, Postmark
from chimeway.channels.failover import Failover, FailoverResult
from chimeway.errors import ConfigurationError
from chimeway.values import DeliveryResult, Message, Recipient

FROM = "Shop <no-reply@shop.example>"


@pytest.fixture
def postmark() -> Iterator[FakePostmark]:
    with FakePostmark() as fake:
        yield fake  # type: ignore[misc]


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    with smtp_server() as server:
        yield server


def providers(postmark: FakePostmark, smtp: SMTPServer) -> list[Any]:
    return [
        Postmark(postmark.token, base_url=postmark.url),
        SMTP(smtp.host, smtp.port, starttls=False, timeout=5),
    ]


def test_email_fails_over_from_postmark_503_to_smtp(
    postmark: FakePostmark, smtp: SMTPServer
) -> None:
    postmark.script(Reply(503, {"ErrorCode": 100, "Message": "Maintenance"}))
    channel = Email(providers=providers(postmark, smtp), from_=FROM)
    result = channel.send(make_message())
    assert isinstance(result, FailoverResult)
    assert result.outcome == "succeeded"
    assert result.provider == "smtp"
    assert result.detail is not None
    assert result.detail.startswith("postmark: HTTP 503: [100] Maintenance; smtp: ok")
    assert [name for name, _ in result.tried] == ["postmark", "smtp"]
    assert len(smtp.handler.received) == 1
    assert result.provider_message_id == smtp.handler.received[0].parsed()["Message-ID"]


def test_first_provider_success_stops(postmark: FakePostmark, smtp: SMTPServer) -> None:
    result = Email(providers=providers(postmark, smtp), from_=FROM).send(make_message())
    assert (result.outcome, result.provider) == ("succeeded", "postmark")  # type: ignore[attr-defined]
    assert result.detail == "postmark: ok"
    assert smtp.handler.received == []


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (Reply(422, {"ErrorCode": 406, "Message": "Inactive recipient"}), "bounced"),
        (Reply(422, {"ErrorCode": 300, "Message": "Invalid email request"}), "permanent"),
    ],
)
def test_bounced_and_permanent_stop_without_trying_the_next(
    postmark: FakePostmark, smtp: SMTPServer, reply: Reply, outcome: str
) -> None:
    postmark.script(reply)
    result = Email(providers=providers(postmark, smtp), from_=FROM).send(make_message())
    assert result.outcome == outcome
    assert result.provider == "postmark"  # type: ignore[attr-defined]
    assert smtp.handler.received == []


def test_all_temporary_returns_temporary_with_full_trace(postmark: FakePostmark) -> None:
    with smtp_server() as dead:
        port = dead.port
    postmark.script(Reply(429, {"ErrorCode": 429, "Message": "Rate limit"}, {"Retry-After": "20"}))
    channel = Email(
        providers=[
            Postmark(postmark.token, base_url=postmark.url),
            SMTP("127.0.0.1", port, starttls=False, timeout=2),
        ],
        from_=FROM,
    )
    result = channel.send(make_message())
    assert result.outcome == "temporary"
    assert result.provider == "smtp"  # type: ignore[attr-defined]
    assert result.detail is not None
    assert result.detail.startswith(
        "postmark: HTTP 429: [429] Rate limit; smtp: SMTP connect: ConnectionRefusedError"
    )
    # SMTP gave no hint, so the queue's own backoff decides.
    assert result.retry_after is None


def test_failover_channel_over_standalone_providers_sync_and_async(
    postmark: FakePostmark, smtp: SMTPServer
) -> None:
    channel = Failover(
        [
            Postmark(postmark.token, base_url=postmark.url, from_=FROM),
            SMTP(smtp.host, smtp.port, starttls=False, timeout=5, from_=FROM),
        ]
    )
    postmark.script(Reply(500, "boom"), Reply(502, "bad gateway"))
    assert channel.send(make_message()).provider == "smtp"  # type: ignore[attr-defined]
    result = asyncio.run(channel.send_async(make_message()))
    assert (result.outcome, result.provider) == ("succeeded", "smtp")  # type: ignore[attr-defined]
    assert len(smtp.handler.received) == 2
    assert set(channel.providers) == {"postmark", "smtp"}
    channel.close()


class Scripted(Channel):
    """A channel that answers from a list and records what it was asked."""

    def __init__(
        self, name: str, *answers: DeliveryResult | Exception, refuse: str | None = None
    ) -> None:
        self.name = name
        self.answers = list(answers)
        self.calls = 0
        self.refuse = refuse

    def send(self, message: Message) -> DeliveryResult:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def validate(self, fields: Mapping[str, Any], recipient: Recipient) -> str | None:
        return self.refuse


def test_an_exception_counts_as_temporary_and_moves_on() -> None:
    first = Scripted("a", RuntimeError("driver bug"))
    second = Scripted("b", DeliveryResult.ok("id-2"))
    result = Failover([first, second]).send(make_message())
    assert result.outcome == "succeeded"
    assert result.detail == "a: RuntimeError: driver bug; b: ok"


def test_retry_after_is_the_soonest_hint_when_all_gave_one() -> None:
    a = Scripted("a", DeliveryResult.temporary("slow down", retry_after=30))
    b = Scripted("b", DeliveryResult.temporary("slow down", retry_after=5))
    assert Failover([a, b]).send(make_message()).retry_after == 5


def test_channels_that_cannot_send_the_message_are_skipped() -> None:
    sms = Scripted("sms", refuse="recipient has no phone number")
    mail = Scripted("mail", DeliveryResult.ok())
    channel = Failover([sms, mail])
    result = channel.send(make_message())
    assert result.outcome == "succeeded"
    assert sms.calls == 0
    assert result.detail == "sms: skipped (recipient has no phone number); mail: ok"
    assert channel.validate({}, Recipient(id="x")) is None
    assert Failover([sms]).validate({}, Recipient(id="x")) == "sms: recipient has no phone number"


def test_duplicate_names_are_numbered() -> None:
    a = Scripted("smtp", DeliveryResult.temporary("down"))
    b = Scripted("smtp", DeliveryResult.ok())
    result = Failover([a, b]).send(make_message())
    assert result.detail == "smtp: down; smtp#2: ok"


def test_failover_needs_channels() -> None:
    with pytest.raises(ConfigurationError):
        Failover([])
