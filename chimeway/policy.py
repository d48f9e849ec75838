"""Delivery policy: preferences, dedupe, digests, quiet hours and caps.

The same rules run at two checkpoints:

- ``planning``: inside the caller's transaction, after the event is known
  not to be a duplicate and before the deliveries are written;
- ``before_send``: inside the executor's claim transaction, because
  preferences and quiet hours may have changed since planning.

Rules run in this order for each delivery; the first one that stops it wins:

1. **preferences** — opted out ⇒ ``suppressed`` (``opted_out``). A
   ``critical`` notifier bypasses opt-outs.
2. **dedupe** — same notifier + recipient + dedupe key within the window ⇒
   ``suppressed`` (``duplicate``). Planning only.
3. **digest** — collected into a batch ⇒ the first delivery is ``deferred``
   (``digest``) and carries the digest; the others are ``suppressed``
   (``digested``). See :mod:`chimeway.digest`.
4. **quiet hours** — inside the recipient's local window ⇒ ``deferred``
   (``quiet_hours``) until it ends; never dropped. ``critical`` bypasses it;
   channels in ``quiet_hours_exempt`` (``in_app``) are never held.
5. **caps** — at most N deliveries per recipient × channel per sliding
   window ⇒ ``suppressed`` (``cap_reached``). ``critical`` bypasses it. A
   delivery is counted once: at planning, or before sending if it was
   deferred or planned without the planning checkpoint.

Then email deliveries get an ``unsubscribe_url`` field when an unsubscribe
base URL and secret are configured.

Every stop is recorded as a decision row (checkpoint, rule, reason, summary
and the rule's inputs) that ``app.explain()`` shows.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chimeway.channels.base import Channel
from chimeway.clock import Clock
from chimeway.db import insert, tenant_key
from chimeway.deliveries import PlannedDelivery, SendDecision
from chimeway.digest import Digest, check_carrier, collect, digest_of
from chimeway.errors import ConfigurationError, InvalidNotifierError
from chimeway.ids import new_id
from chimeway.jsonvalues import key_hash, shown_key
from chimeway.models import (
    cap_usage_table,
    dedupe_marks_table,
    digest_items_table,
    digests_table,
    policy_locks_table,
)
from chimeway.notifier import Notifier, get_notifier
from chimeway.planning import Plan
from chimeway.preferences import (
    PreferenceEntry,
    Settings,
    load_preferences,
    load_recipient_policy,
    load_settings,
    resolve,
)
from chimeway.quiet_hours import quiet_until, zone
from chimeway.unsubscribe import DEFAULT_TOKEN_TTL, build_url, sign_token
from chimeway.values import Message, Recipient

__all__ = ["Cap", "Dedupe", "Digest", "Policy", "PreviewItem", "Verdict", "caps_of", "dedupe_of", "preview", "prune"]

log = logging.getLogger("chimeway.policy")


@dataclass(frozen=True, kw_only=True)
class Cap:
    """At most ``limit`` deliveries per recipient × channel within ``window``.

    Args:
        limit: how many.
        window: the sliding window.
        channel: the channel it applies to; ``None`` applies it to each
            channel separately.
    """

    limit: int
    window: timedelta
    channel: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.limit, int) or self.limit < 0:
            raise ConfigurationError(f"Cap limit must be an int >= 0, got {self.limit!r}")
        if not isinstance(self.window, timedelta) or self.window <= timedelta(0):
            raise ConfigurationError(f"Cap window must be a positive timedelta, got {self.window!r}")

    def applies_to(self, channel: str) -> bool:
        """Whether this cap counts deliveries on ``channel``.

        Args:
            channel: the channel name.
        """
        return self.channel is None or self.channel == channel


@dataclass(frozen=True, kw_only=True)
class Dedupe:
    """Drop a notifier's repeats for one recipient within a window.

    Args:
        key: ``params -> str | None``; ``None`` disables dedupe for that event.
        window: how long the first event's key blocks repeats.
    """

    key: Callable[[Mapping[str, Any]], Any]
    window: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        if not callable(self.key):
            raise InvalidNotifierError("Dedupe key must be a function of params")
        if not isinstance(self.window, timedelta) or self.window <= timedelta(0):
            raise InvalidNotifierError(f"Dedupe window must be a positive timedelta, got {self.window!r}")


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """One rule's decision to stop a delivery.

    Args:
        status: ``suppressed`` or ``deferred``.
        reason: the stored reason (see the guide's table).
        rule: the rule that decided.
        summary: one readable sentence, e.g. ``deferred: quiet hours 22:00-07:00 ...``.
        until: when a deferred delivery is due again.
        detail: the rule's inputs (JSON values).
    """

    status: str
    reason: str
    rule: str
    summary: str
    until: datetime | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_detail(self) -> dict[str, Any]:
        """The decision row's detail: rule, reason, summary, ``until`` and the inputs."""
        out: dict[str, Any] = {"rule": self.rule, "reason": self.reason, "summary": self.summary,
                               **dict(self.detail)}
        if self.until is not None:
            out["until"] = self.until.isoformat()
        return out

    def as_send_decision(self) -> SendDecision:
        """The same verdict for the executor's pre-send checkpoint."""
        return SendDecision(status=self.status, reason=self.reason, until=self.until, rule=self.rule,
                            detail={"summary": self.summary, **dict(self.detail)})


def dedupe_of(notifier: type[Notifier]) -> Dedupe | None:
    """The notifier's ``dedupe_key`` as a :class:`Dedupe` (a bare function gets 24 h).

    Args:
        notifier: the notifier class.
    """
    value = notifier.dedupe_key
    if value is None or isinstance(value, Dedupe):
        return value
    if callable(value):
        return Dedupe(key=value)
    raise InvalidNotifierError(f"notifier {notifier.key!r}: `dedupe_key` must be a Dedupe or a function")


def caps_of(notifier: type[Notifier]) -> list[Cap]:
    """The notifier's own ``caps``, checked.

    Args:
        notifier: the notifier class.
    """
    caps = list(notifier.caps or ())
    for cap in caps:
        if not isinstance(cap, Cap):
            raise InvalidNotifierError(f"notifier {notifier.key!r}: `caps` must be a list of chimeway.policy.Cap")
    return caps


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _upsert_lock(conn: Connection, tenant: str, recipient_id: str, channel: str, now: datetime) -> None:
    # DO UPDATE (not DO NOTHING) so the statement takes the row lock on
    # PostgreSQL; racing transactions queue here until the holder commits.
    stmt = insert(conn, policy_locks_table).values(
        tenant=tenant, recipient_id=recipient_id, channel=channel, touched_at=now)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=["tenant", "recipient_id", "channel"], set_={"touched_at": stmt.excluded.touched_at}))


