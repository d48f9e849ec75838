"""The policy rules, each one object that runs at both checkpoints.

A rule looks at one :class:`Subject` (a delivery being planned, or claimed
right before its send) at one :class:`Checkpoint` and returns the
:class:`~chimeway.decisions.Decision` values it takes, in order; the first
that stops the delivery ends the sequence. Rules that only make sense at one
checkpoint (dedupe at planning) return nothing at the other.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chimeway.db import insert
from chimeway.decisions import Decision
from chimeway.deliveries import PlannedDelivery
from chimeway.digest import check_carrier, collect, digest_of
from chimeway.ids import new_id
from chimeway.jsonvalues import key_hash, shown_key
from chimeway.models import cap_usage_table, dedupe_marks_table, policy_locks_table
from chimeway.notifier import Notifier
from chimeway.planning import Plan
from chimeway.policy.options import Cap, caps_of, dedupe_of, human
from chimeway.preferences import PreferenceEntry, Settings, resolve
from chimeway.quiet_hours import quiet_until, zone
from chimeway.values import Recipient

__all__ = ["Caps", "Checkpoint", "Dedupes", "Digests", "Preferences", "QuietHours", "Rule", "Subject"]

PLANNING = "planning"
BEFORE_SEND = "before_send"

Decorate = Callable[[dict[str, Any], Recipient, str, type[Notifier], str], dict[str, Any]]


@dataclass(kw_only=True)
class Subject:
    """One delivery a checkpoint looks at.

    Args:
        delivery_id: the delivery.
        notifier: its notifier class.
        tenant: its tenant as stored (``""`` for none).
        recipient: who receives it.
        channel: the channel name.
        planned: at planning, the delivery about to be written.
        plan: at planning, its plan (params, event).
    """

    delivery_id: uuid.UUID
    notifier: type[Notifier]
    tenant: str
    recipient: Recipient
    channel: str
    planned: PlannedDelivery | None = None
    plan: Plan | None = None


@dataclass(kw_only=True)
class Checkpoint:
    """One pass of the rules: where, when, and what was read for every subject at once.

    Args:
        name: ``planning`` or ``before_send``.
        conn: the transaction the rules read and write in.
        now: the clock's time.
        write: record marks, usage and digests (``False`` for a preview).
        preferences: (tenant, recipient) → preference rows, read before the pass.
        settings: (tenant, recipient) → time zone and quiet hours, read before the pass.
        decorate: adds channel-specific fields to a rendered digest.
    """

    name: str
    conn: Connection
    now: datetime
    write: bool
    preferences: Mapping[tuple[str, str], list[PreferenceEntry]]
    settings: Mapping[tuple[str, str], Settings]
    decorate: Decorate
    # Dedupe marks already looked at in this pass: (event, tenant, notifier, recipient, key) → first event.
    marks: dict[tuple[uuid.UUID, str, str, str, str], Any] = field(default_factory=dict)
    # Cap locks taken in this pass, and what a preview would have counted.
    locked: set[tuple[str, str, str]] = field(default_factory=set)
    counted: dict[tuple[str, str, str], int] = field(default_factory=dict)

    @property
    def planning(self) -> bool:
        """Whether this is the planning checkpoint."""
        return self.name == PLANNING


class Rule(Protocol):
    """A policy rule: what it decides about one delivery at one checkpoint."""

    name: str

    def check(self, point: Checkpoint, subject: Subject) -> Sequence[Decision]: ...


class PolicySettings(Protocol):
    """What rules read of the app's policy configuration."""

    caps: list[Cap]
    quiet_hours_exempt: set[str]


class Preferences:
    """Opted out ⇒ ``suppressed`` (``opted_out``); a critical notifier goes through (and says so)."""

    name = "preferences"

    def check(self, point: Checkpoint, subject: Subject) -> Sequence[Decision]:
        entries = point.preferences.get((subject.tenant, subject.recipient.id), [])
        resolution = resolve(entries, subject.notifier, subject.channel)
        if not resolution.enabled:
            return [Decision(status="suppressed", reason="opted_out", rule=self.name,
                             summary=f"suppressed: {resolution.why}", inputs=resolution.as_detail())]
        if resolution.rule == "critical" and point.planning:
            return [Decision(status="pending", reason="critical", rule=self.name, summary=resolution.why,
                             inputs=resolution.as_detail())]
        return []


