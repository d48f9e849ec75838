"""``Chimeway``: configuration plus the user-facing verbs."""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.orm import Session

from chimeway import telemetry
from chimeway.aio import AsyncVerbs
from chimeway.channels.base import Channel
from chimeway.channels.in_app import InApp
from chimeway.clock import Clock, SystemClock
from chimeway.cron import Cron, ScheduledNotifiers, Scheduler, workflow_sweep_schedule
from chimeway.db import (
    DEFAULT_DATABASE_URL,
    check_schema,
    create_engine,
    own_tables,
    tenant_key,
    translated,
    with_schema,
)
from chimeway.deliveries import PlannedLease
from chimeway.dispatch.base import Dispatcher, Due
from chimeway.dispatch.executor import DEFAULT_MAX_RETRY_AFTER, Executor
from chimeway.dispatch.jobs import DeliveryJobs, DeliveryRescue
from chimeway.dispatch.leases import DEFAULT_LEASE_TTL
from chimeway.dispatch.queue import QueueDispatcher
from chimeway.dispatch.sync import SyncDispatcher
from chimeway.encryption import Encryption
from chimeway.encryption import bind as bind_encryption
from chimeway.encryption import unbind as unbind_encryption
from chimeway.errors import ConfigurationError, InvalidInputError, NotFoundError
from chimeway.explain import Explanation, Trace, explain, trace
from chimeway.feedback import FeedbackOutcome, ingest
from chimeway.inbox import Inbox
from chimeway.inbox_live import InboxHub
from chimeway.migrations import upgrade
from chimeway.notifier import Notifier
from chimeway.planning import (
    Checkpoint,
    TriggerRequest,
    TriggerResult,
    plan,
    write_plans,
)
from chimeway.policy import Policy
from chimeway.queue import JobHandle, JobQueue
from chimeway.queue.plugins import Lifeline, Plugin, Pruner
from chimeway.record_triggers import RecordTriggers
from chimeway.reencrypt import reencrypt
from chimeway.retention import Retention
from chimeway.verbs import (
    LiveVerbs,
    OperatingVerbs,
    PolicyVerbs,
    SchedulingVerbs,
    TracingVerbs,
    WorkflowVerbs,
)
from chimeway.workflow.service import Workflows

__all__ = ["Chimeway", "RecoverReport"]

log = logging.getLogger("chimeway")


@dataclass(frozen=True, kw_only=True)
class RecoverReport:
    """What one :meth:`Chimeway.recover` pass did.

    Args:
        redriven: deliveries attempted (sync) or given a job (queue).
        lease_expired: sends whose lease ran out, taken back to be sent again.
        exhausted: sends whose lease ran out on their last attempt (cancelled).
        skipped: channel → deliveries left alone: no such channel in this process.
    """

    redriven: int
    lease_expired: int = 0
    exhausted: int = 0
    skipped: Mapping[str, int] = field(default_factory=dict)


