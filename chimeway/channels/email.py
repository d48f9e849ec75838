"""The ``Email`` channel: build the message once, send it through providers.

::

    Email(SMTP("smtp.example.com", username="app", password=...), from_="App <no-reply@example.com>")
    Email(providers=[Postmark(token), SMTP(...)], from_="App <no-reply@example.com>")

Fields read from the rendered message: ``subject`` (required), ``text`` (or
``body``), ``html`` and ``unsubscribe_url`` (adds ``List-Unsubscribe`` and
RFC 8058 one-click ``List-Unsubscribe-Post``). See
:mod:`chimeway.channels.email_message` for how the message is built,
:mod:`chimeway.channels.email_smtp` and
:mod:`chimeway.channels.email_providers` for the providers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar

from chimeway.channels.base import Channel
from chimeway.channels.email_message import (
    EmailProvider,
    OutgoingEmail,
    build_email,
    email_problem,
    parse_sender,
    unsendable,
)
from chimeway.channels.email_providers import Postmark, Resend, SendGrid
from chimeway.channels.email_smtp import SMTP
from chimeway.channels.failover import parse_feedback_any, run_route, run_route_async, unique_names
from chimeway.channels.ratelimit import TokenBucket, rate_limited_result
from chimeway.errors import ConfigurationError
from chimeway.values import DeliveryResult, Feedback, Message, Recipient

__all__ = [
    "SMTP",
    "Email",
    "EmailProvider",
    "OutgoingEmail",
    "Postmark",
    "Resend",
    "SendGrid",
]


class Email(Channel):
    """The email channel: builds the message once, sends it through its providers.

    With several providers, a temporary failure of one moves on to the next
    (the same rule as :class:`~chimeway.channels.failover.Failover`); the
    result names the provider that answered and traces every one tried.

    Args:
        provider_or_providers: one provider, or a list tried in order.
        providers: the providers as a keyword (instead of the first argument).
        from_: the ``From`` address, e.g. ``"App <no-reply@example.com>"``.
        reply_to: the ``Reply-To`` address.
        message_id_domain: domain for ``Message-ID``; defaults to ``from_``'s.
        rate_limit: at most this many sends per second in this process.
        rate_burst: sends allowed back to back under ``rate_limit``.
        name: the name this channel is traced under.
    """

    required_fields: ClassVar[tuple[str, ...]] = ("subject",)

    def __init__(
        self,
        provider_or_providers: EmailProvider | Sequence[EmailProvider] | None = None,
        *,
        providers: Sequence[EmailProvider] | None = None,
        from_: str,
        reply_to: str | None = None,
        message_id_domain: str | None = None,
        rate_limit: float | None = None,
        rate_burst: float | None = None,
        name: str = "email",
    ) -> None:
        chosen: list[EmailProvider] = []
        if isinstance(provider_or_providers, EmailProvider):
            chosen.append(provider_or_providers)
        elif provider_or_providers is not None:
            chosen.extend(provider_or_providers)
        chosen.extend(providers or ())
        if not chosen:
            raise ConfigurationError(
                "Email needs a provider: Email(SMTP(...), from_=...) or providers=[...]"
            )
        for provider in chosen:
            if not isinstance(provider, EmailProvider):
                raise ConfigurationError(
                    f"Email providers must be SMTP, Postmark, SendGrid or Resend, got {provider!r}"
                )
        parse_sender(from_)
        self.providers = tuple(chosen)
        self.from_ = from_
        self.reply_to = reply_to
        self.message_id_domain = message_id_domain
        self.name = name
        self._names = unique_names(self.providers)
        self._bucket = TokenBucket(rate_limit, rate_burst) if rate_limit else None

    def build(self, message: Message) -> OutgoingEmail:
        """The email this channel would send for ``message``.

        Args:
            message: the rendered message.
        """
        return build_email(
            message,
            from_=self.from_,
            reply_to=self.reply_to,
            message_id_domain=self.message_id_domain,
        )

    def _gate(self, message: Message) -> DeliveryResult | float:
        """A result that ends the send before any provider call, or seconds to wait first."""
        problem = unsendable(message)
        if problem is not None:
            return problem
        if self._bucket is None:
            return 0.0
        reservation = self._bucket.reserve(1.0)
        if reservation.granted:
            return reservation.wait
        return rate_limited_result(self._bucket, reservation.wait)

    def send(self, message: Message) -> DeliveryResult:
        """Send ``message`` through the first provider that gives a final answer.

        Args:
            message: the rendered message.
        """
        gate = self._gate(message)
        if isinstance(gate, DeliveryResult):
            return gate
        if gate > 0:
            time.sleep(gate)
        outgoing = self.build(message)
        return run_route(
            (name, _bind(provider, outgoing))
            for name, provider in zip(self._names, self.providers, strict=True)
        )

    async def send_async(self, message: Message) -> DeliveryResult:
        """Async variant of :meth:`send`.

        Args:
            message: the rendered message.
        """
        gate = self._gate(message)
        if isinstance(gate, DeliveryResult):
            return gate
        if gate > 0:
            await asyncio.sleep(gate)
        outgoing = self.build(message)
        return await run_route_async(
            (name, _bind_async(provider, outgoing))
            for name, provider in zip(self._names, self.providers, strict=True)
        )

    def validate(self, fields: Mapping[str, Any], recipient: Recipient) -> str | None:
        """Cancel at planning time when there is no address, subject or body.

        Args:
            fields: the rendered fields.
            recipient: the recipient the message is for.
        """
        return email_problem(fields, recipient)

    def parse_feedback(
        self, headers: Mapping[str, str], body: bytes, *, url: str | None = None
    ) -> list[Feedback]:
        """Verify and parse a status webhook from whichever provider sent it.

        Args:
            headers: the request headers (any case).
            body: the raw request body.
            url: the full URL the provider called.
        """
        return parse_feedback_any(self.providers, headers, body, url=url)

    def close(self) -> None:
        """Close every provider's connections."""
        for provider in self.providers:
            provider.close()


def _bind(provider: EmailProvider, outgoing: OutgoingEmail) -> Callable[[], DeliveryResult]:
    return lambda: provider.send_email(outgoing)


def _bind_async(
    provider: EmailProvider, outgoing: OutgoingEmail
) -> Callable[[], Awaitable[DeliveryResult]]:
    return lambda: provider.send_email_async(outgoing)