class Dedupes:
    """Same notifier + recipient + key within the window ⇒ ``suppressed`` (``duplicate``); planning only.

    The key comes from the params as given (a key may be a token) and is
    stored hashed; ``explain`` shows it computed from the stored params.
    """

    name = "dedupe"

    def check(self, point: Checkpoint, subject: Subject) -> Sequence[Decision]:
        dedupe = dedupe_of(subject.notifier)
        plan = subject.plan
        if dedupe is None or plan is None or not point.planning:
            return []
        raw = dedupe.key(plan.params)
        if raw is None:
            return []
        key = key_hash(str(raw))
        cls = subject.notifier
        mark = (plan.event_id, subject.tenant, cls.key, subject.recipient.id, key)
        if mark not in point.marks:
            point.marks[mark] = self._first(point, plan, subject, key, dedupe.window)
        first = point.marks[mark]
        if first is None:
            return []
        shown = shown_key(dedupe.key, plan.event["params"])
        return [Decision(
            status="suppressed", reason="duplicate", rule=self.name,
            summary=(f"suppressed: duplicate of event {first.event_id} (dedupe key {shown!r}, "
                     f"window {human(dedupe.window)}, first at {first.at.isoformat()})"),
            inputs={"dedupe_key": shown, "dedupe_key_hash": key, "window_seconds": dedupe.window.total_seconds(),
                    "first_event_id": str(first.event_id), "first_at": first.at.isoformat(),
                    "expires_at": first.expires_at.isoformat()},
        )]

    @staticmethod
    def _first(point: Checkpoint, plan: Plan, subject: Subject, key: str, window: Any) -> Any:
        """The earlier event's live mark, or ``None`` when this event takes the mark."""
        m = dedupe_marks_table
        conn, now = point.conn, point.now
        where = (m.c.tenant == subject.tenant, m.c.notifier_key == subject.notifier.key,
                 m.c.recipient_id == subject.recipient.id, m.c.dedupe_key == key)
        if not point.write:
            found = conn.execute(sa.select(m).where(*where)).first()
            return found if found is not None and found.expires_at > now else None
        stmt = insert(conn, m).values(
            tenant=subject.tenant, notifier_key=subject.notifier.key, recipient_id=subject.recipient.id,
            dedupe_key=key, event_id=plan.event_id, at=now, expires_at=now + window)
        stmt = stmt.on_conflict_do_update(
            index_elements=["tenant", "notifier_key", "recipient_id", "dedupe_key"],
            set_={"event_id": stmt.excluded.event_id, "at": stmt.excluded.at, "expires_at": stmt.excluded.expires_at},
            where=m.c.expires_at <= stmt.excluded.at,
        ).returning(m.c.dedupe_key)
        # Inserted or taken over an expired mark: this event is the first.
        if conn.execute(stmt).first() is not None:
            return None
        return conn.execute(sa.select(m).where(*where)).first()


class Digests:
    """Collect a digested channel's deliveries into one batch per window (see :mod:`chimeway.digest`)."""

    name = "digest"

    def check(self, point: Checkpoint, subject: Subject) -> Sequence[Decision]:
        digest = digest_of(subject.notifier)
        if digest is None:
            return []
        if point.planning:
            if subject.plan is None or subject.planned is None or not digest.applies_to(subject.channel):
                return []
            return collect(point.conn, digest=digest, plan=subject.plan, delivery=subject.planned, now=point.now,
                           write=point.write, decorate=point.decorate)
        carrier = check_carrier(point.conn, subject.delivery_id, point.now, point.decorate)
        return [carrier] if carrier is not None else []


