"""Recipients' channel preferences and settings (time zone, quiet hours).

A preference says whether a recipient wants a channel, for everything, for a
category or for one notifier. The most specific row wins::

    notifier × channel  >  notifier × *  >  category × channel  >  category × *
      >  all × channel  >  all × *  >  Notifier.default_channels_enabled  >  enabled

A ``critical`` notifier is delivered even when the resolution says no; the
reason says so. Rows are scoped to one tenant and one recipient.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from chimeway.clock import Clock
from chimeway.db import (
    among,
    insert,
    is_postgres,
    own_tables,
    rows_among,
    tenant_key,
    translated,
    writer,
)
from chimeway.errors import InvalidInputError, InvalidScheduleError
from chimeway.ids import new_id
from chimeway.models import preferences_table, recipient_settings_table
from chimeway.notifier import Notifier, possible_channels
from chimeway.quiet_hours import QuietHours, check_timezone
from chimeway.validation import check_text

__all__ = [
    "ALL_CHANNELS",
    "PreferenceEntry",
    "Preferences",
    "RecipientSettingsHandle",
    "Resolution",
    "Settings",
    "load_preferences",
    "load_recipient_policy",
    "load_settings",
    "resolve",
    "scope_of",
    "write_preference",
]

ALL_CHANNELS = "*"
SCOPES = ("notifier", "category", "all")


@dataclass(frozen=True, kw_only=True)
class PreferenceEntry:
    """One stored preference.

    Args:
        scope: ``all``, ``category`` or ``notifier``.
        scope_key: the category or notifier key (``""`` for ``all``).
        channel: a channel name, or ``*`` for every channel.
        enabled: whether the recipient wants it.
        source: who wrote it (``api``, ``unsubscribe``).
        updated_at: when.
    """

    scope: str
    scope_key: str
    channel: str
    enabled: bool
    source: str
    updated_at: datetime

    def describe(self) -> str:
        """A short phrase such as ``notifier order_shipped × email``."""
        target = "everything" if self.scope == "all" else f"{self.scope} {self.scope_key}"
        channel = "every channel" if self.channel == ALL_CHANNELS else self.channel
        return f"{target} × {channel}"


@dataclass(frozen=True, kw_only=True)
class Resolution:
    """Whether one channel is enabled for one notifier, and why.

    Args:
        enabled: the outcome (``True`` for a critical notifier even when opted out).
        why: a sentence a support engineer can read.
        rule: ``preference``, ``notifier_default``, ``default`` or ``critical``.
        entry: the preference row that decided, if any.
    """

    enabled: bool
    why: str
    rule: str
    entry: PreferenceEntry | None = None

    def as_detail(self) -> dict[str, Any]:
        """The inputs as JSON values (for decision rows)."""
        out: dict[str, Any] = {"why": self.why, "resolved_by": self.rule}
        if self.entry is not None:
            out.update(
                preference_scope=self.entry.scope,
                preference_key=self.entry.scope_key,
                preference_channel=self.entry.channel,
                preference_source=self.entry.source,
                preference_updated_at=self.entry.updated_at.isoformat(),
            )
        return out


def resolve(entries: Sequence[PreferenceEntry], notifier: type[Notifier], channel: str) -> Resolution:
    """Resolve one channel for one notifier from a recipient's preferences.

    Args:
        entries: the recipient's stored preferences (any order).
        notifier: the notifier class.
        channel: the channel name.
    """
    category = notifier.category
    order: list[tuple[str, str, str]] = [
        ("notifier", notifier.key, channel),
        ("notifier", notifier.key, ALL_CHANNELS),
    ]
    if category:
        order += [("category", category, channel), ("category", category, ALL_CHANNELS)]
    order += [("all", "", channel), ("all", "", ALL_CHANNELS)]
    by_target = {(e.scope, e.scope_key, e.channel): e for e in entries}
    decided: Resolution | None = None
    for target in order:
        entry = by_target.get(target)
        if entry is not None:
            verb = "opted in to" if entry.enabled else "opted out of"
            decided = Resolution(
                enabled=entry.enabled, rule="preference", entry=entry,
                why=f"{verb} {entry.describe()} (via {entry.source})",
            )
            break
    if decided is None:
        defaults = getattr(notifier, "default_channels_enabled", None) or {}
        if channel in defaults:
            on = bool(defaults[channel])
            decided = Resolution(
                enabled=on, rule="notifier_default",
                why=f"notifier {notifier.key} has {channel} {'on' if on else 'off'} by default",
            )
        else:
            decided = Resolution(enabled=True, rule="default", why="no preference set; channels are on by default")
    if not decided.enabled and notifier.critical:
        return Resolution(
            enabled=True, rule="critical", entry=decided.entry,
            why=f"critical notifier bypasses opt-outs ({decided.why})",
        )
    return decided


def _entry(row: Any) -> PreferenceEntry:
    return PreferenceEntry(
        scope=row.scope, scope_key=row.scope_key, channel=row.channel, enabled=bool(row.enabled),
        source=row.source, updated_at=row.updated_at,
    )


def load_preferences(conn: Connection, tenant: str, recipient_ids: Iterable[str]) -> dict[str, list[PreferenceEntry]]:
    """Every stored preference of the given recipients in one tenant.

    Args:
        conn: any connection (reads only).
        tenant: the stored tenant key (``""`` for none).
        recipient_ids: the recipients.
    """
    ids = sorted(set(recipient_ids))
    out: dict[str, list[PreferenceEntry]] = {i: [] for i in ids}
    if not ids:
        return out
    p = preferences_table
    for row in conn.execute(sa.select(p).where(p.c.tenant == tenant, p.c.recipient_id.in_(ids))).all():
        out[row.recipient_id].append(_entry(row))
    return out


def _upsert(conn: Connection, table: sa.Table, values: Mapping[str, Any], keys: Sequence[str],
            update: Sequence[str]) -> None:
    stmt = insert(conn, table).values(**values)
    stmt = stmt.on_conflict_do_update(index_elements=list(keys), set_={k: stmt.excluded[k] for k in update})
    conn.execute(stmt)


def write_preference(
    conn: Connection,
    *,
    tenant: str,
    recipient_id: str,
    scope: str,
    scope_key: str,
    channel: str,
    enabled: bool,
    source: str,
    now: datetime,
) -> PreferenceEntry:
    """Insert or replace one preference row (last write wins).

    Args:
        conn: inside a transaction.
        tenant: the stored tenant key.
        recipient_id: the recipient.
        scope: ``all``, ``category`` or ``notifier``.
        scope_key: the category or notifier key.
        channel: a channel name or ``*``.
        enabled: opt in (``True``) or out.
        source: who wrote it.
        now: the clock's time.
    """
    _upsert(
        conn, preferences_table,
        {"id": new_id(), "tenant": tenant, "recipient_id": recipient_id, "scope": scope,
         "scope_key": scope_key, "channel": channel, "enabled": enabled, "source": source,
         "updated_at": now},
        ("tenant", "recipient_id", "scope", "scope_key", "channel"),
        ("enabled", "source", "updated_at"),
    )
    return PreferenceEntry(scope=scope, scope_key=scope_key, channel=channel, enabled=enabled,
                           source=source, updated_at=now)


def scope_of(notifier: str | type[Notifier] | None, category: str | None) -> tuple[str, str]:
    """``(scope, scope_key)`` for a notifier (class or key), a category, or everything.

    Args:
        notifier: a ``Notifier`` subclass or its key, or ``None``.
        category: a category, or ``None``.
    """
    if notifier is not None and category is not None:
        raise InvalidInputError("pass notifier or category, not both")
    if notifier is not None:
        if isinstance(notifier, type) and issubclass(notifier, Notifier):
            return "notifier", notifier.key
        if isinstance(notifier, str) and notifier:
            return "notifier", notifier
        raise InvalidInputError(f"notifier must be a Notifier subclass or its key, got {notifier!r}")
    if category is not None:
        if not isinstance(category, str) or not category:
            raise InvalidInputError(f"category must be a non-empty string, got {category!r}")
        return "category", category
    return "all", ""


class _Scoped:
    """Shared plumbing: one recipient in one tenant, own or caller's transaction."""

    def __init__(self, *, engine: Engine, clock: Clock, recipient: str, tenant: str | None,
                 session: Session | Connection | None) -> None:
        if not isinstance(recipient, str) or not recipient:
            raise InvalidInputError(f"recipient must be a non-empty string, got {recipient!r}")
        check_text(recipient, field="recipient")
        self._engine = engine
        self._clock = clock
        self.recipient = recipient
        self.tenant = tenant_key(tenant)
        self._session = session

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with translated("preferences"):
            if self._session is not None:
                with own_tables(self._session, self._engine) as conn:
                    yield conn
            else:
                with writer(self._engine).begin() as conn:
                    yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with translated("preferences"):
            if self._session is not None:
                with own_tables(self._session, self._engine) as conn:
                    yield conn
            else:
                with self._engine.connect() as conn:
                    yield conn


