"""Per-process rate limiting for channels: a thread-safe token bucket.

``RateLimited(channel, rate=10)`` lets at most ``rate`` sends per second
through (with bursts of up to ``burst``). A send that cannot get a token
within ``max_wait`` seconds is not attempted: it comes back as a temporary
result whose ``retry_after`` says when a token will be free, so a worker
never sleeps unboundedly inside ``send`` and the queue reschedules it.

The limit is per process (each worker has its own bucket); divide a
provider's account-wide limit by the number of worker processes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from chimeway.channels.base import Channel
from chimeway.errors import ConfigurationError
from chimeway.values import DeliveryResult, Feedback, Message, Recipient

__all__ = ["RateLimited", "Reservation", "TokenBucket", "rate_limited_result"]


@dataclass(frozen=True)
class Reservation:
    """The answer of :meth:`TokenBucket.reserve`.

    Args:
        granted: ``True`` when a token is reserved for the caller.
        wait: when granted, seconds to wait before using the token; when
            refused, seconds until a token will be free.
    """

    granted: bool
    wait: float


class TokenBucket:
    """A token bucket refilled continuously at ``rate`` tokens per second.

    Reservations may take a token that will only exist in the near future
    (the bucket goes below zero); the caller waits out ``wait`` without
    holding the lock, so concurrent callers queue up fairly in time.

    Args:
        rate: tokens added per second (must be > 0).
        burst: bucket capacity; defaults to ``max(1, rate)``.
        clock: monotonic clock in seconds (inject a fake one in tests).
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ConfigurationError(f"rate must be > 0 tokens per second, got {rate!r}")
        capacity = max(1.0, float(rate)) if burst is None else float(burst)
        if capacity < 1:
            raise ConfigurationError(f"burst must be >= 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = capacity
        self._clock = clock
        self._tokens = capacity
        self._updated = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._updated = now

    def reserve(self, max_wait: float = 0.0) -> Reservation:
        """Take a token now or within ``max_wait`` seconds, or say when one will be free.

        Args:
            max_wait: the longest the caller is willing to wait for a token.
        """
        with self._lock:
            self._refill()
            wait = 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate
            if wait <= max_wait:
                self._tokens -= 1
                return Reservation(True, wait)
            return Reservation(False, wait)

    @property
    def available(self) -> float:
        """Tokens available right now (negative while reservations are pending)."""
        with self._lock:
            self._refill()
            return self._tokens


def rate_limited_result(bucket: TokenBucket, wait: float) -> DeliveryResult:
    """The temporary result for a send refused by ``bucket``.

    Args:
        bucket: the bucket that had no token.
        wait: seconds until it will have one.
    """
    return DeliveryResult.temporary(
        f"rate limit of {bucket.rate:g}/s reached; next send slot in {wait:.2f}s",
        error_class="rate_limited",
        retry_after=wait,
    )


class RateLimited(Channel):
    """Wrap a channel so it sends at most ``rate`` messages per second in this process.

    Args:
        channel: the channel to limit.
        rate: sends per second.
        burst: how many sends may go out back to back; defaults to ``max(1, rate)``.
        max_wait: the longest ``send`` waits for a token before answering
            temporary with ``retry_after``.
        clock: monotonic clock (tests inject a fake one).
        sleep: how to wait for a reserved token (tests inject a fake one).
    """

    def __init__(
        self,
        channel: Channel,
        rate: float,
        burst: float | None = None,
        *,
        max_wait: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.channel = channel
        self.bucket = TokenBucket(rate, burst, clock=clock)
        self.max_wait = max_wait
        self._sleep = sleep
        self.name = getattr(channel, "name", None) or type(channel).__name__.lower()
        self.required_fields = channel.required_fields  # type: ignore[misc]
        self.inbox = channel.inbox  # type: ignore[misc]

    def send(self, message: Message) -> DeliveryResult:
        """Send when a token is free within ``max_wait``; otherwise answer temporary.

        Args:
            message: the rendered message.
        """
        reservation = self.bucket.reserve(self.max_wait)
        if not reservation.granted:
            return rate_limited_result(self.bucket, reservation.wait)
        if reservation.wait > 0:
            self._sleep(reservation.wait)
        return self.channel.send(message)

    async def send_async(self, message: Message) -> DeliveryResult:
        """Async variant of :meth:`send`; waits with ``asyncio.sleep``.

        Args:
            message: the rendered message.
        """
        reservation = self.bucket.reserve(self.max_wait)
        if not reservation.granted:
            return rate_limited_result(self.bucket, reservation.wait)
        if reservation.wait > 0:
            await asyncio.sleep(reservation.wait)
        return await self.channel.send_async(message)

    def validate(self, fields: Mapping[str, Any], recipient: Recipient) -> str | None:
        """Delegate to the wrapped channel.

        Args:
            fields: the rendered fields.
            recipient: the recipient the message is for.
        """
        return self.channel.validate(fields, recipient)

    def parse_feedback(
        self, headers: Mapping[str, str], body: bytes, *, url: str | None = None
    ) -> list[Feedback]:
        """Delegate to the wrapped channel (feedback is not rate limited).

        Args:
            headers: the request headers.
            body: the raw request body.
            url: the full URL the provider called.
        """
        return self.channel.parse_feedback(headers, body, url=url)

    def close(self) -> None:
        """Close the wrapped channel."""
        self.channel.close()
