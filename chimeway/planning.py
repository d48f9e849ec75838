"""Trigger → event → notifications → delivery plan. The one planner.

``plan()`` validates everything and renders every message before anything is
written; ``write_plan()`` then writes the rows through the caller's
connection. A duplicate ``(tenant, idempotency_key)`` writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chimeway.channels.base import Channel
from chimeway.db import insert, insert_new_rows, insert_rows, tenant_key
from chimeway.decisions import Decision
from chimeway.deliveries import PlannedDelivery, PlannedLease, Status, decide, new_rows
from chimeway.errors import (
    IdempotencyConflictError,
    IdempotencyKeyError,
    InvalidInputError,
    InvalidNotifierError,
    InvalidRecipientError,
    InvalidWorkflowError,
    TemplateRenderError,
    UnknownChannelError,
)
from chimeway.ids import new_id
from chimeway.jsonvalues import check_json, redact
from chimeway.models import (
    Delivery,
    Event,
    Notification,
    decisions_table,
    deliveries_table,
    events_table,
    notifications_table,
)
from chimeway.notifier import Notifier
from chimeway.templates import render_fields
from chimeway.validation import LIMITS, check_text
from chimeway.values import Message, Recipient
from chimeway.workflow.steps import (
    DeliverOp,
    Program,
    overrides_build,
    program_for,
    validate_workflow,
)

__all__ = [
    "Checkpoint",
    "Plan",
    "PlannedDelivery",
    "TriggerRequest",
    "TriggerResult",
    "plan",
    "render_message",
    "write_plan",
    "write_plans",
]

MAX_KEY_LENGTH = 500


@dataclass(frozen=True, kw_only=True)
class TriggerResult:
    """What ``trigger`` did.

    Args:
        event_id: the event (the existing one when ``duplicate``).
        duplicate: ``True`` when the idempotency key was already used; nothing was written.
        delivery_ids: the event's deliveries, in plan order.
        notification_ids: the event's notifications (one per recipient).
    """

    event_id: uuid.UUID
    duplicate: bool
    delivery_ids: tuple[uuid.UUID, ...]
    notification_ids: tuple[uuid.UUID, ...] = ()


@dataclass(frozen=True, kw_only=True)
class TriggerRequest:
    """One trigger of a batch (``app.trigger_many``); the same arguments as ``trigger``.

    Args:
        params: JSON values for ``recipients()`` and templates.
        idempotency_key: unique per tenant.
        tenant: the tenant, or ``None``.
        actor: who caused it.
        correlation_id: ties it to a request or trace.
        cancellation_key: a key ``cancel`` can find it by later.
    """

    params: Mapping[str, Any]
    idempotency_key: str
    tenant: str | None = None
    actor: str | None = None
    correlation_id: str | None = None
    cancellation_key: str | None = None


@dataclass(kw_only=True)
class Plan:
    event: dict[str, Any]
    notifications: list[dict[str, Any]]
    deliveries: list[PlannedDelivery]
    notifier: Notifier
    # The caller's params as given; the event row stores them redacted.
    params: Mapping[str, Any] = field(default_factory=dict)
    # A workflow notifier's program, checked against the configured channels.
    program: Program | None = None
    # Messages of the first workflow step, rendered while checking every step:
    # (recipient id, step index) → fields, so the engine does not render them again.
    rendered: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)

    @property
    def event_id(self) -> uuid.UUID:
        value = self.event["id"]
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))

    def message(self, delivery: PlannedDelivery) -> Message:
        """One of this plan's deliveries as its channel gets it, at attempt 1.

        Fields and recipient go through JSON as they do through the
        database, so a send from the plan sees what a send from the stored
        row would.
        """
        return Message(
            delivery_id=delivery.id, notification_id=delivery.notification_id, event_id=self.event_id,
            tenant=self.event["tenant"] or None, channel=delivery.channel, notifier_key=self.event["notifier_key"],
            recipient=Recipient.from_json(json.loads(json.dumps(delivery.recipient.to_json()))),
            fields=json.loads(json.dumps(delivery.fields)), attempt=1, created_at=self.event["created_at"],
        )


def plan(
    notifier_cls: type[Notifier],
    params: Mapping[str, Any],
    *,
    idempotency_key: str,
    tenant: str | None,
    actor: str | None,
    correlation_id: str | None,
    cancellation_key: str | None,
    channels: Mapping[str, Channel],
    now: datetime,
    recipients_override: Sequence[Recipient] | None = None,
    select_channels: Callable[[Notifier, Mapping[str, Any], Recipient], Sequence[str]] | None = None,
) -> Plan:
    """Validate the trigger and render every message; write nothing.

    Args:
        notifier_cls: a registered ``Notifier`` subclass.
        params: JSON params for templates and ``recipients()``.
        idempotency_key: unique per tenant; a repeat is a duplicate.
        tenant: the tenant, or ``None``.
        actor: who caused the event (a recipient id, a service name).
        correlation_id: ties the event to a request or trace.
        cancellation_key: lets ``cancel`` find this event's deliveries later.
        channels: the configured channels by name.
        now: the clock's time.
        recipients_override: recipients to use instead of ``recipients()``.
        select_channels: which channels a recipient gets (default: ``channels_for``).
    """
    if not (isinstance(notifier_cls, type) and issubclass(notifier_cls, Notifier)):
        raise InvalidNotifierError(
            f"notifier must be a Notifier subclass, got {notifier_cls!r}"
        )
    if notifier_cls.__dict__.get("abstract", False):
        raise InvalidNotifierError(f"notifier {notifier_cls.__qualname__} is abstract")
    _check_key(idempotency_key)
    tenant_value = tenant_key(tenant)
    for name, value in (("actor", actor), ("correlation_id", correlation_id),
                        ("cancellation_key", cancellation_key)):
        if value is not None and not isinstance(value, str):
            raise InvalidInputError(f"{name} must be a string or None, got {type(value).__name__}")
        check_text(value, field=name, optional=True)
    if not isinstance(params, Mapping):
        raise InvalidInputError(f"params must be a dict, got {type(params).__name__}")
    check_json(params)

    program = _program(notifier_cls, channels)
    notifier = notifier_cls()
    recipients = _recipients(notifier, params, recipients_override)
    rendered: dict[tuple[str, int], dict[str, Any]] = {}
    event_id = new_id()
    event = {
        "id": event_id,
        "tenant": tenant_value,
        "idempotency_key": idempotency_key,
        "notifier_key": notifier_cls.key,
        "notifier_version": notifier_cls.version,
        "actor": actor,
        "correlation_id": correlation_id,
        "cancellation_key": cancellation_key,
        "params": redact(dict(params), notifier_cls.sensitive),
        "created_at": now,
    }
    event["payload_hash"] = payload_hash(notifier_cls.key, event["params"], [r.id for r in recipients])
    notifications: list[dict[str, Any]] = []
    deliveries: list[PlannedDelivery] = []
    for recipient in recipients:
        notification_id = new_id()
        notifications.append({
            "id": notification_id,
            "event_id": event_id,
            "tenant": tenant_value,
            "recipient_id": recipient.id,
            "recipient": recipient.to_json(),
            "notifier_key": notifier_cls.key,
            "category": notifier_cls.category,
            "created_at": now,
        })
        if program is not None:
            # The workflow decides what is sent, step by step.
            rendered.update(_check_steps(notifier, program, params, recipient))
            continue
        names = (select_channels or _default_channels)(notifier, params, recipient)
        for channel_name in _unique(names):
            channel = channels.get(channel_name)
            if channel is None:
                raise UnknownChannelError(
                    f"notifier {notifier_cls.key!r} asks for channel {channel_name!r}, but no channel "
                    f"is configured with that name (configured: {', '.join(sorted(channels)) or 'none'})"
                )
            fields = render_message(notifier, params, recipient, channel_name)
            planned = PlannedDelivery(
                id=new_id(),
                notification_id=notification_id,
                recipient=recipient,
                channel=channel_name,
                fields=fields,
            )
            problem = channel.validate(fields, recipient)
            if problem is not None:
                decide(planned, Decision(status="cancelled", reason=f"invalid_message: {problem}",
                                         rule="channel_validation", inputs={"problem": problem}),
                       checkpoint="planning")
            deliveries.append(planned)
    return Plan(event=event, notifications=notifications, deliveries=deliveries, notifier=notifier,
                params=params, program=program, rendered=rendered)


def _program(cls: type[Notifier], channels: Mapping[str, Channel]) -> Program | None:
    """A workflow notifier's program, with every channel it can use configured."""
    if cls.workflow is None:
        return None
    program = program_for(cls.key, cls.version) or validate_workflow(cls)
    missing = sorted({op.channel for op in program.ops if isinstance(op, DeliverOp) and op.channel not in channels})
    if missing:
        raise InvalidWorkflowError(
            f"notifier {cls.key!r}: the workflow delivers over {', '.join(map(repr, missing))}, "
            f"but no channel is configured with that name (configured: {', '.join(sorted(channels))})"
        )
    return program