class QuietHours:
    """Inside the recipient's local quiet window ⇒ ``deferred`` (``quiet_hours``) until it ends.

    Args:
        settings: the app's policy configuration (``quiet_hours_exempt``).
    """

    name = "quiet_hours"

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings

    def check(self, point: Checkpoint, subject: Subject) -> Sequence[Decision]:
        if subject.notifier.critical or subject.channel in self.settings.quiet_hours_exempt:
            return []
        found = point.settings.get((subject.tenant, subject.recipient.id))
        if found is None or found.quiet_hours is None:
            return []
        tz_name = found.timezone or subject.recipient.timezone or "UTC"
        tz = zone(tz_name)
        until = quiet_until(point.now, found.quiet_hours, tz)
        if until is None:
            return []
        local_until = until.astimezone(tz).isoformat(timespec="minutes")
        return [Decision(
            status="deferred", reason="quiet_hours", rule=self.name, until=until,
            summary=f"deferred: quiet hours {found.quiet_hours} {tz_name}, until {local_until}",
            inputs={"quiet_hours": str(found.quiet_hours), "timezone": tz_name,
                    "local_time": point.now.astimezone(tz).isoformat(timespec="minutes"), "local_until": local_until},
        )]


class Caps:
    """At most N deliveries per recipient × channel per sliding window ⇒ ``suppressed`` (``cap_reached``).

    A delivery is counted once: at planning, or before its send if it was
    deferred or planned without the planning checkpoint (workflow steps).

    Args:
        settings: the app's policy configuration (app-wide ``caps``).
    """

    name = "caps"

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings

    def caps_for(self, cls: type[Notifier], channel: str) -> list[tuple[str, Cap]]:
        """The app's and the notifier's caps on ``channel``, with their scope."""
        return ([("app", c) for c in self.settings.caps if c.applies_to(channel)]
                + [("notifier", c) for c in caps_of(cls) if c.applies_to(channel)])

    def check(self, point: Checkpoint, subject: Subject) -> Sequence[Decision]:
        cls = subject.notifier
        caps = self.caps_for(cls, subject.channel)
        if cls.critical or not caps:
            return []
        conn = point.conn
        u = cap_usage_table
        if not point.planning and conn.execute(
                sa.select(u.c.id).where(u.c.delivery_id == subject.delivery_id)).first() is not None:
            return []  # counted when it was planned
        lock = (subject.tenant, subject.recipient.id, subject.channel)
        if point.write and lock not in point.locked:
            # Subjects come in (tenant, recipient, channel) order, so concurrent
            # passes take these locks in one order.
            _upsert_lock(conn, *lock, point.now)
            point.locked.add(lock)
        for scope, cap in caps:
            where = [u.c.tenant == subject.tenant, u.c.recipient_id == subject.recipient.id,
                     u.c.channel == subject.channel, u.c.at > point.now - cap.window]
            if scope == "notifier":
                where.append(u.c.notifier_key == cls.key)
            used = int(conn.execute(sa.select(sa.func.count()).select_from(u).where(*where)).scalar_one())
            # A preview records nothing, so count what this pass would have recorded.
            used += point.counted.get((scope, subject.channel, subject.recipient.id), 0)
            if used >= cap.limit:
                label = "app" if scope == "app" else f"notifier {cls.key}"
                return [Decision(
                    status="suppressed", reason="cap_reached", rule=self.name,
                    summary=(f"suppressed: {label} cap of {cap.limit} per {human(cap.window)} "
                             f"on {subject.channel} reached ({used} in the window)"),
                    inputs={"cap_scope": scope, "limit": cap.limit, "window_seconds": cap.window.total_seconds(),
                            "used": used, "channel": subject.channel},
                )]
        if point.write:
            conn.execute(sa.insert(u).values(id=new_id(), tenant=subject.tenant, recipient_id=subject.recipient.id,
                                             channel=subject.channel, notifier_key=cls.key,
                                             delivery_id=subject.delivery_id, at=point.now))
        else:
            for scope, _cap in caps:
                slot = (scope, subject.channel, subject.recipient.id)
                point.counted[slot] = point.counted.get(slot, 0) + 1
        return []


def _upsert_lock(conn: Connection, tenant: str, recipient_id: str, channel: str, now: datetime) -> None:
    # DO UPDATE (not DO NOTHING) so the statement takes the row lock on
    # PostgreSQL; racing transactions queue here until the holder commits.
    stmt = insert(conn, policy_locks_table).values(
        tenant=tenant, recipient_id=recipient_id, channel=channel, touched_at=now)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["tenant", "recipient_id", "channel"], set_={"touched_at": stmt.excluded.touched_at}))
