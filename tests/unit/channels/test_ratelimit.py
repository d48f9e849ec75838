"""The token bucket and RateLimited, driven by an injected clock (no wall-clock waits)."""

from __future__ import annotations

import threading

import pytest
from email_support import make_message

from chimeway.channels.base import Channel
from chimeway.channels.ratelimit import RateLimited, TokenBucket
from chimeway.errors import ConfigurationError
from chimeway.values import DeliveryResult, Message


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Counting(Channel):
    name = "counting"

    def __init__(self) -> None:
        self.sent = 0

    def send(self, message: Message) -> DeliveryResult:
        self.sent += 1
        return DeliveryResult.ok()


def test_burst_then_refill() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.reserve().granted for _ in range(3)] == [True, True, True]
    refused = bucket.reserve()
    assert not refused.granted and refused.wait == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.reserve().granted
    clock.now += 100
    assert bucket.available == pytest.approx(3)  # never above burst


def test_reservations_within_max_wait_queue_up() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=4, burst=1, clock=clock)
    assert bucket.reserve(1.0).wait == 0
    waits = [bucket.reserve(1.0) for _ in range(5)]
    assert [w.granted for w in waits] == [True, True, True, True, False]
    assert [w.wait for w in waits] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.25])


def test_default_burst_and_validation() -> None:
    assert TokenBucket(rate=0.5).burst == 1
    assert TokenBucket(rate=20).burst == 20
    with pytest.raises(ConfigurationError):
        TokenBucket(rate=0)
    with pytest.raises(ConfigurationError):
        TokenBucket(rate=1, burst=0.5)


def test_bucket_is_thread_safe() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=1, burst=50, clock=clock)
    granted: list[bool] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(20):
            r = bucket.reserve()
            with lock:
                granted.append(r.granted)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert granted.count(True) == 50


def test_rate_limited_waits_briefly_then_answers_temporary_with_retry_after() -> None:
    clock = Clock()
    inner = Counting()
    channel = RateLimited(inner, rate=2, burst=1, max_wait=0.6, clock=clock, sleep=clock.sleep)
    assert channel.send(make_message()).outcome == "succeeded"
    # The next token is 0.5 s away: within max_wait, so it waits (on the fake clock).
    assert channel.send(make_message()).outcome == "succeeded"
    assert clock.slept == [pytest.approx(0.5)]
    # Two reservations further out than 0.6 s are refused without sleeping.
    clock.slept.clear()
    channel.bucket.reserve(10)
    result = channel.send(make_message())
    assert result.outcome == "temporary"
    assert result.error_class == "rate_limited"
    assert result.retry_after == pytest.approx(1.0)
    assert clock.slept == []
    assert inner.sent == 2
    assert channel.name == "counting"


def test_email_rate_limit_option() -> None:
    from email_support import smtp_server

    from chimeway.channels.email import SMTP, Email

    with smtp_server() as server:
        channel = Email(
            SMTP(server.host, server.port, starttls=False, timeout=5),
            from_="Shop <no-reply@shop.example>",
            rate_limit=0.001,
            rate_burst=1,
        )
        assert channel.send(make_message()).outcome == "succeeded"
        refused = channel.send(make_message())
    assert refused.outcome == "temporary"
    assert refused.retry_after is not None and refused.retry_after > 100
    assert len(server.handler.received) == 1