class Chimeway(AsyncVerbs, PolicyVerbs, WorkflowVerbs, SchedulingVerbs, OperatingVerbs, TracingVerbs,
               LiveVerbs):
    """A Chimeway application: one database, its channels and a dispatcher.

    The core verbs (trigger, inbox, explain, recover, jobs) are defined here;
    the policy, workflow, scheduling and async verbs come from
    :mod:`chimeway.verbs`.

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
        lease_ttl: how long a send in flight stays claimed without its process
            extending it (every ``lease_ttl / 4`` while it lives). A delivery
            whose process died is sent again within about ``1.25 × lease_ttl``
            by any running worker (default 60 s).
        max_retry_after: the longest wait a provider's ``Retry-After`` can
            impose before the next attempt (default 1 hour); longer hints are cut to it.
        encryption_keys: Fernet keys, newest first: store params, rendered
            messages, recipients and inbox content encrypted (see
            guides/security.md). Every process of the app needs them.
        idempotency: ``"payload"`` (default): an idempotency key reused with
            another notifier, other params or other recipients raises
            ``IdempotencyConflictError``; ``"key"``: the key alone decides,
            and a reuse returns the first event as a duplicate.
        plugins: more plugins for every worker of this app, run besides the
            built-in ones (see :attr:`plugins`).
        retention: how long each kind of row stays (default ``Retention()``:
            see guides/operations.md); every worker's pruner deletes what is
            past its age.
        schema: PostgreSQL only: the schema every table of Chimeway's (and
            its Alembic version table) lives in, e.g. ``"notify"``;
            ``migrate()`` creates it. Default: wherever the connection's
            search path puts them. See guides/integrations.md.
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
        lease_ttl: timedelta = DEFAULT_LEASE_TTL,
        max_retry_after: timedelta = DEFAULT_MAX_RETRY_AFTER,
        encryption_keys: Sequence[str | bytes] | None = None,
        idempotency: str = "payload",
        plugins: Sequence[Plugin] = (),
        retention: Retention | None = None,
        schema: str | None = None,
    ) -> None:
        if retention is not None and not isinstance(retention, Retention):
            raise ConfigurationError(f"retention must be a chimeway.Retention, got {retention!r}")
        if engine is not None and database_url is not None:
            raise ConfigurationError("pass database_url or engine, not both")
        self.encryption = Encryption(encryption_keys) if encryption_keys is not None else None
        self._encrypted: weakref.WeakSet[Dialect] = weakref.WeakSet()
        self._owns_engine = engine is None
        base = engine if engine is not None else create_engine(database_url or DEFAULT_DATABASE_URL)
        self.schema = check_schema(schema)
        if self.schema is not None and base.dialect.name != "postgresql":
            if self._owns_engine:
                base.dispose()
            raise ConfigurationError(f"schema is for PostgreSQL; this database is {base.dialect.name}")
        # Chimeway's own statements find its tables in its schema; see chimeway.db.own_tables.
        self.engine: Engine = with_schema(base, self.schema)
        self._encrypt_through(self.engine)
        self.clock: Clock = clock or SystemClock()
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        self.max_attempts = max_attempts
        if idempotency not in ("payload", "key"):
            raise ConfigurationError(f"idempotency must be 'payload' or 'key', got {idempotency!r}")
        self.idempotency = idempotency
        for name, value in (("lease_ttl", lease_ttl), ("max_retry_after", max_retry_after)):
            if not isinstance(value, timedelta) or value <= timedelta(0):
                raise ConfigurationError(f"{name} must be a positive timedelta, got {value!r}")
        configured = dict(channels or {})
        for name, channel in configured.items():
            if not isinstance(channel, Channel):
                raise ConfigurationError(
                    f"channels[{name!r}] is a {type(channel).__name__}, not a chimeway Channel"
                )
        configured.setdefault("in_app", InApp())
        self.channels: dict[str, Channel] = configured
        self.policy = Policy(clock=self.clock, channels=self.channels)
        # The job queue exists with either dispatcher: user jobs, cron and
        # workflow timers run on it even when deliveries are sync.
        self.queue = JobQueue(self.engine, clock=self.clock, notify=notify)
        # Live inbox changes listen where the queue's workers do (not behind PgBouncer).
        self.inbox_hub = InboxHub(self.engine) if self.queue.notify else None
        self.workflows = Workflows(engine=self.engine, clock=self.clock, channels=self.channels,
                                   queue=self.queue, dispatcher=lambda: self.dispatcher)
        # The pipeline, declared once in the order it runs. At planning, in the
        # caller's transaction: the policy rules over the planned deliveries,
        # then the runs of workflow notifiers (whose first step is planned
        # there). Before each send, in the claim transaction: the same rules.
        # When a delivery is final: the workflow it belongs to advances.
        self.planning: tuple[Checkpoint, ...] = (
            telemetry.traced("chimeway.policy", self.policy.at_planning),
            telemetry.traced("chimeway.workflow", self.workflows.start_runs),
        )
        self.executor = Executor(
            engine=self.engine, channels=self.channels, clock=self.clock, max_attempts=max_attempts,
            lease_ttl=lease_ttl, max_retry_after=max_retry_after,
            before_send=(self.policy.before_send,), on_final=self.workflows.on_final,
        )
        self.delivery_jobs = DeliveryJobs(self.executor, self.queue, max_attempts=max_attempts)
        self.dispatcher: Dispatcher = self._make_dispatcher(dispatcher)
        # Every worker re-drives what crashes left behind: sends whose lease
        # ran out and, with the sync dispatcher, deliveries its process never
        # got to (the queue dispatcher's own jobs cover those).
        self.rescue = DeliveryRescue(self.delivery_jobs, include_open=self.dispatcher.name == "sync",
                                     pending_after=lease_ttl,
                                     interval=max(timedelta(seconds=1), lease_ttl / 4))

        self.scheduler = Scheduler(self.queue, self.clock)
        self.scheduled_notifiers = ScheduledNotifiers(self.scheduler, self.trigger)
        self.record_triggers = RecordTriggers(self.queue, self.scheduler, self.trigger, self.clock,
                                              trigger_many=self.trigger_many)
        # The workflow sweep is the safety net behind each wait's own timer job.
        self.scheduler.add(workflow_sweep_schedule())

        self.retention = retention or Retention()
        self.pruner = Pruner(self.engine, self.retention.targets(), interval=self.retention.interval,
                             time_limit=self.retention.time_limit)
        # Every worker of the app runs these, each on its own thread. A
        # dispatcher that re-drives its own deliveries needs no delivery rescue.
        rescues = () if getattr(self.dispatcher, "rescues_itself", False) else (self.rescue,)
        self.queue.plugins = (Lifeline(self.queue), self.pruner, Cron(self.scheduler), *rescues,
                              *getattr(self.dispatcher, "plugins", ()), *plugins)

    @property
    def plugins(self) -> tuple[Plugin, ...]:
        """What every worker of this app runs besides jobs.

        ``lifeline`` (rescue jobs of dead workers, every 30 s), ``pruner``
        (delete every kind of row past its :attr:`retention` age, every minute),
        ``cron`` (fire due cron ticks, every second), ``delivery_rescue``
        (re-drive deliveries a crash left behind, every ``lease_ttl / 4``;
        not with a dispatcher that re-drives its own), the dispatcher's own
        (the Celery dispatcher's relay and rescue), then the ``plugins``
        given to the constructor. Change them with ``app.queue.plugins = ...``,
        or per worker with ``app.queue.run_worker(plugins=...)``.
        """
        return self.queue.plugins

    def _make_dispatcher(self, dispatcher: str | Dispatcher) -> Dispatcher:
        if dispatcher == "sync":
            return SyncDispatcher(self.executor)
        if dispatcher == "queue":
            return QueueDispatcher(self.delivery_jobs)
        if isinstance(dispatcher, str):
            raise ConfigurationError(f"dispatcher must be 'sync', 'queue' or a Dispatcher, got {dispatcher!r}")
        bind = getattr(dispatcher, "bind", None)
        if callable(bind):
            bind(self)
        return dispatcher

    # -- schema -----------------------------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade Chimeway's tables (Alembic, revision ``head``)."""

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
        with translated("trigger"):
            if telemetry.tracing():
                return telemetry.trigger(self._trigger_many, notifier, requests, session)  # type: ignore[no-any-return]
            return self._trigger_many(session, notifier, requests)

    def _trigger_many(
        self, session: Session | Connection, notifier: type[Notifier], requests: Sequence[TriggerRequest]
    ) -> list[TriggerResult]:
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
        with own_tables(session, self.engine) as conn:
            self._encrypt_through(conn)
            with telemetry.span("chimeway.plan", **{"chimeway.notifier": notifier.key}):
                results = write_plans(conn, plans, self.planning, strict=self.idempotency == "payload",
                                      lease=self._planning_lease(conn))
            # A workflow's deliveries are planned by its run, after the policy
            # rules ran (step is set): only the others passed the planning checkpoint.
            due = [
                Due(d.id, d.not_before, checked=d.step is None,
                    message=None if d.lease is None else the_plan.message(d))
                for the_plan, result in zip(plans, results, strict=True) if not result.duplicate
                for d in the_plan.deliveries if d.status in ("pending", "deferred")
            ]
            if due:
                with telemetry.span("chimeway.dispatch", **{"chimeway.dispatcher": self.dispatcher.name}):
                    self.dispatcher.planned(session, conn, due)
        return results

    def _planning_lease(self, conn: Connection) -> PlannedLease | None:
        lease: Callable[[Connection], PlannedLease | None] | None = getattr(self.dispatcher, "planning_lease", None)
        return None if lease is None else lease(conn)

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
        if session is not None:
            self._encrypt_through(session)
        return Inbox(engine=self.engine, clock=self.clock, recipient=recipient, tenant=tenant, session=session,
                     on_transition=self.workflows.signals.inbox_signal)

    def explain(self, delivery_id: uuid.UUID | str, *, tenant: str | None = None) -> Explanation:
        """Why a delivery has its status: ``.status``, ``.reason``, ``.timeline``.

        Args:
            delivery_id: the delivery.
            tenant: when given, a delivery of another tenant is not found.
        """
        with translated("explain"), self.engine.connect() as conn:
            found = explain(conn, delivery_id)
        _same_tenant(found.tenant, tenant, f"no delivery with id {found.delivery_id}")
        return found

    def trace(self, event_id: uuid.UUID | str, *, tenant: str | None = None) -> Trace:
        """An event's notifications and every delivery's explanation.

        Args:
            event_id: the event.
            tenant: when given, an event of another tenant is not found.
        """
        with translated("trace"), self.engine.connect() as conn:
            found = trace(conn, event_id)
        _same_tenant(found.tenant, tenant, f"no event with id {found.event_id}")
        return found

    # -- operating --------------------------------------------------------------

    def recover(self, older_than: timedelta = timedelta(minutes=5), *, limit: int = 1000) -> int:
        """Re-drive deliveries left behind, through this app's dispatcher.

        Running workers do this by themselves (every ``lease_ttl / 4``); call
        it from a script or a periodic task when no worker runs. It takes back
        sends whose lease ran out (their process died), and re-drives
        ``pending`` deliveries older than ``older_than`` (their process died
        between commit and send) and ``failed``/``deferred`` ones whose time
        has come. Digests whose window has ended are flushed first, so their
        deliveries go out in the same call. Deliveries on a channel this
        process does not configure are left alone (and logged).

        Args:
            older_than: how old a ``pending`` row must be to count as left behind.
            limit: at most this many per call.

        Returns:
            how many deliveries were attempted (sync) or given a job (queue).
        """
        return self.recover_report(older_than, limit=limit).redriven

    def recover_report(self, older_than: timedelta = timedelta(minutes=5), *, limit: int = 1000) -> RecoverReport:
        """:meth:`recover`, returning what it did and what it left alone.

        Args:
            older_than: how old a ``pending`` row must be to count as left behind.
            limit: at most this many per call.
        """
        if not isinstance(older_than, timedelta) or older_than < timedelta(0):
            raise InvalidInputError("older_than must be a non-negative timedelta")
        with translated("recover"):
            return self._recover(older_than, limit)

    def _recover(self, older_than: timedelta, limit: int) -> RecoverReport:
        self.flush_digests(limit=limit)
        released = self.executor.release_expired(limit=limit)
        scan = self.executor.recoverable(older_than=older_than, limit=limit)
        if scan.skipped:
            log.warning("recover: left %s alone: no such channel is configured in this process",
                        ", ".join(f"{n} on {c!r}" for c, n in sorted(scan.skipped.items())))
        taken = set(released.redrive)
        due = [Due(i) for i in released.redrive] + [d for d in scan.due if d.id not in taken]
        return RecoverReport(
            redriven=self.dispatcher.redrive(due) if due else 0, lease_expired=len(released.redrive),
            exhausted=len(released.exhausted), skipped=dict(scan.skipped),
        )

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
        self, channel: str, headers: Mapping[str, str], body: bytes, url: str | None = None,
        *, tenant: str | None = None,
    ) -> list[FeedbackOutcome]:
        """Apply a provider's status webhook (delivered, bounced, failed) to its delivery.

        The channel verifies the request's signature first; a request that is
        not authentic raises ``SignatureError`` and changes nothing. A report
        only applies to deliveries sent through ``channel`` (the channel whose
        credentials verified it). Reports are deduplicated by the provider's
        event id. Each applied report records a ``delivery.<status>`` signal
        (workflows can wait on it) in the same transaction.

        Args:
            channel: the configured channel name the provider reports on.
            headers: the request headers.
            body: the raw request body, exactly as received.
            url: the full URL the provider called (some providers sign it).
            tenant: when this endpoint serves one tenant, only that tenant's
                deliveries are matched.
        """

        def on_signal(conn: Connection, name: str, payload: Mapping[str, Any]) -> None:
            self.track(conn, name, actor=payload["actor"], tenant=payload["tenant"],
                       payload=dict(payload), notification_id=payload["notification_id"])

        return ingest(engine=self.engine, clock=self.clock, channels=self.channels, channel_name=channel,
                      headers=headers, body=body, url=url, on_signal=on_signal, tenant=tenant)

    def reencrypt(self, *, batch: int = 500) -> int:
        """Rewrite stored params, messages, recipients and inbox content under the first key.

        Run it after putting a new key first in ``encryption_keys`` (then the
        old key can go), or after turning encryption on for a database that
        already holds rows. Safe while the app runs.

        Args:
            batch: rows per transaction.

        Returns:
            how many rows were rewritten.
        """
        return reencrypt(self.engine, batch=batch)

    def _encrypt_through(self, bind: Engine | Connection | Session) -> None:
        # The caller's session may come from another engine (an async one, a
        # framework's): its connections must encrypt and decrypt too.
        if self.encryption is None:
            return
        try:
            dialect = (bind.get_bind() if isinstance(bind, Session) else bind).dialect
        except sa_exc.UnboundExecutionError:
            return
        bind_encryption(dialect, self.encryption)
        self._encrypted.add(dialect)

    def close(self) -> None:
        """Close channels' connection pools and, if Chimeway created it, the engine."""
        if self.encryption is not None:
            for dialect in list(self._encrypted):
                unbind_encryption(dialect, self.encryption)
        self.executor.close()
        self.delivery_jobs.close()
        if self.inbox_hub is not None:
            self.inbox_hub.close()
        for channel in self.channels.values():
            channel.close()
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> Chimeway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _same_tenant(found: str | None, wanted: str | None, missing: str) -> None:
    # Another tenant's row is reported as missing, so a tenant cannot learn
    # that an id exists elsewhere.
    if wanted is not None and (found or "") != tenant_key(wanted):
        raise NotFoundError(missing)