class Preferences(_Scoped):
    """One recipient's channel preferences in one tenant (``app.preferences(...)``).

    Args:
        engine: Chimeway's engine.
        clock: the time source.
        recipient: the recipient id.
        tenant: the tenant, or ``None``.
        session: write in the caller's transaction instead of Chimeway's own.
        channels: the configured channel names (for :meth:`effective`).
    """

    def __init__(self, *, engine: Engine, clock: Clock, recipient: str, tenant: str | None,
                 session: Session | Connection | None = None, channels: Iterable[str] = ()) -> None:
        super().__init__(engine=engine, clock=clock, recipient=recipient, tenant=tenant, session=session)
        self._channels = list(channels)

    def set(
        self,
        *,
        channel: str | None = None,
        enabled: bool,
        notifier: str | type[Notifier] | None = None,
        category: str | None = None,
        source: str = "api",
    ) -> PreferenceEntry:
        """Opt in or out of a channel (or every channel) for a notifier, a category or everything.

        Args:
            channel: a channel name; ``None`` means every channel.
            enabled: ``False`` to opt out, ``True`` to opt (back) in.
            notifier: limit to one notifier (class or key).
            category: limit to one category.
            source: recorded with the row and shown by ``explain``.
        """
        if not isinstance(enabled, bool):
            raise InvalidInputError(f"enabled must be a bool, got {type(enabled).__name__}")
        if channel is not None and (not isinstance(channel, str) or not channel):
            raise InvalidInputError(f"channel must be a channel name or None, got {channel!r}")
        scope, scope_key = scope_of(notifier, category)
        with self._write() as conn:
            return write_preference(
                conn, tenant=self.tenant, recipient_id=self.recipient, scope=scope, scope_key=scope_key,
                channel=channel or ALL_CHANNELS, enabled=enabled, source=source, now=self._clock.now(),
            )

    def get(self) -> list[PreferenceEntry]:
        """Every stored preference, most general first."""
        with self._read() as conn:
            entries = load_preferences(conn, self.tenant, [self.recipient])[self.recipient]
        return sorted(entries, key=lambda e: (SCOPES.index(e.scope) * -1, e.scope_key, e.channel))

    def effective(
        self, notifier: type[Notifier], channels: Iterable[str] | None = None
    ) -> dict[str, tuple[bool, str]]:
        """The resolved matrix for one notifier: ``{channel: (enabled, why)}``.

        Args:
            notifier: the notifier class.
            channels: channels to resolve (default: the channels the notifier can
                use: its workflow's steps, else its ``channels``; every configured
                channel when it overrides ``channels_for``).
        """
        if channels is None:
            possible = possible_channels(notifier)
            if possible is None:
                defaults = getattr(notifier, "default_channels_enabled", None) or {}
                names = list(dict.fromkeys([*notifier.channels, *defaults, *self._channels]))
            else:
                names = list(possible)
        else:
            names = list(dict.fromkeys(channels))
        entries = self.get()
        out: dict[str, tuple[bool, str]] = {}
        for name in names:
            resolution = resolve(entries, notifier, name)
            out[name] = (resolution.enabled, resolution.why)
        return out


