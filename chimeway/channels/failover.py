"""Failover: try providers in order until one gives a final answer.

A temporary outcome (timeout, 5xx, rate limit) moves on to the next
provider; ``succeeded``, ``permanent`` and ``bounced`` stop, because a
second provider would either duplicate a sent message or hit the same bad
address. Every provider tried is traced in the result's ``detail``::

    postmark: HTTP 503: upstream down; smtp: ok

The same :class:`Route` decides for :class:`Failover` and for
``Email(providers=[...])``, sync and async alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chimeway.channels.base import Channel
from chimeway.errors import ConfigurationError, SignatureError
from chimeway.values import DeliveryResult, Feedback, Message, Recipient

__all__ = [
    "Failover",
    "FailoverResult",
    "Route",
    "channel_name",
    "parse_feedback_any",
    "run_route",
    "run_route_async",
    "unique_names",
]


@dataclass(frozen=True, kw_only=True)
class FailoverResult(DeliveryResult):
    """A :class:`~chimeway.values.DeliveryResult` that also says who answered.

    Args:
        provider: the name of the provider whose answer this is.
        tried: every provider tried, in order, with its own result.
    """

    provider: str | None = None
    tried: tuple[tuple[str, DeliveryResult], ...] = ()


def channel_name(channel: Channel) -> str:
    """The name a channel is traced under: its ``name`` attribute or its class name."""
    name = getattr(channel, "name", None)
    return name if isinstance(name, str) and name else type(channel).__name__.lower()


def unique_names(channels: Sequence[Channel]) -> list[str]:
    """Trace names for ``channels``, numbered when two share a name."""
    names: list[str] = []
    for channel in channels:
        base = channel_name(channel)
        name, n = base, 2
        while name in names:
            name, n = f"{base}#{n}", n + 1
        names.append(name)
    return names


def _describe(result: DeliveryResult) -> str:
    if result.outcome == "succeeded":
        return f"ok ({result.detail})" if result.detail else "ok"
    label = result.detail or result.error_class or result.outcome
    return label if result.outcome == "temporary" else f"{result.outcome}: {label}"


class Route:
    """The failover rule, fed one provider result at a time.

    ``record`` returns ``True`` when the route should stop; ``result`` builds
    the final answer from everything recorded.
    """

    def __init__(self) -> None:
        self.tried: list[tuple[str, DeliveryResult]] = []
        self._skipped: list[str] = []

    def skip(self, name: str, reason: str) -> None:
        """Note a provider that cannot send this message at all."""
        self._skipped.append(f"{name}: skipped ({reason})")

    def record(self, name: str, result: DeliveryResult) -> bool:
        """Add one provider's result; ``True`` means stop trying."""
        self.tried.append((name, result))
        return result.outcome != "temporary"

    def record_exception(self, name: str, exc: BaseException) -> bool:
        """A provider that raised is treated like one that timed out."""
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return self.record(name, DeliveryResult.temporary(text, error_class=type(exc).__name__))

    def result(self) -> FailoverResult:
        """The final answer: the last provider's result, with the whole trace."""
        trace = "; ".join(
            self._skipped + [f"{name}: {_describe(result)}" for name, result in self.tried]
        )
        if not self.tried:
            return FailoverResult(
                outcome="permanent",
                detail=trace or "no provider configured",
                error_class="no_provider",
            )
        name, last = self.tried[-1]
        retry_after = last.retry_after
        if last.outcome == "temporary":
            # Every provider failed for now: retry when the soonest one said it
            # would be ready, unless one gave no hint (then the normal backoff applies).
            hints = [r.retry_after for _, r in self.tried]
            retry_after = (
                None if any(h is None for h in hints) else min(h for h in hints if h is not None)
            )
        return FailoverResult(
            outcome=last.outcome,
            detail=trace,
            error_class=last.error_class,
            vendor_code=last.vendor_code,
            provider_message_id=last.provider_message_id,
            retry_after=retry_after,
            provider=name,
            tried=tuple(self.tried),
        )


def run_route(
    steps: Iterable[tuple[str, Callable[[], DeliveryResult]]],
    route: Route | None = None,
) -> FailoverResult:
    """Call each step in order until one gives a final answer.

    Args:
        steps: ``(provider name, zero-argument send)`` pairs.
        route: a route that already noted skipped providers, if any.
    """
    route = route or Route()
    for name, send in steps:
        try:
            stop = route.record(name, send())
        except Exception as exc:
            stop = route.record_exception(name, exc)
        if stop:
            break
    return route.result()