def _check_steps(notifier: Notifier, program: Program, params: Mapping[str, Any],
                 recipient: Recipient) -> dict[tuple[str, int], dict[str, Any]]:
    """Render every deliver step's templates for one recipient; keep the first step's messages.

    A template that cannot render (a variable missing from ``params``) fails
    the trigger now, naming the step, rather than when the step runs. Steps
    of a notifier with its own ``build()`` are built when they run, not here.
    """
    first = program.ops[0] if program.ops else None
    builds = overrides_build(type(notifier))
    kept: dict[tuple[str, int], dict[str, Any]] = {}
    for op in program.ops:
        if not isinstance(op, DeliverOp) or (builds and op is not first):
            continue
        try:
            fields = render_message(notifier, params, recipient, op.channel)
        except TemplateRenderError as exc:
            raise TemplateRenderError(f"workflow step {op.path} ({op.channel}): {exc}") from exc
        if op is first and op.to_ref is None:
            kept[(recipient.id, op.index)] = fields
    return kept


def render_message(
    notifier: Notifier, params: Mapping[str, Any], recipient: Recipient, channel: str
) -> dict[str, Any]:
    """The message fields for one recipient × channel (``build()`` or ``templates``)."""
    cls = type(notifier)
    built = notifier.build(params, recipient, channel)
    if built is not None:
        if not isinstance(built, Mapping):
            raise InvalidNotifierError(
                f"notifier {cls.key!r}: build() must return a dict of fields or None, "
                f"got {type(built).__name__}"
            )
        fields = dict(built)
        check_json(fields, name=f"build() result for channel {channel!r}")
        return fields
    templates = cls.templates.get(channel)
    if templates is None:
        raise InvalidNotifierError(
            f"notifier {cls.key!r} has no templates for channel {channel!r} and build() returned None"
        )
    context = {**params, "recipient": recipient, "params": params}
    return render_fields(templates, context, where=f"notifier {cls.key!r}, channel {channel!r}")


