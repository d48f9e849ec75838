"""The policy: its configuration, its rules in order, and the one evaluator both checkpoints use."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chimeway.channels.base import Channel
from chimeway.clock import Clock
from chimeway.db import tenant_key
from chimeway.decisions import Decision
from chimeway.deliveries import PlannedDelivery, Status, decide
from chimeway.errors import InvalidNotifierError
from chimeway.models import cap_usage_table
from chimeway.notifier import Notifier, get_notifier
from chimeway.planning import Plan
from chimeway.policy.options import Cap
from chimeway.policy.rules import (
    BEFORE_SEND,
    PLANNING,
    Caps,
    Checkpoint,
    Dedupes,
    Digests,
    Preferences,
    QuietHours,
    Rule,
    Subject,
)
from chimeway.preferences import PreferenceEntry, Settings, load_recipient_policy
from chimeway.unsubscribe import DEFAULT_TOKEN_TTL, build_url, sign_token
from chimeway.values import Message, Recipient

__all__ = ["Policy", "PreviewItem", "preview"]

log = logging.getLogger("chimeway.policy")


class Policy:
    """The rules, their configuration and the two checkpoints.

    The rules run in this order for each delivery; the first one that stops
    it wins: preferences, dedupe, digest, quiet hours, caps. The same list
    runs at planning (in the caller's transaction) and before send (in the
    executor's claim transaction).

    Args:
        clock: the time source.
        channels: channel name → channel (to find email channels).

    Attributes:
        caps: app-wide caps, applied with each notifier's own ``caps``.
        quiet_hours_exempt: channels quiet hours never hold (default ``{"in_app"}``).
        secret: HMAC key for unsubscribe tokens.
        unsubscribe_base_url: when set (with ``secret``), email deliveries get
            an ``unsubscribe_url`` field.
        unsubscribe_channels: channel names that get the link (default: every
            channel named ``email`` or whose channel's ``name`` is ``email``).
        token_ttl: how long unsubscribe links work.
    """

    def __init__(self, *, clock: Clock, channels: Mapping[str, Channel]) -> None:
        self.clock = clock
        self.channels = channels
        self.caps: list[Cap] = []
        self.quiet_hours_exempt: set[str] = {"in_app"}
        self.secret: str | bytes | None = None
        self.unsubscribe_base_url: str | None = None
        self.unsubscribe_channels: set[str] | None = None
        self.token_ttl: timedelta = DEFAULT_TOKEN_TTL
        self.rules: tuple[Rule, ...] = (Preferences(), Dedupes(), Digests(), QuietHours(self), Caps(self))

    # -- the two checkpoints ------------------------------------------------------------

    def at_planning(self, conn: Connection, plans: Sequence[Plan], *, write: bool = True) -> None:
        """The planning checkpoint over every fresh plan of one ``trigger``/``trigger_many``.

        Sets each planned delivery's status, reason and decisions; email
        deliveries that go on get their unsubscribe link.

        Args:
            conn: the caller's connection, inside its transaction.
            plans: the plans about to be written.
            write: record marks, usage and digests (``False`` for a preview: reads only).
        """
        subjects = [
            Subject(delivery_id=d.id, notifier=type(p.notifier), tenant=str(p.event["tenant"]), recipient=d.recipient,
                    channel=d.channel, planned=d, plan=p)
            for p in plans for d in p.deliveries if d.status == Status.PENDING
        ]
        if not subjects:
            return
        point = self._checkpoint(PLANNING, conn, plans[0].event["created_at"], subjects, write=write)
        self._run(point, subjects)
        for s in subjects:
            planned = s.planned
            assert planned is not None
            if planned.status in (Status.PENDING, Status.DEFERRED) and not planned.fields.get("unsubscribe_url"):
                planned.fields = self.decorate_fields(planned.fields, s.recipient, s.tenant, s.notifier, s.channel)

    def before_send(self, conn: Connection, messages: Sequence[Message]) -> dict[uuid.UUID, Decision]:
        """The pre-send checkpoint for every message of one claim: the deliveries to stop, and why.

        Preferences and quiet hours may have changed since planning; a
        deferred delivery is counted against caps now.

        Args:
            conn: the executor's claim transaction.
            messages: the claimed messages.
        """
        subjects: list[Subject] = []
        for message in messages:
            try:
                cls = get_notifier(message.notifier_key)
            except InvalidNotifierError:
                log.warning("notifier %r is not registered in this process; policy not re-checked for %s",
                            message.notifier_key, message.delivery_id)
                continue
            subjects.append(Subject(delivery_id=message.delivery_id, notifier=cls,
                                    tenant=tenant_key(message.tenant), recipient=message.recipient,
                                    channel=message.channel))
        if not subjects:
            return {}
        point = self._checkpoint(BEFORE_SEND, conn, self.clock.now(), subjects, write=True)
        stopped = self._run(point, subjects)
        suppressed = [i for i, d in stopped.items() if d.status == Status.SUPPRESSED]
        if suppressed:
            # Never sent: it must not use up the recipient's cap.
            conn.execute(sa.delete(cap_usage_table).where(cap_usage_table.c.delivery_id.in_(suppressed)))
        return stopped

    def _checkpoint(self, name: str, conn: Connection, now: datetime, subjects: Sequence[Subject], *,
                    write: bool) -> Checkpoint:
        # Preferences and settings of every recipient, read once per tenant.
        by_tenant: dict[str, set[str]] = {}
        for s in subjects:
            by_tenant.setdefault(s.tenant, set()).add(s.recipient.id)
        preferences: dict[tuple[str, str], list[PreferenceEntry]] = {}
        settings: dict[tuple[str, str], Settings] = {}
        for tenant, ids in by_tenant.items():
            found_preferences, found_settings = load_recipient_policy(conn, tenant, ids)
            preferences.update(((tenant, rid), entries) for rid, entries in found_preferences.items())
            settings.update(((tenant, rid), found) for rid, found in found_settings.items())
        return Checkpoint(name=name, conn=conn, now=now, write=write, preferences=preferences, settings=settings,
                          decorate=self.decorate_fields)

    def _run(self, point: Checkpoint, subjects: Sequence[Subject]) -> dict[uuid.UUID, Decision]:
        """Run the rules over each subject in (tenant, recipient, channel) order; returns the stops.

        The order is also the order locks are taken in (dedupe marks, cap
        locks), so concurrent passes never wait on each other in a cycle.
        """
        stopped: dict[uuid.UUID, Decision] = {}
        for subject in sorted(subjects, key=lambda s: (s.tenant, s.recipient.id, s.channel)):
            for rule in self.rules:
                stop = None
                for decision in rule.check(point, subject):
                    if subject.planned is not None:
                        decide(subject.planned, decision, checkpoint=point.name)
                    if decision.stops:
                        stop = decision
                        break
                if stop is not None:
                    stopped[subject.delivery_id] = stop
                    break
        return stopped

    # -- unsubscribe links ------------------------------------------------------------------

    def _is_email(self, channel: str) -> bool:
        if self.unsubscribe_channels is not None:
            return channel in self.unsubscribe_channels
        configured = self.channels.get(channel)
        return channel == "email" or getattr(configured, "name", None) == "email"

    def decorate_fields(self, fields: dict[str, Any], recipient: Recipient, tenant: str, cls: type[Notifier],
                        channel: str) -> dict[str, Any]:
        """``fields`` with an ``unsubscribe_url`` when the channel is email and links are configured.

        Args:
            fields: the rendered message.
            recipient: who receives it.
            tenant: the stored tenant.
            cls: the notifier.
            channel: the channel name.
        """
        if (not self.unsubscribe_base_url or not self.secret or cls.critical
                or not self._is_email(channel)):
            return fields
        token = sign_token(self.secret, recipient=recipient.id, tenant=tenant or None, notifier=cls.key,
                           category=None, channel=channel, now=self.clock.now(), ttl=self.token_ttl)
        return {**fields, "unsubscribe_url": build_url(self.unsubscribe_base_url, token)}


@dataclass(frozen=True, kw_only=True)
class PreviewItem:
    """What a trigger would do for one recipient × channel.

    Args:
        recipient: the recipient.
        channel: the channel.
        fields: the rendered message (with the digest not yet applied).
        status: ``pending`` (would be sent now), ``deferred``, ``suppressed`` or ``cancelled``.
        reason: the reason, when not ``pending``.
        why: one readable sentence per decision, in rule order.
        not_before: when a deferred delivery would go out.
        decisions: the decisions as ``explain`` would show them.
    """

    recipient: Recipient
    channel: str
    fields: Mapping[str, Any]
    status: str
    reason: str | None
    why: tuple[str, ...]
    not_before: datetime | None
    decisions: tuple[Mapping[str, Any], ...]


def preview(policy: Policy, conn: Connection, plan: Plan) -> list[PreviewItem]:
    """Evaluate the rules over a rendered plan without writing anything.

    A workflow notifier is previewed as its first step.

    Args:
        policy: the app's policy.
        conn: read from only.
        plan: from :func:`chimeway.planning.plan`, rendered at the preview time.
    """
    if plan.program is not None and not plan.deliveries:
        plan.deliveries = [
            PlannedDelivery(id=uuid.uuid4(), notification_id=n["id"], recipient=Recipient.from_json(n["recipient"]),
                            channel=str(getattr(plan.program.ops[step], "channel", "")), fields=fields, step=step)
            for n in plan.notifications for (rid, step), fields in plan.rendered.items()
            if rid == n["recipient_id"]
        ]
    policy.at_planning(conn, [plan], write=False)
    out = []
    for d in plan.deliveries:
        why = tuple(str(item.get("detail", {}).get("summary") or item.get("detail", {}).get("reason") or item["event"])
                    for item in d.decisions)
        if not why and d.status == Status.PENDING:
            why = ("sent now: no rule stops it",)
        out.append(PreviewItem(recipient=d.recipient, channel=d.channel, fields=dict(d.fields), status=d.status,
                               reason=d.reason, why=why, not_before=d.not_before,
                               decisions=tuple(d.decisions)))
    return out