async def run_route_async(
    steps: Iterable[tuple[str, Callable[[], Awaitable[DeliveryResult]]]],
    route: Route | None = None,
) -> FailoverResult:
    """Async twin of :func:`run_route`, driven by the same :class:`Route`.

    Args:
        steps: ``(provider name, zero-argument coroutine function)`` pairs.
        route: a route that already noted skipped providers, if any.
    """
    route = route or Route()
    for name, send in steps:
        try:
            stop = route.record(name, await send())
        except Exception as exc:
            stop = route.record_exception(name, exc)
        if stop:
            break
    return route.result()


class Failover(Channel):
    """Send through the first channel that gives a final answer.

    ``Failover([Postmark(...), SMTP(...)])`` tries Postmark, and only on a
    temporary failure SMTP. The result names the provider that answered
    (``result.provider``) and traces every one tried in ``result.detail``.

    Args:
        channels: the channels to try, in order.
        name: the name this channel is traced under when it is nested in
            another failover (default ``"failover"``).
    """

    def __init__(self, channels: Sequence[Channel], name: str | None = None) -> None:
        if not channels:
            raise ConfigurationError("Failover needs at least one channel in 'channels'")
        self.channels = tuple(channels)
        self.name = name or "failover"
        self._names = unique_names(self.channels)

    @property
    def providers(self) -> Mapping[str, Channel]:
        """The channels by their traced names."""
        return dict(zip(self._names, self.channels, strict=True))

    def _usable(self, message: Message, route: Route) -> list[tuple[str, Channel]]:
        usable = []
        for name, channel in zip(self._names, self.channels, strict=True):
            reason = channel.validate(message.fields, message.recipient)
            if reason is None:
                usable.append((name, channel))
            else:
                route.skip(name, reason)
        return usable

    def send(self, message: Message) -> DeliveryResult:
        """Send ``message`` through the first channel that gives a final answer.

        Args:
            message: the rendered message.
        """
        route = Route()
        usable = self._usable(message, route)
        return run_route(((name, _bind(channel.send, message)) for name, channel in usable), route)

    async def send_async(self, message: Message) -> DeliveryResult:
        """Async variant of :meth:`send`, awaiting each channel's ``send_async``.

        Args:
            message: the rendered message.
        """
        route = Route()
        usable = self._usable(message, route)
        return await run_route_async(
            ((name, _bind_async(channel.send_async, message)) for name, channel in usable), route
        )

    def validate(self, fields: Mapping[str, Any], recipient: Recipient) -> str | None:
        """A message is unsendable only when every channel refuses it.

        Args:
            fields: the rendered fields.
            recipient: the recipient the message is for.
        """
        reasons = []
        for name, channel in zip(self._names, self.channels, strict=True):
            reason = channel.validate(fields, recipient)
            if reason is None:
                return None
            reasons.append(f"{name}: {reason}")
        return "; ".join(reasons)

    def parse_feedback(
        self, headers: Mapping[str, str], body: bytes, *, url: str | None = None
    ) -> list[Feedback]:
        """Hand a provider webhook to whichever configured provider can verify it.

        Raises :class:`~chimeway.errors.SignatureError` when no provider
        that accepts feedback verifies the request.

        Args:
            headers: the request headers (any case).
            body: the raw request body, exactly as received.
            url: the full URL the provider called.
        """
        return parse_feedback_any(self.channels, headers, body, url=url)

    def close(self) -> None:
        """Close every channel."""
        for channel in self.channels:
            channel.close()


def parse_feedback_any(
    channels: Iterable[Channel],
    headers: Mapping[str, str],
    body: bytes,
    *,
    url: str | None = None,
) -> list[Feedback]:
    """Try each channel's ``parse_feedback``; the first that verifies wins.

    Args:
        channels: candidate channels.
        headers: the request headers.
        body: the raw request body.
        url: the full URL the provider called.
    """
    refusals: list[str] = []
    for channel in channels:
        try:
            return channel.parse_feedback(headers, body, url=url)
        except ConfigurationError:
            continue
        except SignatureError as exc:
            refusals.append(f"{channel_name(channel)}: {exc}")
    if not refusals:
        raise ConfigurationError("no provider in this channel is configured to accept feedback")
    raise SignatureError("no provider verified this request (" + "; ".join(refusals) + ")")


def _bind(
    send: Callable[[Message], DeliveryResult], message: Message
) -> Callable[[], DeliveryResult]:
    return lambda: send(message)


def _bind_async(
    send: Callable[[Message], Awaitable[DeliveryResult]], message: Message
) -> Callable[[], Awaitable[DeliveryResult]]:
    return lambda: send(message)