def _default_channels(notifier: Notifier, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
    names = notifier.channels_for(params, recipient)
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise InvalidNotifierError(
            f"notifier {type(notifier).key!r}: channels_for() must return a list of channel names"
        )
    return names


def _check_key(key: Any) -> None:
    if key is None:
        raise IdempotencyKeyError("idempotency_key is required: pass a string unique to this event")
    if not isinstance(key, str):
        raise IdempotencyKeyError(f"idempotency_key must be a string, got {type(key).__name__}")
    if not key.strip():
        raise IdempotencyKeyError("idempotency_key is blank: pass a string unique to this event")
    if len(key) > MAX_KEY_LENGTH:
        raise IdempotencyKeyError(
            f"idempotency_key is {len(key)} characters; at most {MAX_KEY_LENGTH} are allowed"
        )
    check_text(key, field="idempotency_key")


def _recipients(
    notifier: Notifier, params: Mapping[str, Any], override: Sequence[Recipient] | None
) -> list[Recipient]:
    raw = notifier.recipients(params) if override is None else override
    key = type(notifier).key
    if not isinstance(raw, (list, tuple)):
        raise InvalidRecipientError(
            f"notifier {key!r}: recipients() must return a list of Recipient, got {type(raw).__name__}"
        )
    seen: dict[str, Recipient] = {}
    for index, item in enumerate(raw):
        if not isinstance(item, Recipient):
            raise InvalidRecipientError(
                f"notifier {key!r}: recipients()[{index}] is a {type(item).__name__}, not a Recipient"
            )
        if not isinstance(item.id, str) or not item.id:
            raise InvalidRecipientError(f"notifier {key!r}: recipients()[{index}].id must be a non-empty string")
        check_text(item.id, field=f"notifier {key!r}: recipients()[{index}].id", limit=LIMITS["recipient id"])
        check_json(dict(item.data), name=f"recipients()[{index}].data")
        seen.setdefault(item.id, item)
    return list(seen.values())


def _unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))


