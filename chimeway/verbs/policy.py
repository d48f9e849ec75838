"""Preferences, recipient settings, unsubscribe links, digests and previews."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from chimeway.clock import utc
from chimeway.db import own_tables, tenant_key, writer
from chimeway.digest import flush_due
from chimeway.dispatch.base import Due
from chimeway.errors import ConfigurationError
from chimeway.notifier import Notifier
from chimeway.planning import plan
from chimeway.policy import Cap, PreviewItem, preview
from chimeway.preferences import Preferences, RecipientSettingsHandle, write_preference
from chimeway.unsubscribe import UnsubscribeRequest, build_url, sign_token, verify_token
from chimeway.verbs.base import AppBase

__all__ = ["PolicyVerbs"]


class PolicyVerbs(AppBase):
    """Preferences, recipient settings, unsubscribe links, digests and previews."""

    def configure_policy(
        self,
        *,
        secret: str | bytes | None = None,
        unsubscribe_base_url: str | None = None,
        caps: Iterable[Cap] | None = None,
        quiet_hours_exempt: Iterable[str] | None = None,
        token_ttl: timedelta | None = None,
    ) -> None:
        """Configure the delivery policy; arguments left out keep their value.

        Args:
            secret: HMAC-SHA256 key for unsubscribe tokens (at least 16 characters).
            unsubscribe_base_url: when set, email deliveries get an
                ``unsubscribe_url`` field (``List-Unsubscribe`` headers).
            caps: app-wide ``Cap`` limits per recipient × channel.
            quiet_hours_exempt: channels quiet hours never hold (default ``{"in_app"}``).
            token_ttl: how long unsubscribe links work (default one year).
        """

        if secret is not None:
            self.secret = secret
        if unsubscribe_base_url is not None:
            build_url(unsubscribe_base_url, "check")
            self.policy.unsubscribe_base_url = unsubscribe_base_url
        if caps is not None:
            listed = list(caps)
            if not all(isinstance(c, Cap) for c in listed):
                raise ConfigurationError("caps must be chimeway.policy.Cap values")
            self.policy.caps = listed
        if quiet_hours_exempt is not None:
            self.policy.quiet_hours_exempt = set(quiet_hours_exempt)
        if token_ttl is not None:
            if not isinstance(token_ttl, timedelta) or token_ttl <= timedelta(0):
                raise ConfigurationError("token_ttl must be a positive timedelta")
            self.policy.token_ttl = token_ttl

    @property
    def secret(self) -> str | bytes | None:
        """The key that signs unsubscribe tokens."""
        return self.policy.secret

    @secret.setter
    def secret(self, value: str | bytes | None) -> None:
        if value is not None and (not isinstance(value, (str, bytes)) or len(value) < 16):
            raise ConfigurationError("secret must be a str or bytes of at least 16 characters")
        self.policy.secret = value

    def preferences(
        self, recipient: str, tenant: str | None = None, *, session: Session | Connection | None = None
    ) -> Preferences:
        """One recipient's channel preferences: ``.set(...)``, ``.get()``, ``.effective(Notifier)``.

        Args:
            recipient: the recipient id.
            tenant: the tenant, or ``None``.
            session: write in the caller's transaction instead of Chimeway's own.
        """

        return Preferences(engine=self.engine, clock=self.clock, recipient=recipient, tenant=tenant,
                           session=session, channels=self.channels)

    def recipient_settings(
        self, recipient: str, tenant: str | None = None, *, session: Session | Connection | None = None
    ) -> RecipientSettingsHandle:
        """One recipient's time zone and quiet hours: ``.set(timezone=..., quiet_hours=(...))``.

        Args:
            recipient: the recipient id.
            tenant: the tenant, or ``None``.
            session: write in the caller's transaction instead of Chimeway's own.
        """

        return RecipientSettingsHandle(engine=self.engine, clock=self.clock, recipient=recipient,
                                       tenant=tenant, session=session)

    def unsubscribe_url(
        self,
        recipient: str,
        tenant: str | None = None,
        *,
        notifier: str | type[Notifier] | None = None,
        category: str | None = None,
        channel: str | None = None,
        base_url: str | None = None,
    ) -> str:
        """A signed link that opts the recipient out (see :meth:`unsubscribe`).

        Args:
            recipient: the recipient id.
            tenant: the tenant, or ``None``.
            notifier: limit to one notifier (class or key).
            category: limit to one category.
            channel: the channel; ``None`` means every channel.
            base_url: the page that calls :meth:`unsubscribe` (default: the configured one).
        """

        url = base_url or self.policy.unsubscribe_base_url
        if not url:
            raise ConfigurationError("pass base_url or configure_policy(unsubscribe_base_url=...)")
        token = sign_token(self.secret, recipient=recipient, tenant=tenant, notifier=notifier,
                           category=category, channel=channel, now=self.clock.now(), ttl=self.policy.token_ttl)
        return build_url(url, token)

    def unsubscribe(self, token: str, *, session: Session | Connection | None = None) -> UnsubscribeRequest:
        """Verify an unsubscribe token and store the opt-out it carries.

        Args:
            token: the ``token`` query parameter of the link.
            session: write in the caller's transaction instead of Chimeway's own.

        Raises:
            SignatureError: the token was tampered with, signed with another secret, or expired.
        """

        now = self.clock.now()
        request = verify_token(self.secret, token, now=now)
        values = dict(tenant=tenant_key(request.tenant), recipient_id=request.recipient, scope=request.scope,
                      scope_key=request.scope_key, channel=request.channel)
        if session is not None:
            with own_tables(session, self.engine) as conn:
                write_preference(conn, **values, enabled=False, source="unsubscribe", now=now)
        else:
            with writer(self.engine).begin() as conn:
                write_preference(conn, **values, enabled=False, source="unsubscribe", now=now)
        return request

    def flush_digests(self, *, limit: int = 1000) -> int:
        """Render every digest whose window has ended and hand it to the dispatcher.

        Call it from a periodic sweep (with :meth:`recover`) or a cron job.

        Args:
            limit: at most this many digests per call.

        Returns:
            how many digests were handed to the dispatcher.
        """

        with writer(self.engine).begin() as conn:
            ids = flush_due(conn, self.clock.now(), self.policy.decorate_fields, limit=limit)
        if ids:
            self.dispatcher.redrive([Due(i) for i in ids])
        return len(ids)

    def preview(
        self,
        session: Session | Connection,
        notifier: type[Notifier],
        params: Mapping[str, Any] | None = None,
        *,
        at: Any = None,
        tenant: str | None = None,
    ) -> list[PreviewItem]:
        """What a trigger would do, per recipient × channel, writing and sending nothing.

        Args:
            session: a ``Session`` or ``Connection`` to read preferences and usage through.
            notifier: the ``Notifier`` subclass.
            params: the params a trigger would get.
            at: the moment to simulate (an aware ``datetime``; default: now).
            tenant: the tenant, or ``None``.
        """

        when = utc(at) if at is not None else self.clock.now()
        the_plan = plan(notifier, params if params is not None else {}, idempotency_key="preview", tenant=tenant,
                        actor=None, correlation_id=None, cancellation_key=None, channels=self.channels, now=when)
        with own_tables(session, self.engine) as conn:
            return preview(self.policy, conn, the_plan)