@dataclass(frozen=True, kw_only=True)
class Settings:
    """A recipient's stored settings.

    Args:
        timezone: IANA time zone name, or ``None`` (then the ``Recipient``'s, then UTC).
        quiet_hours: local quiet window, or ``None``.
    """

    timezone: str | None = None
    quiet_hours: QuietHours | None = None


_UNSET: Any = object()


class RecipientSettingsHandle(_Scoped):
    """One recipient's time zone and quiet hours (``app.recipient_settings(...)``).

    Args:
        engine: Chimeway's engine.
        clock: the time source.
        recipient: the recipient id.
        tenant: the tenant, or ``None``.
        session: write in the caller's transaction instead of Chimeway's own.
    """

    def set(self, *, timezone: str | None = _UNSET, quiet_hours: tuple[str, str] | None = _UNSET) -> Settings:
        """Store the time zone and/or quiet hours; omitted arguments keep their value.

        Args:
            timezone: an IANA name such as ``"Europe/Paris"``; ``None`` clears it.
            quiet_hours: ``("22:00", "07:00")`` (local start, end; may cross
                midnight); ``None`` clears them.
        """
        current = self.get()
        tz = current.timezone if timezone is _UNSET else timezone
        if tz is not None:
            check_timezone(tz)
        if quiet_hours is _UNSET:
            quiet = current.quiet_hours
        elif quiet_hours is None:
            quiet = None
        else:
            if not isinstance(quiet_hours, (tuple, list)) or len(quiet_hours) != 2:
                raise InvalidScheduleError(f"quiet_hours must be a (start, end) pair, got {quiet_hours!r}")
            quiet = QuietHours.parse(quiet_hours[0], quiet_hours[1])
        with self._write() as conn:
            _upsert(
                conn, recipient_settings_table,
                {"tenant": self.tenant, "recipient_id": self.recipient, "timezone": tz,
                 "quiet_start": quiet.start_text if quiet else None,
                 "quiet_end": quiet.end_text if quiet else None, "updated_at": self._clock.now()},
                ("tenant", "recipient_id"), ("timezone", "quiet_start", "quiet_end", "updated_at"),
            )
        return Settings(timezone=tz, quiet_hours=quiet)

    def get(self) -> Settings:
        """The stored settings (empty ``Settings`` when none)."""
        with self._read() as conn:
            return load_settings(conn, self.tenant, [self.recipient]).get(self.recipient, Settings())