class _Prefetched(threading.local):
    value: tuple[dict[tuple[str, str], list[PreferenceEntry]], dict[tuple[str, str], Settings]] | None = None


class Policy:
    """The rules, their configuration and the two checkpoints.

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
        # Per thread: what before_send_batch read for the claim being checked.
        self._prefetched = _Prefetched()

    # -- planning ---------------------------------------------------------------

    def planning_check(self, conn: Connection, plan: Plan) -> None:
        """The planning checkpoint (registered in ``app.planning_checks``).

        Args:
            conn: the caller's connection, inside its transaction.
            plan: the plan about to be written.
        """
        self.evaluate(conn, plan, write=True)

    def evaluate(self, conn: Connection, plan: Plan, *, write: bool) -> None:
        """Run the rules over a plan, setting each delivery's status, reason and decisions.

        Args:
            conn: a connection; with ``write=False`` it is only read from.
            plan: the plan.
            write: record usage, dedupe marks and digests (``False`` for previews).
        """
        cls = type(plan.notifier)
        if write and cls.workflow is not None:
            # The workflow planner replaces these deliveries with its first
            # step's; usage, marks or batches recorded for them would outlive
            # them. Its deliveries meet the rules at the pre-send checkpoint.
            return
        now: datetime = plan.event["created_at"]
        tenant = str(plan.event["tenant"])
        params = dict(plan.event["params"])
        live = [d for d in plan.deliveries if d.status == "pending"]
        if not live:
            return
        ids = {d.recipient.id for d in live}
        preferences, settings = self._recipient_policy(conn, tenant, ids)
        for d in live:
            resolution = resolve(preferences[d.recipient.id], cls, d.channel)
            if not resolution.enabled:
                self._stop(d, Verdict(status="suppressed", reason="opted_out", rule="preferences",
                                      summary=f"suppressed: {resolution.why}", detail=resolution.as_detail()))
            elif resolution.rule == "critical":
                d.decisions.append({"event": "allowed", "checkpoint": "planning", "detail": {
                    "rule": "preferences", "summary": resolution.why, **resolution.as_detail()}})
        # Keys come from the params as given (a key may be a token); they are
        # stored hashed, and shown as computed from the redacted params.
        self._dedupe(conn, cls, tenant, plan.params, params, [d for d in live if d.status == "pending"], now,
                     write, plan.event_id)
        digest = digest_of(cls)
        if digest is not None:
            for d in live:
                if d.status == "pending" and digest.applies_to(d.channel):
                    collect(conn, digest=digest, plan=plan, delivery=d, now=now, write=write,
                            decorate=self.decorate_fields)
        if not cls.critical:
            for d in live:
                if d.status == "pending":
                    verdict = self._quiet(settings.get(d.recipient.id), d.recipient, d.channel, now)
                    if verdict is not None:
                        self._stop(d, verdict)
            self._caps(conn, cls, tenant, [d for d in live if d.status == "pending"], now, write)
        for d in live:
            if d.status in ("pending", "deferred") and not d.fields.get("unsubscribe_url"):
                d.fields = self.decorate_fields(d.fields, d.recipient, tenant, cls, d.channel)

    @staticmethod
    def _stop(delivery: PlannedDelivery, verdict: Verdict) -> None:
        delivery.status = verdict.status
        delivery.reason = verdict.reason
        if verdict.until is not None:
            delivery.not_before = verdict.until
        delivery.decisions.append({"event": verdict.status, "checkpoint": "planning",
                                   "detail": verdict.as_detail()})

    # -- dedupe -----------------------------------------------------------------

    def _dedupe(self, conn: Connection, cls: type[Notifier], tenant: str, params: Mapping[str, Any],
                stored_params: Mapping[str, Any], live: Sequence[PlannedDelivery], now: datetime, write: bool,
                event_id: uuid.UUID) -> None:
        dedupe = dedupe_of(cls)
        if dedupe is None or not live:
            return
        raw = dedupe.key(params)
        if raw is None:
            return
        key = key_hash(str(raw))
        shown = shown_key(dedupe.key, stored_params)
        m = dedupe_marks_table
        # Sorted, so two triggers sharing recipients take the marks in one order.
        for recipient_id in sorted({d.recipient.id for d in live}):
            first: Any = None
            if write:
                stmt = insert(conn, m).values(
                    tenant=tenant, notifier_key=cls.key, recipient_id=recipient_id, dedupe_key=key,
                    event_id=event_id,
                    at=now, expires_at=now + dedupe.window)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["tenant", "notifier_key", "recipient_id", "dedupe_key"],
                    set_={"event_id": stmt.excluded.event_id, "at": stmt.excluded.at,
                          "expires_at": stmt.excluded.expires_at},
                    where=m.c.expires_at <= stmt.excluded.at,
                ).returning(m.c.dedupe_key)
                if conn.execute(stmt).first() is None:
                    first = self._mark(conn, tenant, cls.key, recipient_id, key)
            else:
                found = self._mark(conn, tenant, cls.key, recipient_id, key)
                first = found if found is not None and found.expires_at > now else None
            if first is None:
                continue
            for d in live:
                if d.recipient.id == recipient_id:
                    self._stop(d, Verdict(
                        status="suppressed", reason="duplicate", rule="dedupe",
                        summary=(f"suppressed: duplicate of event {first.event_id} (dedupe key {shown!r}, "
                                 f"window {_human(dedupe.window)}, first at {first.at.isoformat()})"),
                        detail={"dedupe_key": shown, "dedupe_key_hash": key, "window_seconds": dedupe.window.total_seconds(),
                                "first_event_id": str(first.event_id), "first_at": first.at.isoformat(),
                                "expires_at": first.expires_at.isoformat()},
                    ))

    @staticmethod
    def _mark(conn: Connection, tenant: str, notifier_key: str, recipient_id: str, key: str) -> Any:
        m = dedupe_marks_table
        return conn.execute(sa.select(m).where(
            m.c.tenant == tenant, m.c.notifier_key == notifier_key, m.c.recipient_id == recipient_id,
            m.c.dedupe_key == key)).first()

    # -- quiet hours ------------------------------------------------------------

    def _quiet(self, settings: Settings | None, recipient: Recipient, channel: str,
               now: datetime) -> Verdict | None:
        if channel in self.quiet_hours_exempt or settings is None or settings.quiet_hours is None:
            return None
        tz_name = settings.timezone or recipient.timezone or "UTC"
        tz = zone(tz_name)
        until = quiet_until(now, settings.quiet_hours, tz)
        if until is None:
            return None
        local_until = until.astimezone(tz).isoformat(timespec="minutes")
        return Verdict(
            status="deferred", reason="quiet_hours", rule="quiet_hours", until=until,
            summary=f"deferred: quiet hours {settings.quiet_hours} {tz_name}, until {local_until}",
            detail={"quiet_hours": str(settings.quiet_hours), "timezone": tz_name,
                    "local_time": now.astimezone(tz).isoformat(timespec="minutes"), "local_until": local_until},
        )

    # -- caps -------------------------------------------------------------------

    def _caps_for(self, cls: type[Notifier], channel: str) -> list[tuple[str, Cap]]:
        return ([("app", c) for c in self.caps if c.applies_to(channel)]
                + [("notifier", c) for c in caps_of(cls) if c.applies_to(channel)])

    def _caps(self, conn: Connection, cls: type[Notifier], tenant: str, live: Sequence[PlannedDelivery],
              now: datetime, write: bool) -> None:
        targets = [d for d in live if self._caps_for(cls, d.channel)]
        if not targets:
            return
        if write:
            for recipient_id, channel in sorted({(d.recipient.id, d.channel) for d in targets}):
                _upsert_lock(conn, tenant, recipient_id, channel, now)
        counted: dict[tuple[str, str, str], int] = {}
        for d in targets:
            verdict = self._count(conn, cls, tenant, d.recipient.id, d.channel, d.id, now, write, counted)
            if verdict is not None:
                self._stop(d, verdict)

    def _count(self, conn: Connection, cls: type[Notifier], tenant: str, recipient_id: str, channel: str,
               delivery_id: uuid.UUID, now: datetime, write: bool,
               pending: dict[tuple[str, str, str], int]) -> Verdict | None:
        u = cap_usage_table
        for scope, cap in self._caps_for(cls, channel):
            where = [u.c.tenant == tenant, u.c.recipient_id == recipient_id, u.c.channel == channel,
                     u.c.at > now - cap.window]
            if scope == "notifier":
                where.append(u.c.notifier_key == cls.key)
            used = int(conn.execute(sa.select(sa.func.count()).select_from(u).where(*where)).scalar_one())
            # Previews record nothing, so count what this plan would have recorded.
            used += pending.get((scope, channel, recipient_id), 0)
            if used >= cap.limit:
                label = "app" if scope == "app" else f"notifier {cls.key}"
                return Verdict(
                    status="suppressed", reason="cap_reached", rule="caps",
                    summary=(f"suppressed: {label} cap of {cap.limit} per {_human(cap.window)} "
                             f"on {channel} reached ({used} in the window)"),
                    detail={"cap_scope": scope, "limit": cap.limit, "window_seconds": cap.window.total_seconds(),
                            "used": used, "channel": channel},
                )
        if write:
            conn.execute(sa.insert(u).values(id=new_id(), tenant=tenant, recipient_id=recipient_id,
                                             channel=channel, notifier_key=cls.key, delivery_id=delivery_id,
                                             at=now))
        else:
            for scope, _cap in self._caps_for(cls, channel):
                pending[(scope, channel, recipient_id)] = pending.get((scope, channel, recipient_id), 0) + 1
        return None

    # -- unsubscribe links ------------------------------------------------------

    def _is_email(self, channel: str) -> bool:
        if self.unsubscribe_channels is not None:
            return channel in self.unsubscribe_channels
        configured = self.channels.get(channel)
        return channel == "email" or getattr(configured, "name", None) == "email"

    def decorate_fields(self, fields: dict[str, Any], recipient: Recipient, tenant: str, cls: type[Notifier],
                  channel: str) -> dict[str, Any]:
        if (not self.unsubscribe_base_url or not self.secret or cls.critical
                or not self._is_email(channel)):
            return fields
        token = sign_token(self.secret, recipient=recipient.id, tenant=tenant or None, notifier=cls.key,
                           category=None, channel=channel, now=self.clock.now(), ttl=self.token_ttl)
        return {**fields, "unsubscribe_url": build_url(self.unsubscribe_base_url, token)}

    # -- before send ------------------------------------------------------------

    def before_send(self, conn: Connection, message: Message) -> SendDecision | None:
        """The pre-send checkpoint for one message (``before_send_batch`` calls it per message).

        Args:
            conn: the executor's claim transaction.
            message: the claimed delivery's message.
        """
        try:
            cls = get_notifier(message.notifier_key)
        except InvalidNotifierError:
            log.warning("notifier %r is not registered in this process; policy not re-checked for %s",
                        message.notifier_key, message.delivery_id)
            return None
        verdict = self.check_message(conn, cls, message, self.clock.now())
        if isinstance(verdict, Verdict):
            if verdict.status == "suppressed":
                conn.execute(sa.delete(cap_usage_table).where(cap_usage_table.c.delivery_id == message.delivery_id))
            return verdict.as_send_decision()
        return verdict

    @contextmanager
    def prepare(self, conn: Connection, plans: Sequence[Plan]) -> Iterator[None]:
        """Read preferences and settings for every recipient of a batch of plans at once.

        Registered in ``app.planning_prepares``; the planning checks of the
        batch then read nothing per plan.

        Args:
            conn: the caller's connection.
            plans: the fresh plans of one ``trigger_many`` call.
        """
        by_tenant: dict[str, set[str]] = {}
        for the_plan in plans:
            ids = by_tenant.setdefault(str(the_plan.event["tenant"]), set())
            ids.update(d.recipient.id for d in the_plan.deliveries)
        self._prefetched.value = self._load(conn, by_tenant)
        try:
            yield
        finally:
            self._prefetched.value = None

    @staticmethod
    def _load(conn: Connection, by_tenant: Mapping[str, set[str]]) -> tuple[
            dict[tuple[str, str], list[PreferenceEntry]], dict[tuple[str, str], Settings]]:
        preferences: dict[tuple[str, str], list[PreferenceEntry]] = {}
        settings: dict[tuple[str, str], Settings] = {}
        for tenant, ids in by_tenant.items():
            found_preferences, found_settings = load_recipient_policy(conn, tenant, ids)
            for rid, entries in found_preferences.items():
                preferences[(tenant, rid)] = entries
            for rid, found in found_settings.items():
                settings[(tenant, rid)] = found
        return preferences, settings

    def _recipient_policy(self, conn: Connection, tenant: str, ids: set[str]) -> tuple[
            dict[str, list[PreferenceEntry]], dict[str, Settings]]:
        cached = self._prefetched.value
        if cached is None or any((tenant, rid) not in cached[0] for rid in ids):
            return load_recipient_policy(conn, tenant, ids)
        return ({rid: cached[0][(tenant, rid)] for rid in ids},
                {rid: cached[1][(tenant, rid)] for rid in ids if (tenant, rid) in cached[1]})

    def before_send_batch(self, conn: Connection, messages: Sequence[Message]) -> dict[uuid.UUID, SendDecision]:
        """The pre-send checkpoint for every message of one claim, in one pass.

        Preferences and recipient settings are read once per tenant for the
        whole batch, and messages are checked in (tenant, recipient, channel)
        order so that concurrent claims take cap locks in the same order.

        Args:
            conn: the executor's claim transaction.
            messages: the claimed messages.
        """
        by_tenant: dict[str, set[str]] = {}
        for message in messages:
            by_tenant.setdefault(tenant_key(message.tenant), set()).add(message.recipient.id)
        self._prefetched.value = self._load(conn, by_tenant)
        try:
            decisions: dict[uuid.UUID, SendDecision] = {}
            ordered = sorted(messages, key=lambda m: (tenant_key(m.tenant), m.recipient.id, m.channel))
            for message in ordered:
                decision = self.before_send(conn, message)
                if decision is not None:
                    decisions[message.delivery_id] = decision
            return decisions
        finally:
            self._prefetched.value = None

    def _preferences_of(self, conn: Connection, tenant: str, recipient_id: str) -> list[PreferenceEntry]:
        cached = self._prefetched.value
        if cached is not None and (tenant, recipient_id) in cached[0]:
            return cached[0][(tenant, recipient_id)]
        return load_preferences(conn, tenant, [recipient_id])[recipient_id]

    def _settings_of(self, conn: Connection, tenant: str, recipient_id: str) -> Settings | None:
        cached = self._prefetched.value
        if cached is not None:
            return cached[1].get((tenant, recipient_id))
        return load_settings(conn, tenant, [recipient_id]).get(recipient_id)

    def check_message(self, conn: Connection, cls: type[Notifier], message: Message,
                      now: datetime) -> Verdict | SendDecision | None:
        """The rules that can change between planning and sending, for one claimed message.

        Args:
            conn: the claim transaction.
            cls: the message's notifier.
            message: the claimed message.
            now: the clock's time.
        """
        tenant = tenant_key(message.tenant)
        recipient = message.recipient
        entries = self._preferences_of(conn, tenant, recipient.id)
        resolution = resolve(entries, cls, message.channel)
        if not resolution.enabled:
            return Verdict(status="suppressed", reason="opted_out", rule="preferences",
                           summary=f"suppressed: {resolution.why}", detail=resolution.as_detail())
        if digest_of(cls) is not None:
            carrier = check_carrier(conn, message.delivery_id, now, self.decorate_fields)
            if carrier is not None:
                return carrier
        if cls.critical:
            return None
        settings = self._settings_of(conn, tenant, recipient.id)
        quiet = self._quiet(settings, recipient, message.channel, now)
        if quiet is not None:
            return quiet
        if not self._caps_for(cls, message.channel):
            return None
        u = cap_usage_table
        if conn.execute(sa.select(u.c.id).where(u.c.delivery_id == message.delivery_id)).first() is not None:
            return None
        _upsert_lock(conn, tenant, recipient.id, message.channel, now)
        return self._count(conn, cls, tenant, recipient.id, message.channel, message.delivery_id, now, True, {})


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

    Args:
        policy: the app's policy.
        conn: read from only.
        plan: from :func:`chimeway.planning.plan`, rendered at the preview time.
    """
    policy.evaluate(conn, plan, write=False)
    out = []
    for d in plan.deliveries:
        why = tuple(str(item.get("detail", {}).get("summary") or item.get("detail", {}).get("reason") or item["event"])
                    for item in d.decisions)
        if not why and d.status == "pending":
            why = ("sent now: no rule stops it",)
        out.append(PreviewItem(recipient=d.recipient, channel=d.channel, fields=dict(d.fields), status=d.status,
                               reason=d.reason, why=why, not_before=d.not_before,
                               decisions=tuple(d.decisions)))
    return out