Checkpoint = Callable[[Connection, Sequence["Plan"]], None]
"""A planning checkpoint: runs over every fresh plan of one call, in the caller's transaction."""

BATCH = 500


def write_plan(conn: Connection, plan_: Plan, checkpoints: Sequence[Checkpoint] = ()) -> TriggerResult:
    """Write one plan; see :func:`write_plans`."""
    return write_plans(conn, [plan_], checkpoints)[0]


def write_plans(
    conn: Connection,
    plans: Sequence[Plan],
    checkpoints: Sequence[Checkpoint] = (),
    *,
    strict: bool = True,
    lease: PlannedLease | None = None,
) -> list[TriggerResult]:
    """Write plans' rows on the caller's connection, detecting duplicates.

    Events go first, in one ``INSERT ... ON CONFLICT DO NOTHING RETURNING``
    on ``(tenant, idempotency_key)``: under concurrent triggers of one key,
    the database lets exactly one insert through and the others see a
    duplicate. Planning checkpoints (preferences, caps, quiet hours) then run
    for the plans that are not duplicates, inside the caller's transaction;
    they may set a planned delivery's status, reason and decisions. Last,
    every notification, delivery and decision goes in with one statement per
    table.

    Args:
        conn: the caller's connection, inside its transaction.
        plans: plans from :func:`plan` (a key repeated within the call is a
            duplicate of its first use).
        checkpoints: run in order over every fresh plan at once (the policy
            rules, then workflow runs); they may set a planned delivery's
            status, reason and decisions, or add deliveries.
        strict: refuse a used idempotency key sent with another payload
            (:class:`IdempotencyConflictError`); ``False`` returns the first
            event as a duplicate whatever the payload.
        lease: claim at planning: every delivery the checkpoints left
            ``pending``, due now and planned outside a workflow step (those
            the planning checkpoint passed) is written ``dispatched`` under
            this lease (see :class:`PlannedLease`).
    """
    if not plans:
        return []
    inserted: set[uuid.UUID] = set()
    for chunk in _chunks(list(plans), BATCH):
        inserted.update(_insert_events(conn, [p.event for p in chunk]))
    fresh = [p for p in plans if p.event_id in inserted]
    if strict:
        _refuse_changed_payloads(conn, [p for p in plans if p.event_id not in inserted], fresh)
    if fresh:
        for checkpoint in checkpoints:
            checkpoint(conn, fresh)
        if lease is not None:
            for p in fresh:
                for d in p.deliveries:
                    if d.status == Status.PENDING and d.not_before is None and d.step is None:
                        d.lease = lease
        notifications = [n for p in fresh for n in p.notifications]
        deliveries: list[dict[str, Any]] = []
        decisions: list[dict[str, Any]] = []
        for p in fresh:
            rows, decided = new_rows(((d, p.event_id, p.event["tenant"]) for d in p.deliveries),
                                     p.event["created_at"])
            deliveries += rows
            decisions += decided
        for table, rows in ((notifications_table, notifications), (deliveries_table, deliveries),
                            (decisions_table, decisions)):
            for chunk in _chunks(rows, BATCH):
                insert_rows(conn, table, chunk)
    results = []
    for the_plan in plans:
        if the_plan.event_id in inserted:
            results.append(TriggerResult(
                event_id=the_plan.event_id,
                duplicate=False,
                delivery_ids=tuple(d.id for d in the_plan.deliveries),
                notification_ids=tuple(n["id"] for n in the_plan.notifications),
            ))
        else:
            results.append(existing_result(conn, the_plan.event["tenant"], the_plan.event["idempotency_key"]))
    return results


