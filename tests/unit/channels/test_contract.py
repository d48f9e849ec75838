"""The channel contract helper, run on our own email channels and on broken ones."""

from __future__ import annotations

import httpx
import pytest
from email_support import FakePostmark, FakeResend, FakeSendGrid, smtp_server

from chimeway.channels.base import Channel
from chimeway.channels.email import SMTP, Email, Postmark, Resend, SendGrid
from chimeway.channels.failover import Failover
from chimeway.channels.ratelimit import RateLimited
from chimeway.testing_contract import ContractViolation, channel_contract
from chimeway.values import DeliveryResult, Message

FROM = "Shop <no-reply@shop.example>"


def test_smtp_email_meets_the_contract() -> None:
    with smtp_server(auth=("app", "smtp-pass-1")) as server:
        report = channel_contract(
            lambda host, port: Email(
                SMTP(host, port, username="app", password="smtp-pass-1", starttls=False, timeout=2),
                from_=FROM,
            ),
            server=(server.host, server.port),
            secrets=["smtp-pass-1"],
        )
    assert {
        "validate",
        "validate_empty",
        "unreachable",
        "unreachable_async",
        "hangup",
        "server",
        "server_async",
    } <= set(report.passed)
    assert report.results["server"].outcome == "succeeded"


@pytest.mark.parametrize(
    ("fake_cls", "build"),
    [
        (FakePostmark, lambda secret, url: Postmark(secret, base_url=url, from_=FROM, timeout=2)),
        (FakeSendGrid, lambda secret, url: SendGrid(secret, base_url=url, from_=FROM, timeout=2)),
        (FakeResend, lambda secret, url: Resend(secret, base_url=url, from_=FROM, timeout=2)),
    ],
)
def test_http_providers_meet_the_contract(fake_cls: type, build: object) -> None:
    with fake_cls() as fake:
        secret = getattr(fake, "token", None) or fake.api_key
        report = channel_contract(
            lambda host, port: build(secret, f"http://{host}:{port}"),  # type: ignore[operator]
            server=("127.0.0.1", int(fake.url.rsplit(":", 1)[1])),
            secrets=[secret],
        )
    assert "server" in report.passed and "hangup" in report.passed


def test_wrappers_meet_the_contract() -> None:
    with smtp_server() as server:
        channel_contract(
            lambda host, port: RateLimited(
                Failover([SMTP(host, port, starttls=False, timeout=2, from_=FROM)]), rate=1000
            ),
            server=(server.host, server.port),
        )


class Raising(Channel):
    def __init__(self, url: str) -> None:
        self.url = url

    def send(self, message: Message) -> DeliveryResult:
        httpx.post(self.url, timeout=1)
        return DeliveryResult.ok()


class Leaky(Channel):
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def send(self, message: Message) -> DeliveryResult:
        try:
            httpx.post(self.url, timeout=1)
        except httpx.HTTPError as exc:
            return DeliveryResult.temporary(f"{exc} (token {self.token})")
        return DeliveryResult.ok()

    def __repr__(self) -> str:
        return f"Leaky({self.token})"


class BadValidate(Channel):
    def send(self, message: Message) -> DeliveryResult:
        return DeliveryResult.temporary("down")

    def validate(self, fields: object, recipient: object) -> str | None:  # type: ignore[override]
        return False  # type: ignore[return-value]


def test_contract_reports_a_channel_that_raises() -> None:
    with pytest.raises(ContractViolation, match="unreachable: send raised ConnectError"):
        channel_contract(lambda host, port: Raising(f"http://{host}:{port}/"))


def test_contract_reports_leaked_secrets() -> None:
    with pytest.raises(ContractViolation) as info:
        channel_contract(
            lambda host, port: Leaky(f"http://{host}:{port}/", "tok-123"), secrets=["tok-123"]
        )
    text = str(info.value)
    assert "repr: a configured secret appears" in text
    assert "unreachable: a configured secret appears in the result" in text
    assert "tok-123" not in text


def test_contract_reports_bad_validate_and_wrong_expected_outcome() -> None:
    with pytest.raises(ContractViolation) as info:
        channel_contract(lambda host, port: BadValidate())
    assert "validate: returned bool, not str or None" in str(info.value)