def load_settings(conn: Connection, tenant: str, recipient_ids: Iterable[str]) -> dict[str, Settings]:
    """Stored settings of the given recipients (absent recipients are left out).

    Args:
        conn: any connection (reads only).
        tenant: the stored tenant key.
        recipient_ids: the recipients.
    """
    ids = sorted(set(recipient_ids))
    if not ids:
        return {}
    s = recipient_settings_table
    out: dict[str, Settings] = {}
    for row in conn.execute(sa.select(s).where(s.c.tenant == tenant, s.c.recipient_id.in_(ids))).all():
        quiet = QuietHours.parse(row.quiet_start, row.quiet_end) if row.quiet_start and row.quiet_end else None
        out[row.recipient_id] = Settings(timezone=row.timezone, quiet_hours=quiet)
    return out


# Up to this many recipients, ``= ANY(:ids)``: one index scan, planned in
# no time. More, and the plan could walk a whole table whose statistics are
# stale, so each recipient's rows are found by an index probe (rows_among),
# whose custom plans cost more to make (0.28 ms against 0.16 ms a trigger).
ANY_UP_TO = 10


@lru_cache(maxsize=4)
def _recipient_policy_query(postgres: bool, probes: bool = False) -> sa.CompoundSelect[Any]:
    # Built once per dialect and form: constructing this statement costs
    # more than running it. On PostgreSQL the ids are one array parameter,
    # so the text never changes and the driver prepares it once.
    p, r = preferences_table, recipient_settings_table
    text = sa.String(200)
    tenant: sa.BindParameter[str] = sa.bindparam("tenant")

    def matching(select: sa.Select[Any], column: sa.ColumnElement[Any]) -> sa.Select[Any]:
        if probes:
            return rows_among(select, column, "ids", postgres=postgres)
        return select.where(among(column, "ids", postgres=postgres))

    return sa.union_all(
        matching(sa.select(
            sa.literal("p").label("kind"), p.c.recipient_id, p.c.scope, p.c.scope_key, p.c.channel,
            p.c.enabled, p.c.source, p.c.updated_at,
            sa.cast(sa.null(), text).label("timezone"), sa.cast(sa.null(), text).label("quiet_start"),
            sa.cast(sa.null(), text).label("quiet_end"),
        ).where(p.c.tenant == tenant), p.c.recipient_id),
        matching(sa.select(
            sa.literal("s").label("kind"), r.c.recipient_id, sa.cast(sa.null(), p.c.scope.type).label("scope"),
            sa.cast(sa.null(), p.c.scope_key.type).label("scope_key"),
            sa.cast(sa.null(), p.c.channel.type).label("channel"),
            sa.cast(sa.null(), p.c.enabled.type).label("enabled"),
            sa.cast(sa.null(), p.c.source.type).label("source"),
            sa.cast(sa.null(), p.c.updated_at.type).label("updated_at"),
            r.c.timezone, r.c.quiet_start, r.c.quiet_end,
        ).where(r.c.tenant == tenant), r.c.recipient_id),
    )


def load_recipient_policy(
    conn: Connection, tenant: str, recipient_ids: Iterable[str]
) -> tuple[dict[str, list[PreferenceEntry]], dict[str, Settings]]:
    """Preferences and settings of the given recipients, in one round trip.

    Both checkpoints need both on every trigger and every claim; one
    ``UNION ALL`` halves the database round trips they cost.

    Args:
        conn: any connection (reads only).
        tenant: the stored tenant key.
        recipient_ids: the recipients.
    """
    ids = sorted(set(recipient_ids))
    preferences: dict[str, list[PreferenceEntry]] = {i: [] for i in ids}
    settings: dict[str, Settings] = {}
    if not ids:
        return preferences, settings
    postgres = is_postgres(conn)
    query = _recipient_policy_query(postgres, postgres and len(ids) > ANY_UP_TO)
    rows = conn.execute(query, {"tenant": tenant, "ids": ids}).all()
    for row in rows:
        if row.kind == "p":
            preferences[row.recipient_id].append(_entry(row))
        else:
            quiet = (QuietHours.parse(row.quiet_start, row.quiet_end)
                     if row.quiet_start and row.quiet_end else None)
            settings[row.recipient_id] = Settings(timezone=row.timezone, quiet_hours=quiet)
    return preferences, settings
