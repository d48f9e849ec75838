"""``Chimeway``: configuration plus the user-facing verbs."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from chimeway.channels.base import Channel
from chimeway.channels.in_app import InApp
from chimeway.clock import Clock, SystemClock
from chimeway.db import DEFAULT_DATABASE_URL, connection_of, create_engine
from chimeway.dispatch.base import Dispatcher, Due
from chimeway.dispatch.executor import Executor
from chimeway.dispatch.queue import QueueDispatcher
from chimeway.dispatch.sync import SyncDispatcher
from chimeway.errors import ConfigurationError, InvalidInputError
from chimeway.explain import Explanation, Trace, explain, trace
from chimeway.feedback import FeedbackOutcome
from chimeway.inbox import Inbox
from chimeway.notifier import Notifier
from chimeway.planning import (
    PlanningCheck,
    PlanningPrepare,
    TriggerRequest,
    TriggerResult,
    plan,
    write_plans,
)
from chimeway.queue import JobHandle, JobQueue

__all__ = ["Chimeway"]


class Chimeway:
    """A Chimeway application: one database, its channels and a dispatcher.

    Args:
        database_url: where Chimeway's tables live (default: ``sqlite:///chimeway.db``).
            Must be the database the caller's sessions write to.
        engine: an existing SQLAlchemy ``Engine`` to use instead of ``database_url``.
        dispatcher: ``"sync"`` (deliver in-process after commit), ``"queue"``
            (through the job queue), or a ``Dispatcher`` instance.
        channels: channel name → ``Channel``. ``"in_app"`` is added if missing.
        clock: time source (``chimeway.testing.FakeClock`` in tests).
        max_attempts: attempts per delivery before a temporary failure is final.
        notify: on PostgreSQL, wake workers with ``LISTEN/NOTIFY``; ``False``
            polls only (e.g. behind PgBouncer in transaction mode).
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        engine: Engine | None = None,
        dispatcher: str | Dispatcher = "sync",
        channels: Mapping[str, Channel] | None = None,
        clock: Clock | None = None,
        max_attempts: int = 5,
        notify: bool = True,
    ) -> None:
        if engine is not None and database_url is not None:
            raise ConfigurationError("pass database_url or engine, not both")
        self._owns_engine = engine is None
        self.engine: Engine = engine if engine is not None else create_engine(database_url or DEFAULT_DATABASE_URL)
        self.clock: Clock = clock or SystemClock()
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        self.max_attempts = max_attempts
        configured = dict(channels or {})
        for name, channel in configured.items():
            if not isinstance(channel, Channel):
                raise ConfigurationError(
                    f"channels[{name!r}] is a {type(channel).__name__}, not a chimeway Channel"
                )
        configured.setdefault("in_app", InApp())
        self.channels: dict[str, Channel] = configured
        self.executor = Executor(
            engine=self.engine, channels=self.channels, clock=self.clock, max_attempts=max_attempts
        )
        # Policy and other layers append here; both run on every path.
        self.planning_checks: list[PlanningCheck] = []
        self.planning_prepares: list[PlanningPrepare] = []
        from chimeway.policy import Policy

        self.policy = Policy(clock=self.clock, channels=self.channels)
        self.planning_checks.append(self.policy.planning_check)
        self.planning_prepares.append(self.policy.prepare)
        self.executor.before_send.append(self.policy.before_send_batch)
        # The job queue exists with either dispatcher: user jobs, cron and
        # workflow timers run on it even when deliveries are sync.
        self.queue = JobQueue(self.engine, clock=self.clock, notify=notify)
        self.dispatcher: Dispatcher = self._make_dispatcher(dispatcher)
        # Workflows last: their planning check must see the plan other checks left.
        from chimeway.workflow import Workflows

        self.workflows = Workflows(engine=self.engine, clock=self.clock, channels=self.channels,
                                   queue=self.queue, dispatcher=lambda: self.dispatcher)
        self.planning_checks.append(self.workflows.planning_check)
        self.executor.on_final = self._chain_final(self.executor.on_final, self.workflows.on_final)
        from chimeway.cron import ScheduledNotifiers, Scheduler, workflow_sweep_schedule
        from chimeway.record_triggers import RecordTriggers

        self.scheduler = Scheduler(self.queue, self.clock)
        self.scheduled_notifiers = ScheduledNotifiers(self.scheduler, self.trigger)
        self.record_triggers = RecordTriggers(self.queue, self.scheduler, self.trigger, self.clock,
                                              trigger_many=self.trigger_many)
        # The workflow sweep is the safety net behind each wait's own timer job.
        self.scheduler.add(workflow_sweep_schedule())

    def _make_dispatcher(self, dispatcher: str | Dispatcher) -> Dispatcher:
        if dispatcher == "sync":
            return SyncDispatcher(self.executor)
        if dispatcher == "queue":
            return QueueDispatcher(self.executor, self.queue, max_attempts=self.max_attempts)
        if isinstance(dispatcher, str):
            raise ConfigurationError(f"dispatcher must be 'sync', 'queue' or a Dispatcher, got {dispatcher!r}")
        return dispatcher

    # -- schema -----------------------------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade Chimeway's tables (Alembic, revision ``head``)."""
        from chimeway.migrations import upgrade

        upgrade(self.engine)

    # -- triggering -------------------------------------------------------------

    def trigger(
        self,
        session: Session | Connection,
        notifier: type[Notifier],
        params: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str,
        tenant: str | None = None,
        actor: str | None = None,
        correlation_id: str | None = None,
        cancellation_key: str | None = None,
    ) -> TriggerResult:
        """Plan a notification inside the caller's transaction.

        Writes the event, one notification per recipient and one delivery per
        notification × channel through ``session``; never commits it. Rollback
        leaves nothing behind; after commit the dispatcher delivers.

        Args:
            session: the caller's ``Session`` or ``Connection``, in a transaction.
            notifier: the ``Notifier`` subclass.
            params: JSON values for ``recipients()`` and templates.
            idempotency_key: unique per tenant; a repeat returns ``duplicate=True``.
            tenant: the tenant, or ``None``.
            actor: who caused it.
            correlation_id: ties it to a request or trace.
            cancellation_key: a key ``cancel`` can find it by later.

        Raises:
            ChimewayError: a subclass naming the bad field, before anything is written.
        """
        request = TriggerRequest(
            params=params if params is not None else {}, idempotency_key=idempotency_key, tenant=tenant,
            actor=actor, correlation_id=correlation_id, cancellation_key=cancellation_key,
        )
        return self.trigger_many(session, notifier, [request])[0]

    def trigger_many(
        self,
        session: Session | Connection,
        notifier: type[Notifier],
        requests: Sequence[TriggerRequest],
    ) -> list[TriggerResult]:
        """Plan many triggers of one notifier in the caller's transaction, in one pass.

        The same rows and guarantees as calling :meth:`trigger` for each
        request, written with one statement per table; a bad request raises
        before anything is written. Use it for bulk work (imports, record
        scans, fan-out).

        Args:
            session: the caller's ``Session`` or ``Connection``, in a transaction.
            notifier: the ``Notifier`` subclass.
            requests: one ``TriggerRequest`` per trigger.

        Returns:
            One result per request, in order (``duplicate`` where the key was used).
        """
        now = self.clock.now()
        plans = [
            plan(
                notifier,
                request.params,
                idempotency_key=request.idempotency_key,
                tenant=request.tenant,
                actor=request.actor,
                correlation_id=request.correlation_id,
                cancellation_key=request.cancellation_key,
                channels=self.channels,
                now=now,
            )
            for request in requests
        ]
        conn = connection_of(session)
        results = write_plans(conn, plans, self.planning_checks, self.planning_prepares)
        due = [
            Due(d.id, d.not_before)
            for the_plan, result in zip(plans, results, strict=True) if not result.duplicate
            for d in the_plan.deliveries if d.status in ("pending", "deferred")
        ]
        if due:
            self.dispatcher.planned(session, conn, due)
        return results

    # -- reading ----------------------------------------------------------------

    def inbox(
        self, recipient: str, tenant: str | None = None, *, session: Session | Connection | None = None
    ) -> Inbox:
        """The in-app inbox of one recipient in one tenant.

        Args:
            recipient: the recipient id.
            tenant: the tenant, or ``None``.
            session: run transitions in the caller's transaction instead of Chimeway's own.
        """
        return Inbox(engine=self.engine, clock=self.clock, recipient=recipient, tenant=tenant, session=session,
                     on_transition=self.workflows.signals.inbox_signal)

    def explain(self, delivery_id: uuid.UUID | str) -> Explanation:
        """Why a delivery has its status: ``.status``, ``.reason``, ``.timeline``."""
        with self.engine.connect() as conn:
            return explain(conn, delivery_id)

    def trace(self, event_id: uuid.UUID | str) -> Trace:
        """An event's notifications and every delivery's explanation."""
        with self.engine.connect() as conn:
            return trace(conn, event_id)

    # -- operating --------------------------------------------------------------

    def recover(self, older_than: timedelta = timedelta(minutes=5), *, limit: int = 1000) -> int:
        """Re-drive deliveries left behind: ``pending`` after a crash, ``failed`` and due.

        Digests whose window has ended are flushed first, so their deliveries
        go out in the same call.

        Args:
            older_than: how old a ``pending``/``dispatched`` row must be to count as left behind.
            limit: at most this many per call.

        Returns:
            how many deliveries were attempted.
        """
        if not isinstance(older_than, timedelta) or older_than < timedelta(0):
            raise InvalidInputError("older_than must be a non-negative timedelta")
        self.flush_digests(limit=limit)
        ids = self.executor.recoverable(older_than=older_than, limit=limit)
        return self.dispatcher.redrive(ids) if ids else 0

    def job(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        queue: str = "default",
        max_attempts: int = 20,
        priority: int = 0,
        unique: Any = None,
        name: str | None = None,
    ) -> Any:
        """Declare a background job (decorator); ``fn.enqueue(session, **args)`` runs it.

        Args:
            fn: the job function, called with the job's JSON args as keywords.
            queue: the queue it runs on (declared if new).
            max_attempts: attempts before the job is discarded.
            priority: lower runs first.
            unique: ``True``, a tuple of arg names, or a function of the args
                giving a unique key: at most one active job per key.
            name: stable worker name (default: module and qualified name).
        """
        if queue not in self.queue.queues:
            self.queue.declare_queue(queue)

        def decorate(func: Callable[..., Any]) -> JobHandle:
            return self.queue.register(func, name=name, queue=queue, max_attempts=max_attempts,
                                       priority=priority, unique=unique)

        return decorate(fn) if fn is not None else decorate

    def work(self, until_empty: bool = True, queues: Iterable[str] | None = None) -> int:
        """Run due jobs in this thread (scripts and tests); returns how many ran.

        Args:
            until_empty: keep going until no job is due at the clock's time.
            queues: only these queues (default: all declared).
        """
        return self.queue.work(until_empty=until_empty, queues=queues)

    def ingest_feedback(
        self, channel: str, headers: Mapping[str, str], body: bytes, url: str | None = None
    ) -> list[FeedbackOutcome]:
        """Apply a provider's status webhook (delivered, bounced, failed) to its delivery.

        The channel verifies the request's signature first; a request that is
        not authentic raises ``SignatureError`` and changes nothing. Reports are
        deduplicated by the provider's event id. Each applied report records a
        ``delivery.<status>`` signal when workflows are available.

        Args:
            channel: the configured channel name the provider reports on.
            headers: the request headers.
            body: the raw request body, exactly as received.
            url: the full URL the provider called (some providers sign it).
        """
        from chimeway.feedback import ingest

        track = getattr(self, "track", None)

        def on_signal(conn: Connection, name: str, payload: Mapping[str, Any]) -> None:
            if track is not None:
                track(conn, name, actor=payload["actor"], tenant=payload["tenant"],
                      payload=dict(payload), notification_id=payload["notification_id"])

        return ingest(engine=self.engine, clock=self.clock, channels=self.channels, channel_name=channel,
                      headers=headers, body=body, url=url, on_signal=on_signal)

    def close(self) -> None:
        """Close channels' connection pools and, if Chimeway created it, the engine."""
        for channel in self.channels.values():
            channel.close()
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> Chimeway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- async --
    # Thin delegations to ``chimeway.aio``. Class-level names for the annotations
    # below; only type checkers import them, as chimeway.aio needs greenlet.
    from typing import TYPE_CHECKING as _TYPE_CHECKING

    if _TYPE_CHECKING:
        from chimeway.aio import AsyncInbox as _AsyncInbox
        from chimeway.aio import AsyncTarget as _AsyncTarget

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

        return cls(sync_url(engine), **options)

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
            self, session, notifier, params, idempotency_key=idempotency_key, tenant=tenant,
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

        return aio.inbox(self, recipient, tenant, session=session)

    async def explain_async(self, delivery_id: uuid.UUID | str) -> Explanation:
        """:meth:`explain` without blocking the event loop.

        Args:
            delivery_id: the delivery.
        """
        from chimeway import aio

        return await aio.explain(self, delivery_id)

    async def trace_async(self, event_id: uuid.UUID | str) -> Trace:
        """:meth:`trace` without blocking the event loop.

        Args:
            event_id: the event.
        """
        from chimeway import aio

        return await aio.trace(self, event_id)

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

    # -- preferences and policy --
    # Class-level names for the annotations below.
    from chimeway.policy import Cap as _Cap
    from chimeway.policy import PreviewItem as _PreviewItem
    from chimeway.preferences import Preferences as _Preferences
    from chimeway.preferences import RecipientSettingsHandle as _RecipientSettingsHandle
    from chimeway.unsubscribe import UnsubscribeRequest as _UnsubscribeRequest

    def configure_policy(
        self,
        *,
        secret: str | bytes | None = None,
        unsubscribe_base_url: str | None = None,
        caps: Iterable[_Cap] | None = None,
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
        from chimeway.policy import Cap
        from chimeway.unsubscribe import build_url

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
    ) -> _Preferences:
        """One recipient's channel preferences: ``.set(...)``, ``.get()``, ``.effective(Notifier)``.

        Args:
            recipient: the recipient id.
            tenant: the tenant, or ``None``.
            session: write in the caller's transaction instead of Chimeway's own.
        """
        from chimeway.preferences import Preferences

        return Preferences(engine=self.engine, clock=self.clock, recipient=recipient, tenant=tenant,
                           session=session, channels=self.channels)

    def recipient_settings(
        self, recipient: str, tenant: str | None = None, *, session: Session | Connection | None = None
    ) -> _RecipientSettingsHandle:
        """One recipient's time zone and quiet hours: ``.set(timezone=..., quiet_hours=(...))``.

        Args:
            recipient: the recipient id.
            tenant: the tenant, or ``None``.
            session: write in the caller's transaction instead of Chimeway's own.
        """
        from chimeway.preferences import RecipientSettingsHandle

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
        from chimeway.unsubscribe import build_url, sign_token

        url = base_url or self.policy.unsubscribe_base_url
        if not url:
            raise ConfigurationError("pass base_url or configure_policy(unsubscribe_base_url=...)")
        token = sign_token(self.secret, recipient=recipient, tenant=tenant, notifier=notifier,
                           category=category, channel=channel, now=self.clock.now(), ttl=self.policy.token_ttl)
        return build_url(url, token)

    def unsubscribe(self, token: str, *, session: Session | Connection | None = None) -> _UnsubscribeRequest:
        """Verify an unsubscribe token and store the opt-out it carries.

        Args:
            token: the ``token`` query parameter of the link.
            session: write in the caller's transaction instead of Chimeway's own.

        Raises:
            SignatureError: the token was tampered with, signed with another secret, or expired.
        """
        from chimeway.db import writer
        from chimeway.planning import tenant_key
        from chimeway.preferences import write_preference
        from chimeway.unsubscribe import verify_token

        now = self.clock.now()
        request = verify_token(self.secret, token, now=now)
        values = dict(tenant=tenant_key(request.tenant), recipient_id=request.recipient, scope=request.scope,
                      scope_key=request.scope_key, channel=request.channel)
        if session is not None:
            write_preference(connection_of(session), **values, enabled=False, source="unsubscribe", now=now)
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
        from chimeway.db import writer
        from chimeway.digest import flush_due

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
    ) -> list[_PreviewItem]:
        """What a trigger would do, per recipient × channel, writing and sending nothing.

        Args:
            session: a ``Session`` or ``Connection`` to read preferences and usage through.
            notifier: the ``Notifier`` subclass.
            params: the params a trigger would get.
            at: the moment to simulate (an aware ``datetime``; default: now).
            tenant: the tenant, or ``None``.
        """
        from chimeway.clock import utc
        from chimeway.policy import preview

        when = utc(at) if at is not None else self.clock.now()
        the_plan = plan(notifier, params if params is not None else {}, idempotency_key="preview", tenant=tenant,
                        actor=None, correlation_id=None, cancellation_key=None, channels=self.channels, now=when)
        return preview(self.policy, connection_of(session), the_plan)

    # -- workflows and signals --
    # Class-level names for the annotations below.
    from chimeway.workflow.explain import RunExplanation as _RunExplanation

    def track(
        self,
        session: Session | Connection,
        name: str,
        *,
        actor: str,
        tenant: str | None = None,
        payload: Mapping[str, Any] | None = None,
        notification_id: uuid.UUID | str | None = None,
    ) -> uuid.UUID:
        """Record a signal in the caller's transaction; runs waiting for it react once it commits.

        With the queue dispatcher a ``SignalRouterWorker`` job is enqueued in
        the same transaction; otherwise the signal is routed after the commit.

        Args:
            session: the caller's ``Session`` or ``Connection``, in a transaction.
            name: the signal name, e.g. ``"notification.read"``.
            actor: who did it; matched against the runs' recipient ids.
            tenant: the tenant, or ``None``.
            payload: JSON details (redacted like params).
            notification_id: only the run of this notification.

        Returns:
            the signal's id.
        """
        return self.workflows.signals.track(session, name, actor=actor, tenant=tenant, payload=payload,
                                            notification_id=notification_id)

    async def track_async(self, session: Any, name: str, **kwargs: Any) -> uuid.UUID:
        """:meth:`track` inside the caller's ``AsyncSession``/``AsyncConnection`` transaction.

        Args:
            session: the caller's ``AsyncSession`` or ``AsyncConnection``.
            name: the signal name.
            **kwargs: the keyword arguments of :meth:`track`.
        """
        from chimeway import aio

        result: uuid.UUID = await aio.track(self, session, name, **kwargs)
        return result

    def progress_due(self, *, limit: int = 500, stale_after: timedelta = timedelta(seconds=60)) -> int:
        """Advance every workflow run that is due (the ``ProgressionWorker`` sweep).

        Schedule it periodically (e.g. every minute) as a safety net: runs also
        advance on their own when a wait's job runs, a delivery becomes final
        or a signal arrives.

        Args:
            limit: runs per transaction.
            stale_after: how long an ``active`` run with final deliveries, or an
                unrouted signal, may sit before the sweep takes it over.

        Returns:
            how many runs advanced.
        """
        return self.workflows.progress_due(limit=limit, stale_after=stale_after)

    def progress_run(self, run_id: uuid.UUID | str, *, step: int | None = None) -> bool:
        """Advance one run if its wait is due or its step is done; racing callers advance it once.

        Args:
            run_id: the run.
            step: only if the run is still at this step.

        Returns:
            whether this call advanced the run.
        """
        return self.workflows.progress(run_id, step=step)

    def cancel_run(
        self,
        run_id: uuid.UUID | str | None = None,
        *,
        notification_id: uuid.UUID | str | None = None,
        cancellation_key: str | None = None,
        tenant: str | None = None,
    ) -> int:
        """Cancel workflow runs that are still active or waiting, and their unsent deliveries.

        Args:
            run_id: one run.
            notification_id: the run of one notification.
            cancellation_key: every run of events triggered with this ``cancellation_key``.
            tenant: with ``cancellation_key``, only this tenant.

        Returns:
            how many runs were cancelled.
        """
        return self.workflows.cancel(run_id=run_id, notification_id=notification_id,
                                     cancellation_key=cancellation_key, tenant=tenant)

    def explain_run(
        self, run_id: uuid.UUID | str | None = None, *, notification_id: uuid.UUID | str | None = None
    ) -> _RunExplanation:
        """A workflow run's steps and transitions: why it waited, what stopped it, where it branched.

        Args:
            run_id: the run.
            notification_id: explain the run of this notification instead.
        """
        from chimeway.workflow.explain import explain_run

        with self.engine.connect() as conn:
            return explain_run(conn, run_id, notification_id=notification_id)


    @staticmethod
    def _chain_final(
        first: Callable[..., None] | None, second: Callable[..., None]
    ) -> Callable[..., None]:
        # Another layer may already listen for final deliveries: call both.
        if first is None:
            return second

        def both(outcomes: Any) -> None:
            first(outcomes)
            second(outcomes)

        return both

    # -- scheduling --
    # Cron schedules, scheduled notifiers and record triggers (``chimeway.cron``,
    # ``chimeway.record_triggers``). Every worker runs the scheduler about once
    # a second; ``run_scheduler`` does the same on demand (tests, scripts).

    from chimeway.cron import CronSchedule as _CronSchedule
    from chimeway.cron import FiredTick as _FiredTick
    from chimeway.record_triggers import RecordTrigger as _RecordTrigger
    from chimeway.record_triggers import ScanResult as _ScanResult

    def cron(
        self,
        schedule: str,
        target: Any,
        *,
        args: Mapping[str, Any] | None = None,
        timezone: str = "UTC",
        name: str | None = None,
        catch_up: timedelta | None = None,
        queue: str | None = None,
    ) -> _CronSchedule:
        """Run a job (or trigger a notifier) on a cron schedule, once per tick across all workers.

        Args:
            schedule: five fields (``"*/5 * * * *"``), six with seconds last,
                or an alias (``@hourly``, ``@daily``, ``@weekly``, ``@monthly``, ``@yearly``).
            target: a job handle from :meth:`job`, a plain function (registered
                as a job), a worker name registered elsewhere, or a
                ``Notifier`` subclass (as :meth:`schedule`).
            args: the job's JSON args. A job function with a ``tick``
                parameter also gets the tick's ISO time as ``tick``.
            timezone: IANA zone the fields are read in; a wall-clock time
                skipped by DST does not fire, a repeated one fires once.
            name: unique, stable schedule name (default: from the target).
            catch_up: fire every tick missed within this window when workers
                come back; ``None`` fires only the latest missed tick.
            queue: the job's queue (default: the job's own).

        Raises:
            InvalidScheduleError: the expression or the time zone is unusable.
            InvalidInputError: ``args`` are not JSON, or the target is unusable.
        """
        import inspect

        from chimeway.cron import CronExpression, CronSchedule, job_target

        if isinstance(target, type) and issubclass(target, Notifier):
            if args:
                raise InvalidInputError("args: a scheduled notifier takes its params from params_for_schedule()")
            return self.scheduled_notifiers.add(target, cron=schedule, timezone=timezone, name=name,
                                                tenant=None, catch_up=catch_up)
        fn: Callable[..., Any] | None = None
        if isinstance(target, JobHandle):
            worker, label, fn = target.name, job_target(target.fn), target.fn
        elif isinstance(target, str) and target:
            worker, label = target, target
        elif callable(target):
            handle = self.queue.register(target)
            worker, label, fn = handle.name, job_target(target), target
        else:
            raise InvalidInputError(f"target must be a job, a function, a worker name or a Notifier, got {target!r}")
        # A job function with a ``tick`` parameter is told which tick it runs for.
        wants_tick = fn is not None and "tick" in inspect.signature(fn).parameters and "tick" not in (args or {})
        return self.scheduler.add(CronSchedule(
            name=name or worker, cron=CronExpression(schedule, timezone), worker=worker,
            args=dict(args or {}), queue=queue, kind="job", target=label, catch_up=catch_up,
            tick_arg="tick" if wants_tick else None,
        ))

    def schedule(
        self,
        notifier: type[Notifier],
        *,
        timezone: str = "UTC",
        tenant: str | None = None,
        name: str | None = None,
        catch_up: timedelta | None = None,
    ) -> _CronSchedule:
        """Trigger ``notifier`` on its ``schedule`` (a cron expression on the class).

        Each tick triggers it once with ``params_for_schedule(tick)`` and the
        idempotency key ``schedule:<name>:<tick ISO time>``.

        Args:
            notifier: a ``Notifier`` subclass with ``schedule = "0 8 * * *"``.
            timezone: IANA zone the schedule is read in.
            tenant: the tenant every run is triggered for.
            name: schedule name (default ``notifier:<key>``).
            catch_up: as for :meth:`cron`.
        """
        return self.scheduled_notifiers.add(notifier, cron=None, timezone=timezone, name=name,
                                            tenant=tenant, catch_up=catch_up)

    def record_trigger(
        self,
        name: str,
        *,
        model: Any,
        where: Any,
        notifier: type[Notifier],
        params: Any,
        idempotency_key: Callable[[Any], str] | None = None,
        cron: str = "* * * * *",
        timezone: str = "UTC",
        batch_size: int = 500,
        concurrency: int = 1,
        tenant: Any = None,
        on_error: Callable[[Any, BaseException], object] | None = None,
        max_attempts: int = 3,
        queue: str = "default",
    ) -> _RecordTrigger:
        """Trigger ``notifier`` once for every row of ``model`` matching ``where``.

        On each ``cron`` tick a scan job pages through the matching rows by
        primary key and triggers the notifier per row, one transaction per
        batch. The idempotency key makes a row's notification happen once
        across scans, overlaps and restarts.

        Args:
            name: unique, stable trigger name.
            model: a mapped class (scans see instances) or a ``Table`` (rows).
            where: a SQLAlchemy boolean expression, or a function of ``now``
                (the app's clock) returning one.
            notifier: the ``Notifier`` subclass.
            params: function of the row returning the notifier's JSON params (or a dict).
            idempotency_key: function of the row; default ``"<name>:<primary key>"``.
            cron: how often to scan.
            timezone: IANA zone of ``cron``.
            batch_size: rows per transaction.
            concurrency: batches a scan works on at once, each in its own
                transaction (PostgreSQL; SQLite serializes writers anyway).
            tenant: a tenant, or a function of the row returning one.
            on_error: ``on_error(row_id, exc)`` after a failing row's last attempt.
            max_attempts: attempts of a failing row's own job.
            queue: queue of the scan and row jobs.

        Raises:
            InvalidInputError: a field is unusable; the message names it.
        """
        from chimeway.record_triggers import build

        trigger = build(name, model=model, where=where, notifier=notifier, params=params,
                        idempotency_key=idempotency_key, tenant=tenant, on_error=on_error, cron=cron,
                        timezone=timezone, batch_size=batch_size, concurrency=concurrency,
                        max_attempts=max_attempts, queue=queue,
                        jobs=self.queue, now=self.clock.now())
        return self.record_triggers.add(trigger)

    def run_record_trigger(self, session: Session | Connection, name: str, row: Any) -> TriggerResult:
        """Trigger record trigger ``name`` for one row, inside the caller's transaction.

        ``where`` is not checked. The same idempotency key as the scans is used,
        so a later scan does not notify the row again.

        Args:
            session: the caller's ``Session`` or ``Connection``.
            name: the record trigger.
            row: the model instance.
        """
        return self.record_triggers.run_one(session, name, row)

    def scan_record_trigger(self, name: str, *, now: Any = None) -> _ScanResult:
        """Run one scan of record trigger ``name`` in this thread (what its scan job does).

        Args:
            name: the record trigger.
            now: the time ``where`` is evaluated at (default: the clock's).
        """
        return self.record_triggers.scan(name, now=now)

    def run_scheduler(self, now: Any = None) -> list[_FiredTick]:
        """Fire every cron tick due at ``now`` that no worker has fired yet.

        Workers call this about once a second; call it yourself in tests and
        scripts (then :meth:`work` runs the jobs the ticks enqueued).

        Args:
            now: the time to schedule at (default: the clock's).
        """
        return self.scheduler.run(now)

    def cron_schedules(self, now: Any = None) -> list[dict[str, Any]]:
        """Every cron schedule: name, kind, schedule, timezone, target, last_tick, next_run.

        Args:
            now: the time next runs are computed from (default: the clock's).
        """
        return self.scheduler.listing(now)

    def record_triggers_status(self, now: Any = None) -> list[dict[str, Any]]:
        """Every record trigger: rows matching, pending, retrying and failed; last and next scan.

        Args:
            now: when ``where`` is evaluated (default: the clock's).
        """
        return self.record_triggers.status(now)