def prune(conn: Connection, now: datetime, *, keep: timedelta) -> dict[str, int]:
    """Delete policy bookkeeping no rule can look at any more.

    Cap usage older than ``keep``, expired dedupe marks, and digests flushed
    more than ``keep`` ago (with their items). ``keep`` must be at least the
    longest cap window, or caps would count too little.

    Args:
        conn: a write transaction.
        now: the clock's time.
        keep: how much history to keep.

    Returns:
        rows deleted per table.
    """
    if not isinstance(keep, timedelta) or keep <= timedelta(0):
        raise ConfigurationError(f"keep must be a positive timedelta, got {keep!r}")
    cutoff = now - keep
    d, i = digests_table, digest_items_table
    old_digests = sa.select(d.c.id).where(d.c.status == "flushed", d.c.flushed_at < cutoff).scalar_subquery()
    return {
        "chimeway_cap_usage": conn.execute(
            sa.delete(cap_usage_table).where(cap_usage_table.c.at < cutoff)).rowcount,
        "chimeway_dedupe_marks": conn.execute(
            sa.delete(dedupe_marks_table).where(dedupe_marks_table.c.expires_at < now)).rowcount,
        "chimeway_digest_items": conn.execute(sa.delete(i).where(i.c.digest_id.in_(old_digests))).rowcount,
        "chimeway_digests": conn.execute(
            sa.delete(d).where(d.c.status == "flushed", d.c.flushed_at < cutoff)).rowcount,
    }