def _refuse_changed_payloads(conn: Connection, duplicates: Sequence[Plan], fresh: Sequence[Plan]) -> None:
    if not duplicates:
        return
    e = events_table
    keys = {(p.event["tenant"], p.event["idempotency_key"]): p for p in duplicates}
    stored: dict[tuple[str, str], Any] = {}
    for chunk in _chunks(list(keys), BATCH):
        for row in conn.execute(sa.select(e.c.tenant, e.c.idempotency_key, e.c.payload_hash, e.c.notifier_key)
                                .where(sa.tuple_(e.c.tenant, e.c.idempotency_key).in_(chunk))):
            stored[(row.tenant, row.idempotency_key)] = row
    seen: dict[tuple[str, str], str] = {(p.event["tenant"], p.event["idempotency_key"]): p.event["payload_hash"]
                                        for p in fresh}
    for key, the_plan in keys.items():
        first = stored.get(key)
        expected = seen.get(key) or (first.payload_hash if first is not None else None)
        if expected is None or expected == the_plan.event["payload_hash"]:
            continue
        if fresh:
            # Nothing of this call may stay behind in the caller's transaction.
            conn.execute(sa.delete(e).where(e.c.id.in_([p.event_id for p in fresh])))
        tenant, idempotency_key = key
        notifier = first.notifier_key if first is not None else the_plan.event["notifier_key"]
        raise IdempotencyConflictError(
            f"idempotency_key {idempotency_key!r}" + (f" (tenant {tenant!r})" if tenant else "")
            + f" was already used for a {notifier!r} event with other params or recipients; use a new key "
            "for a new event (or Chimeway(idempotency='key') to return the first event whatever the payload)"
        )


def _insert_events(conn: Connection, events: list[dict[str, Any]]) -> set[uuid.UUID]:
    if len(events) == 1:
        # The common case reuses one compiled statement.
        return set(conn.execute(_insert_event_statement(conn.dialect.name), events[0]).scalars())
    # One statement, so RETURNING names exactly the rows that went in
    # (executemany cannot say which rows a conflict skipped).
    return set(insert_new_rows(conn, events_table, events, unique=("tenant", "idempotency_key")))


@lru_cache(maxsize=4)
def _insert_event_statement(dialect: str) -> Any:
    return (insert(dialect, events_table)
            .on_conflict_do_nothing(index_elements=["tenant", "idempotency_key"])
            .returning(events_table.c.id))


def _chunks(rows: list[Any], size: int) -> list[list[Any]]:
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def payload_hash(notifier_key: str, stored_params: Mapping[str, Any], recipient_ids: Sequence[str]) -> str:
    """What an idempotency key promises: the same notifier, params (as stored) and recipients.

    Computed from the stored (redacted) params, so it reveals nothing the
    event row does not.
    """
    material = json.dumps({"notifier": notifier_key, "params": stored_params, "recipients": sorted(recipient_ids)},
                          sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(material.encode("utf-8")).hexdigest()


def existing_result(conn: Connection, tenant: str, idempotency_key: str) -> TriggerResult:
    """The result for an idempotency key that was already used."""
    event_id = conn.execute(
        sa.select(Event.id).where(Event.tenant == tenant, Event.idempotency_key == idempotency_key)
    ).scalar_one()
    rows = conn.execute(
        sa.select(Delivery.id, Delivery.notification_id)
        .where(Delivery.event_id == event_id)
        .order_by(Delivery.id)
    ).all()
    notification_ids = conn.execute(
        sa.select(Notification.id).where(Notification.event_id == event_id).order_by(Notification.id)
    ).scalars().all()
    return TriggerResult(
        event_id=event_id,
        duplicate=True,
        delivery_ids=tuple(r.id for r in rows),
        notification_ids=tuple(notification_ids),
    )
