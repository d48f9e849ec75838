"""Async counterparts of the verbs (thin delegations to :mod:`chimeway.aio`)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from chimeway.explain import Explanation, Trace
from chimeway.notifier import Notifier
from chimeway.planning import TriggerResult
from chimeway.verbs.base import AppBase

if TYPE_CHECKING:
    from chimeway.aio import AsyncInbox as _AsyncInbox
    from chimeway.aio import AsyncTarget as _AsyncTarget
    from chimeway.app import Chimeway

__all__ = ["AsyncVerbs"]


class AsyncVerbs(AppBase):
    """Async counterparts of the verbs (thin delegations to :mod:`chimeway.aio`)."""

    @classmethod
    def from_async_engine(cls, engine: Any, **options: Any) -> Chimeway:
        """An app over the database an ``AsyncEngine`` (or async URL) points at.

        Chimeway delivers and explains outside the event loop, so it opens its
        own sync engine on the same database (``sqlite+aiosqlite`` → ``sqlite``,
        ``postgresql+psycopg``/``+asyncpg`` → ``postgresql+psycopg``) and
        closes it on ``close()``.

        Args:
            engine: an ``AsyncEngine``, or an async database URL.
            **options: the other ``Chimeway`` arguments (``channels``, ``dispatcher``, ...).
        """
        from chimeway.aio import sync_url

        app_cls = cast("type[Chimeway]", cls)
        return app_cls(sync_url(engine), **options)

    async def trigger_async(
        self,
        session: _AsyncTarget,
        notifier: type[Notifier],
        params: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str,
        tenant: str | None = None,
        actor: str | None = None,
        correlation_id: str | None = None,
        cancellation_key: str | None = None,
        **options: Any,
    ) -> TriggerResult:
        """:meth:`trigger` inside the caller's ``AsyncSession``/``AsyncConnection`` transaction.

        Same rows, same guarantees: rollback leaves nothing; after the async
        commit the dispatcher delivers without blocking the event loop.

        Args:
            session: the caller's ``AsyncSession`` or ``AsyncConnection``, in a transaction.
            notifier: the ``Notifier`` subclass.
            params: JSON values for ``recipients()`` and templates.
            idempotency_key: unique per tenant; a repeat returns ``duplicate=True``.
            tenant: the tenant, or ``None``.
            actor: who caused it.
            correlation_id: ties it to a request or trace.
            cancellation_key: a key ``cancel`` can find it by later.
            **options: further keyword arguments of :meth:`trigger`.
        """
        from chimeway import aio

        return await aio.trigger(
            cast("Chimeway", self), session, notifier, params, idempotency_key=idempotency_key, tenant=tenant,
            actor=actor, correlation_id=correlation_id, cancellation_key=cancellation_key, **options,
        )

    def inbox_async(
        self, recipient: str, tenant: str | None = None, *, session: _AsyncTarget | None = None
    ) -> _AsyncInbox:
        """:meth:`inbox` with awaitable methods (a ``chimeway.aio.AsyncInbox``).

        Args:
            recipient: the recipient id.
            tenant: the tenant, or ``None``.
            session: run in the caller's ``AsyncSession``/``AsyncConnection``
                transaction instead of Chimeway's own (on a worker thread).
        """
        from chimeway import aio

        return aio.inbox(cast("Chimeway", self), recipient, tenant, session=session)

    async def explain_async(self, delivery_id: uuid.UUID | str) -> Explanation:
        """:meth:`explain` without blocking the event loop.

        Args:
            delivery_id: the delivery.
        """
        from chimeway import aio

        return await aio.explain(cast("Chimeway", self), delivery_id)

    async def trace_async(self, event_id: uuid.UUID | str) -> Trace:
        """:meth:`trace` without blocking the event loop.

        Args:
            event_id: the event.
        """
        from chimeway import aio

        return await aio.trace(cast("Chimeway", self), event_id)

    async def run_worker(self, **options: Any) -> int:
        """Run a job-queue worker on its own thread until this task is cancelled.

        Cancellation stops the worker gracefully (running jobs get
        ``shutdown_grace`` seconds) and is then re-raised.

        Args:
            **options: keyword arguments of ``JobQueue.run_worker`` (``queues``,
                ``poll_interval``, ``shutdown_grace``, ...).

        Returns:
            how many jobs the worker ran.
        """
        from chimeway import aio

        return await aio.run_worker(self.queue, **options)
