"""Chimeway's own tables (all prefixed ``chimeway_``), on one ``MetaData``.

Rows are typed SQLAlchemy 2 mapped classes. Hot paths write them with Core
``insert()`` on the mapped table; reads use the ORM or Core as fits.

Notification tables:

- ``events``: one per trigger, unique per ``(tenant, idempotency_key)``.
- ``notifications``: one per event × recipient; also the in-app inbox row.
- ``deliveries``: one per notification × channel (× workflow step).
- ``attempts``: append-only, one per provider call.
- ``delivery_decisions``: append-only, every decision that changed a
  delivery's fate outside an attempt (recovered, suppressed, deferred, ...).
- ``outbox``: deliveries waiting to be published to an outside engine (Celery).
- ``inbox_counts``: unread inbox items per tenant × recipient, kept by
  triggers on ``notifications`` (see ``db.INBOX_COUNT_DDL``).

Queue tables: ``jobs``, ``workers`` (heartbeats), ``cron_ticks``.

``tenant`` is stored as ``""`` when the caller passes ``None`` so the unique
constraints treat "no tenant" as one tenant.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chimeway.db import INBOX_NOTIFY_DDL, JsonText, inbox_count_ddl
from chimeway.types import JSONType, SealedJSON, UTCDateTime

__all__ = [
    "ACTIVE_JOB_STATES",
    "Attempt",
    "Base",
    "CapUsage",
    "CronTick",
    "DedupeMark",
    "Delivery",
    "DeliveryDecision",
    "DigestBatch",
    "DigestItem",
    "Event",
    "InboxCount",
    "Job",
    "Notification",
    "OutboxRow",
    "PolicyLock",
    "Preference",
    "ProviderEvent",
    "QueueState",
    "RecipientSettings",
    "Signal",
    "WorkerRow",
    "WorkflowDefinition",
    "WorkflowDelivery",
    "WorkflowRun",
    "WorkflowTransition",
    "attempts_table",
    "cap_usage_table",
    "cron_ticks_table",
    "decisions_table",
    "dedupe_marks_table",
    "deliveries_table",
    "digest_items_table",
    "digests_table",
    "events_table",
    "inbox_counts_table",
    "jobs_table",
    "metadata",
    "notifications_table",
    "outbox_table",
    "policy_locks_table",
    "preferences_table",
    "provider_events_table",
    "queue_states_table",
    "recipient_settings_table",
    "signals_table",
    "workers_table",
    "workflow_definitions_table",
    "workflow_deliveries_table",
    "workflow_runs_table",
    "workflow_transitions_table",
]

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING)


def _partial(name: str, *columns: Any, where: str, **options: Any) -> sa.Index:
    """An index over only the rows that match ``where`` (the same predicate on both backends)."""
    return sa.Index(name, *columns, postgresql_where=sa.text(where), sqlite_where=sa.text(where), **options)


class Base(DeclarativeBase):
    metadata = metadata
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


class Event(Base):
    __tablename__ = "chimeway_events"
    __table_args__ = (
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_chimeway_events_tenant_key"),
        # Searches by notifier and by correlation id (events are never updated,
        # so these cost one index entry per trigger).
        sa.Index("ix_chimeway_events_notifier", "notifier_key", "id"),
        sa.Index("ix_chimeway_events_correlation", "correlation_id"),
        # A notifier's outcomes since a time (app.outcomes).
        sa.Index("ix_chimeway_events_notifier_time", "notifier_key", "created_at"),
        # The pruner walks events by age (Retention.events).
        sa.Index("ix_chimeway_events_created", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(200), default="")
    idempotency_key: Mapped[str] = mapped_column(sa.String(500))
    notifier_key: Mapped[str] = mapped_column(sa.String(200))
    notifier_version: Mapped[int] = mapped_column(sa.Integer)
    actor: Mapped[str | None] = mapped_column(sa.String(200))
    correlation_id: Mapped[str | None] = mapped_column(sa.String(200))
    cancellation_key: Mapped[str | None] = mapped_column(sa.String(500))
    params: Mapped[dict[str, Any]] = mapped_column(SealedJSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # SHA-256 of (notifier, stored params, recipient ids): a key reused with
    # another payload is refused (NULL for events from before it existed).
    payload_hash: Mapped[str | None] = mapped_column(sa.String(80))


class Notification(Base):
    __tablename__ = "chimeway_notifications"
    __table_args__ = (
        sa.Index("ix_chimeway_notifications_inbox", "tenant", "recipient_id", "id"),
        # Searches by recipient, with or without a tenant (the dashboard's),
        # and a recipient's traces page by page in event order (app.traces).
        sa.Index("ix_chimeway_notifications_trace", "recipient_id", "tenant", "event_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("chimeway_events.id", ondelete="CASCADE"), index=True
    )
    tenant: Mapped[str] = mapped_column(sa.String(200), default="")
    recipient_id: Mapped[str] = mapped_column(sa.String(200))
    recipient: Mapped[dict[str, Any]] = mapped_column(SealedJSON)
    notifier_key: Mapped[str] = mapped_column(sa.String(200))
    category: Mapped[str | None] = mapped_column(sa.String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Set when an in-app delivery succeeds: the row is then an inbox item.
    inbox_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    inbox_content: Mapped[dict[str, Any] | None] = mapped_column(SealedJSON)
    seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Delivery(Base):
    __tablename__ = "chimeway_deliveries"
    __table_args__ = (
        sa.Index("ix_chimeway_deliveries_status_due", "status", "not_before"),
        # Sends in flight whose lease ran out: the rescuer's only query.
        _partial(
            "ix_chimeway_deliveries_lease",
            "lease_expires_at",
            where="status = 'dispatched'",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    notification_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("chimeway_notifications.id", ondelete="CASCADE"), index=True
    )
    event_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    tenant: Mapped[str] = mapped_column(sa.String(200), default="")
    recipient_id: Mapped[str] = mapped_column(sa.String(200))
    channel: Mapped[str] = mapped_column(sa.String(100))
    step: Mapped[int | None] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.String(20))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    message: Mapped[dict[str, Any]] = mapped_column(SealedJSON)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())
    provider_message_id: Mapped[str | None] = mapped_column(sa.String(500), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # A ``dispatched`` delivery is a lease: who is sending it, and until when.
    lease_holder: Mapped[str | None] = mapped_column(sa.String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Attempt(Base):
    __tablename__ = "chimeway_attempts"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("chimeway_deliveries.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(sa.Integer)
    outcome: Mapped[str] = mapped_column(sa.String(20))
    error_class: Mapped[str | None] = mapped_column(sa.String(200))
    vendor_code: Mapped[str | None] = mapped_column(sa.String(100))
    detail: Mapped[str | None] = mapped_column(sa.Text)
    provider_message_id: Mapped[str | None] = mapped_column(sa.String(500))
    retry_after: Mapped[float | None] = mapped_column(sa.Float)
    duration_ms: Mapped[float] = mapped_column(sa.Float)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DeliveryDecision(Base):
    __tablename__ = "chimeway_delivery_decisions"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("chimeway_deliveries.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    event: Mapped[str] = mapped_column(sa.String(50))
    checkpoint: Mapped[str | None] = mapped_column(sa.String(50))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType)


class OutboxRow(Base):
    """A delivery to hand to an outside engine (Celery) once it is due.

    Written in the same transaction as the delivery (or by whoever finds it
    due again: a retry, a lease that ran out); deleted in the transaction
    that publishes it, so a rollback leaves nothing published and a relay
    that dies before its commit leaves the row to be published again.
    """

    __tablename__ = "chimeway_outbox"

    delivery_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("chimeway_deliveries.id", ondelete="CASCADE"), primary_key=True
    )
    due_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    reason: Mapped[str] = mapped_column(sa.String(50))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    publish_failures: Mapped[int] = mapped_column(sa.Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(sa.Text)


class ProviderEvent(Base):
    """Provider status reports already ingested (deduplicated by the provider's event id)."""

    __tablename__ = "chimeway_provider_events"
    __table_args__ = (
        sa.UniqueConstraint("channel", "provider_event_id", name="uq_chimeway_provider_events_event"),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    channel: Mapped[str] = mapped_column(sa.String(100))
    provider_event_id: Mapped[str] = mapped_column(sa.String(300))
    delivery_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, index=True)
    status: Mapped[str] = mapped_column(sa.String(30))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


# --- the job queue -----------------------------------------------------------

ACTIVE_JOB_STATES = ("available", "scheduled", "executing", "retryable")

# Partial index predicates on chimeway_jobs; an upsert spells the unique
# index's the same way (SQLite matches a partial index by its text). The
# claim's conditions imply only the due index's predicate, and an
# acknowledgement's (by id, executing) only the executing index's, so their
# plans do not hinge on statistics of the state column.
DUE_WHERE = "state IN ('available','scheduled','retryable')"
EXECUTING_WHERE = "state = 'executing'"
UNIQUE_WHERE = "unique_key IS NOT NULL AND state IN ('available','scheduled','executing','retryable')"
CANCELLED_WHERE = "state = 'cancelled'"


class Job(Base):
    __tablename__ = "chimeway_jobs"
    __table_args__ = (
        # The dashboard's counts and oldest job per queue and state.
        sa.Index("ix_chimeway_jobs_fetch", "queue", "state", "priority", "scheduled_at", "id"),
        # The claim reads due jobs of one queue in (priority, scheduled_at, id)
        # order; a partial index over the due states serves it without a sort.
        _partial(
            "ix_chimeway_jobs_due",
            "queue",
            "priority",
            "scheduled_at",
            "id",
            where=DUE_WHERE,
        ),
        # Running jobs, for the rescuer; keyed by id so that the only way into
        # it for an acknowledgement is by the acknowledged ids.
        _partial(
            "ix_chimeway_jobs_executing",
            "id",
            where=EXECUTING_WHERE,
        ),
        # Only jobs that have a key: the claim and the acknowledgement never
        # name unique_key, so the planner cannot take this index for them.
        _partial(
            "uq_chimeway_jobs_unique_key",
            "unique_key",
            unique=True,
            where=UNIQUE_WHERE,
        ),
        # The pruner walks cancelled jobs by when they were cancelled.
        _partial(
            "ix_chimeway_jobs_cancelled",
            "cancelled_at",
            where=CANCELLED_WHERE,
        ),
    )

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    state: Mapped[str] = mapped_column(sa.String(20))
    queue: Mapped[str] = mapped_column(sa.String(100))
    worker: Mapped[str] = mapped_column(sa.String(300))
    args: Mapped[dict[str, Any]] = mapped_column(JSONType)
    meta: Mapped[dict[str, Any]] = mapped_column(JSONType)
    errors: Mapped[list[Any]] = mapped_column(JSONType)
    attempt: Mapped[int] = mapped_column(sa.Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(sa.Integer, default=20)
    priority: Mapped[int] = mapped_column(sa.Integer, default=0)
    unique_key: Mapped[str | None] = mapped_column(sa.String(500))
    inserted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempted_by: Mapped[str | None] = mapped_column(sa.String(200))
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    discarded_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        # Read loaded values only: a repr must never lazy-load (or fail on) a detached row.
        loaded = self.__dict__
        parts = [f"id={loaded.get('id')}"]
        for name in ("state", "queue", "worker", "args"):
            if name in loaded:
                parts.append(f"{name}={loaded[name]!r}")
        if "attempt" in loaded and "max_attempts" in loaded:
            parts.append(f"attempt={loaded['attempt']}/{loaded['max_attempts']}")
        when = loaded.get("scheduled_at")
        if isinstance(when, datetime):
            parts.append(f"scheduled_at={when.isoformat()}")
        errors = loaded.get("errors")
        if errors:
            parts.append(f"last_error={errors[-1].get('error')!r}")
        return f"Job({', '.join(parts)})"


class QueueState(Base):
    """A queue an operator paused: workers claim nothing from it until it is resumed."""

    __tablename__ = "chimeway_queue_states"

    queue: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    paused_by: Mapped[str | None] = mapped_column(sa.String(200))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WorkerRow(Base):
    __tablename__ = "chimeway_workers"

    id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    node: Mapped[str] = mapped_column(sa.String(200))
    queues: Mapped[dict[str, Any]] = mapped_column(JSONType)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Not indexed: a heartbeat then changes no indexed column and is a HOT
    # update (one row per worker process; readers take the whole table).
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CronTick(Base):
    __tablename__ = "chimeway_cron_ticks"

    name: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    tick_at: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    inserted_at: Mapped[datetime] = mapped_column(UTCDateTime())


def _table(cls: type[Base]) -> sa.Table:
    table = cls.__table__
    assert isinstance(table, sa.Table)
    return table


# Typed handles for Core statements on hot paths (``Model.__table__`` is typed
# as a generic FromClause).
events_table = _table(Event)
notifications_table = _table(Notification)
deliveries_table = _table(Delivery)
attempts_table = _table(Attempt)
decisions_table = _table(DeliveryDecision)
outbox_table = _table(OutboxRow)
jobs_table = _table(Job)
workers_table = _table(WorkerRow)
queue_states_table = _table(QueueState)

# The dashboard finds a delivery's jobs by the id in their args, and charts
# jobs finished per minute; neither may scan the whole table.
_partial(
    "ix_chimeway_jobs_delivery",
    JsonText(jobs_table.c.args, "delivery_id"),
    where="worker = 'chimeway.deliver'",
)
_partial(
    "ix_chimeway_jobs_finished",
    jobs_table.c.attempted_at,
    jobs_table.c.state,
    jobs_table.c.queue,
    where="state IN ('completed','retryable','discarded')",
)
cron_ticks_table = _table(CronTick)

# PostgreSQL announces inbox changes from a trigger (see db.INBOX_NOTIFY_DDL);
# ``metadata.create_all`` creates it too, as migration 0009 does.
@sa.event.listens_for(notifications_table, "after_create")
def _announce_inbox_changes(target: sa.Table, connection: sa.Connection, **kw: Any) -> None:
    if connection.dialect.name == "postgresql":
        for statement in INBOX_NOTIFY_DDL:
            connection.exec_driver_sql(statement)


class InboxCount(Base):
    """Unread inbox items of one recipient in one tenant, kept exact by triggers.

    Every insert, update and delete of ``chimeway_notifications`` changes it
    in the same transaction (``db.INBOX_COUNT_DDL``); nothing else writes
    it. The count is the sum of the recipient's rows: on PostgreSQL a
    writer that finds the recipient's rows held by other transactions adds
    a row (``slot``) of its own rather than wait, and the next writer folds
    the rows back into one. No row: no unread item.
    """

    __tablename__ = "chimeway_inbox_counts"

    tenant: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    recipient_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    slot: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    unread: Mapped[int] = mapped_column(sa.BigInteger)


inbox_counts_table = _table(InboxCount)
# Its triggers sit on the notifications table, which must be there first.
inbox_counts_table.add_is_dependent_on(notifications_table)


# ``metadata.create_all`` installs the triggers too, as migration 0013 does.
@sa.event.listens_for(inbox_counts_table, "after_create")
def _keep_inbox_counts(target: sa.Table, connection: sa.Connection, **kw: Any) -> None:
    for statement in inbox_count_ddl(connection):
        connection.exec_driver_sql(statement)


# --- preferences and policy --------------------------------------------------


class Preference(Base):
    """One recipient's opt-in or opt-out for a scope × channel.

    ``scope`` is ``all``, ``category`` or ``notifier``; ``scope_key`` is the
    category or notifier key (``""`` for ``all``); ``channel`` is a channel
    name or ``*`` for every channel.
    """

    __tablename__ = "chimeway_preferences"
    __table_args__ = (
        sa.UniqueConstraint(
            "tenant", "recipient_id", "scope", "scope_key", "channel", name="uq_chimeway_preferences_target"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(200), default="")
    recipient_id: Mapped[str] = mapped_column(sa.String(200))
    scope: Mapped[str] = mapped_column(sa.String(20))
    scope_key: Mapped[str] = mapped_column(sa.String(200), default="")
    channel: Mapped[str] = mapped_column(sa.String(100))
    enabled: Mapped[bool] = mapped_column(sa.Boolean)
    source: Mapped[str] = mapped_column(sa.String(50))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RecipientSettings(Base):
    """A recipient's time zone and quiet hours (local ``HH:MM`` times)."""

    __tablename__ = "chimeway_recipient_settings"

    tenant: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    recipient_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    timezone: Mapped[str | None] = mapped_column(sa.String(100))
    quiet_start: Mapped[str | None] = mapped_column(sa.String(5))
    quiet_end: Mapped[str | None] = mapped_column(sa.String(5))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PolicyLock(Base):
    """One row per recipient × channel, locked while a cap is counted.

    Racing transactions queue on this row, so each one counts the usage the
    previous one committed.
    """

    __tablename__ = "chimeway_policy_locks"

    tenant: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    recipient_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    channel: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    touched_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CapUsage(Base):
    """One row per delivery counted against the caps (a sliding-window ledger)."""

    __tablename__ = "chimeway_cap_usage"
    __table_args__ = (
        sa.Index("ix_chimeway_cap_usage_window", "tenant", "recipient_id", "channel", "at"),
        sa.Index("ix_chimeway_cap_usage_at", "at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(200), default="")
    recipient_id: Mapped[str] = mapped_column(sa.String(200))
    channel: Mapped[str] = mapped_column(sa.String(100))
    notifier_key: Mapped[str] = mapped_column(sa.String(200))
    delivery_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class DedupeMark(Base):
    """The first event of a dedupe key, valid until ``expires_at``."""

    __tablename__ = "chimeway_dedupe_marks"

    tenant: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    notifier_key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    recipient_id: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(sa.String(500), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class DigestBatch(Base):
    """Events collected for one recipient × channel × digest key.

    ``delivery_id`` is the delivery that carries the digest; it waits
    ``deferred`` until ``flush_at``.
    """

    __tablename__ = "chimeway_digests"
    __table_args__ = (
        _partial(
            "uq_chimeway_digests_open",
            "tenant", "notifier_key", "recipient_id", "channel", "digest_key",
            unique=True,
            where="status = 'open'",
        ),
        sa.Index("ix_chimeway_digests_due", "status", "flush_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(200), default="")
    notifier_key: Mapped[str] = mapped_column(sa.String(200))
    recipient_id: Mapped[str] = mapped_column(sa.String(200))
    channel: Mapped[str] = mapped_column(sa.String(100))
    digest_key: Mapped[str] = mapped_column(sa.String(500))
    status: Mapped[str] = mapped_column(sa.String(20))
    delivery_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    item_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime())
    flush_at: Mapped[datetime] = mapped_column(UTCDateTime())
    flushed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)


class DigestItem(Base):
    """One event collected into a digest."""

    __tablename__ = "chimeway_digest_items"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    digest_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("chimeway_digests.id", ondelete="CASCADE"), index=True
    )
    event_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    notification_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    delivery_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    params: Mapped[dict[str, Any]] = mapped_column(SealedJSON)
    at: Mapped[datetime] = mapped_column(UTCDateTime())


preferences_table = _table(Preference)
recipient_settings_table = _table(RecipientSettings)
policy_locks_table = _table(PolicyLock)
cap_usage_table = _table(CapUsage)
dedupe_marks_table = _table(DedupeMark)
digests_table = _table(DigestBatch)
digest_items_table = _table(DigestItem)
provider_events_table = _table(ProviderEvent)


# --- workflows and signals ---------------------------------------------------


class WorkflowDefinition(Base):
    """The steps of one notifier version, stored when its first run starts.

    A run follows the steps it started with even after a deploy changes the
    notifier; one row per ``(notifier_key, version)`` means a version can
    never stand for two different step lists (their fingerprints differ).
    """

    __tablename__ = "chimeway_workflow_definitions"

    notifier_key: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    version: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(sa.String(64))
    steps: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WorkflowRun(Base):
    """One workflow run per notification: where it is and what it waits for.

    ``state`` is ``active`` (a delivery step is in flight), ``waiting``,
    ``completed``, ``stopped`` or ``cancelled``; ``step`` is the current
    step's index; ``wait_until``/``wait_signals`` describe the current wait.
    """

    __tablename__ = "chimeway_workflow_runs"
    __table_args__ = (
        sa.Index("ix_chimeway_workflow_runs_actor", "tenant", "recipient_id", "state"),
        sa.Index("ix_chimeway_workflow_runs_due", "state", "wait_until"),
        sa.Index("ix_chimeway_workflow_runs_finished", "finished_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    notification_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, unique=True)
    event_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, index=True)
    tenant: Mapped[str] = mapped_column(sa.String(200), default="")
    recipient_id: Mapped[str] = mapped_column(sa.String(200))
    notifier_key: Mapped[str] = mapped_column(sa.String(200))
    notifier_version: Mapped[int] = mapped_column(sa.Integer)
    fingerprint: Mapped[str] = mapped_column(sa.String(64))
    state: Mapped[str] = mapped_column(sa.String(20))
    step: Mapped[int | None] = mapped_column(sa.Integer)
    wait_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    wait_signals: Mapped[list[Any] | None] = mapped_column(JSONType)
    # Signals with a larger (time-ordered) id than this are still unused by the run.
    signal_mark: Mapped[uuid.UUID] = mapped_column(sa.Uuid)
    transitions: Mapped[int] = mapped_column(sa.Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WorkflowTransition(Base):
    """Append-only: one row per change of a run's state or step, with the reason."""

    __tablename__ = "chimeway_workflow_transitions"
    __table_args__ = (
        sa.UniqueConstraint("run_id", "seq", name="uq_chimeway_workflow_transitions_run_seq"),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    run_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("chimeway_workflow_runs.id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(sa.Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    from_state: Mapped[str | None] = mapped_column(sa.String(20))
    to_state: Mapped[str] = mapped_column(sa.String(20))
    from_step: Mapped[int | None] = mapped_column(sa.Integer)
    to_step: Mapped[int | None] = mapped_column(sa.Integer)
    reason: Mapped[str] = mapped_column(sa.String(100))
    context: Mapped[dict[str, Any]] = mapped_column(JSONType)


class WorkflowDelivery(Base):
    """Which run and step a delivery belongs to (looked up when it is final)."""

    __tablename__ = "chimeway_workflow_deliveries"

    delivery_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    run_id: Mapped[uuid.UUID] = mapped_column(
        sa.Uuid, sa.ForeignKey("chimeway_workflow_runs.id", ondelete="CASCADE"), index=True
    )
    step: Mapped[int] = mapped_column(sa.Integer)


class Signal(Base):
    """Something a recipient did (``notification.read``, ``order.paid``, ...).

    ``routed_at`` is set once the signal has been matched against the runs
    waiting for it; ``matched`` counts the runs it moved.
    """

    __tablename__ = "chimeway_signals"
    __table_args__ = (
        sa.Index("ix_chimeway_signals_actor", "tenant", "actor", "name"),
        _partial(
            "ix_chimeway_signals_unrouted",
            "created_at",
            where="routed_at IS NULL",
        ),
        sa.Index("ix_chimeway_signals_routed", "routed_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    tenant: Mapped[str] = mapped_column(sa.String(200), default="")
    actor: Mapped[str] = mapped_column(sa.String(200))
    name: Mapped[str] = mapped_column(sa.String(200))
    notification_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    routed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    matched: Mapped[int] = mapped_column(sa.Integer, default=0)


workflow_definitions_table = _table(WorkflowDefinition)
workflow_runs_table = _table(WorkflowRun)
workflow_transitions_table = _table(WorkflowTransition)
workflow_deliveries_table = _table(WorkflowDelivery)
signals_table = _table(Signal)
