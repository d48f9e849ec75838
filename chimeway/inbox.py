"""The in-app inbox: reads and read/seen/archive transitions.

An inbox item is a notification whose in-app delivery succeeded. Every
query is scoped to one tenant and one recipient; only the first transition
writes a timestamp. Unread counts are kept per tenant × recipient by
database triggers (``chimeway_inbox_counts``), so reading one never scans
the inbox.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from chimeway.clock import Clock
from chimeway.db import own_tables, tenant_key, translated, writer
from chimeway.errors import InvalidInputError, NotFoundError
from chimeway.ids import as_uuid
from chimeway.models import inbox_counts_table, notifications_table
from chimeway.validation import check_text

__all__ = ["Inbox", "InboxItem", "InboxPage", "inbox_item", "unread_count"]

MAX_PAGE = 200
SignalHook = Callable[[Connection, str, "InboxItem"], None]


@dataclass(frozen=True, kw_only=True)
class InboxItem:
    """One inbox item.

    Args:
        id: the notification id.
        notifier_key: which notifier produced it.
        category: the notifier's category.
        content: the rendered in-app fields (``title``, ``body``, ...).
        created_at: when it was triggered.
        delivered_at: when it reached the inbox.
        seen_at / read_at / archived_at: first time of each transition, or ``None``.
    """

    id: uuid.UUID
    recipient_id: str
    notifier_key: str
    category: str | None
    content: dict[str, Any]
    created_at: datetime
    delivered_at: datetime
    seen_at: datetime | None
    read_at: datetime | None
    archived_at: datetime | None

    @property
    def title(self) -> str | None:
        value = self.content.get("title")
        return None if value is None else str(value)

    @property
    def body(self) -> str | None:
        value = self.content.get("body")
        return None if value is None else str(value)

    def __repr__(self) -> str:
        state = ("archived" if self.archived_at else "read" if self.read_at
                 else "seen" if self.seen_at else "unread")
        return (f"InboxItem(id={self.id}, recipient={self.recipient_id!r}, notifier={self.notifier_key!r}, "
                f"title={self.title!r}, body={self.body!r}, {state}, "
                f"created_at={self.created_at.isoformat(timespec='seconds')})")


@dataclass(frozen=True, kw_only=True)
class InboxPage:
    """A page of items, newest first; pass ``next_cursor`` to get the next page."""

    items: tuple[InboxItem, ...]
    next_cursor: str | None


class Inbox:
    """One recipient's inbox within one tenant.

    Args:
        engine: Chimeway's engine.
        clock: the time source.
        recipient: the recipient id.
        tenant: the tenant, or ``None``.
        session: run in the caller's ``Session``/``Connection`` instead of
            Chimeway's own short transactions.
        on_transition: called inside the transaction after a read/seen
            transition (emits the ``notification.read``/``seen`` signals).
    """

    def __init__(
        self,
        *,
        engine: Engine,
        clock: Clock,
        recipient: str,
        tenant: str | None = None,
        session: Session | Connection | None = None,
        on_transition: SignalHook | None = None,
    ) -> None:
        if not isinstance(recipient, str) or not recipient:
            raise InvalidInputError("recipient must be a non-empty recipient id string")
        check_text(recipient, field="recipient")
        self._engine = engine
        self._clock = clock
        self.recipient = recipient
        self.tenant = tenant_key(tenant)
        self._session = session
        self._on_transition = on_transition

    @contextmanager
    def _conn(self, write: bool = False) -> Iterator[Connection]:
        with translated("inbox"):
            if self._session is not None:
                with own_tables(self._session, self._engine) as conn:
                    yield conn
                return
            engine = writer(self._engine) if write else self._engine
            with engine.begin() as conn:
                yield conn

    def _scope(self) -> sa.ColumnElement[bool]:
        n = notifications_table
        return sa.and_(n.c.tenant == self.tenant, n.c.recipient_id == self.recipient, n.c.inbox_at.is_not(None))

    def list(
        self,
        limit: int = 20,
        cursor: str | None = None,
        *,
        unread_only: bool = False,
        include_archived: bool = False,
    ) -> InboxPage:
        """Newest items first, with keyset pagination.

        Args:
            limit: items per page (1..200).
            cursor: ``next_cursor`` from the previous page.
            unread_only: only items not yet read.
            include_archived: also archived items.
        """
        if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError(f"limit must be an int between 1 and {MAX_PAGE}, got {limit!r}")
        n = notifications_table
        query = sa.select(n).where(self._scope())
        if unread_only:
            query = query.where(n.c.read_at.is_(None))
        if not include_archived:
            query = query.where(n.c.archived_at.is_(None))
        if cursor is not None:
            query = query.where(n.c.id < as_uuid(cursor, name="cursor"))
        query = query.order_by(n.c.id.desc()).limit(limit + 1)
        with self._conn() as conn:
            rows = conn.execute(query).all()
        items = tuple(inbox_item(row) for row in rows[:limit])
        next_cursor = str(items[-1].id) if len(rows) > limit and items else None
        return InboxPage(items=items, next_cursor=next_cursor)

    def get(self, notification_id: uuid.UUID | str) -> InboxItem:
        """One item of this recipient's inbox."""
        n = notifications_table
        nid = as_uuid(notification_id, name="notification_id")
        with self._conn() as conn:
            row = conn.execute(sa.select(n).where(self._scope(), n.c.id == nid)).first()
        if row is None:
            raise NotFoundError(f"notification {nid} is not in the inbox of {self.recipient!r}")
        return inbox_item(row)

    def unread_count(self) -> int:
        """Items not read and not archived: one row's read, whatever the inbox's size.

        The count is kept by the database (``chimeway_inbox_counts``, changed
        by triggers in the transaction of every write to an inbox item), so
        it is exact and costs the same for ten items or a million. It covers
        the inbox's whole scope, its tenant and recipient, which is all an
        ``Inbox`` narrows by; an inbox narrowed further (by category,
        channel, ...) would have to count its rows instead. Inside the
        caller's ``session`` it includes that transaction's own changes.
        """
        with self._conn() as conn:
            return unread_count(conn, tenant=self.tenant, recipient=self.recipient)

    def mark_seen(self, notification_id: uuid.UUID | str) -> bool:
        """Stamp ``seen_at`` the first time; returns whether this call changed it."""
        return self._transition(notification_id, "seen_at", "notification.seen")

    def mark_read(self, notification_id: uuid.UUID | str) -> bool:
        """Stamp ``read_at`` (and ``seen_at`` if unset) the first time."""
        return self._transition(notification_id, "read_at", "notification.read")

    def archive(self, notification_id: uuid.UUID | str) -> bool:
        """Stamp ``archived_at`` the first time; archived items leave ``list()``."""
        return self._transition(notification_id, "archived_at", None)

    def mark_all_read(self) -> int:
        """Mark every unread item read; returns how many changed."""
        n = notifications_table
        now = self._clock.now()
        with self._conn(write=True) as conn:
            ids = conn.execute(
                sa.update(n).where(self._scope(), n.c.read_at.is_(None))
                .values(read_at=now, seen_at=sa.func.coalesce(n.c.seen_at, now))
                .returning(n.c.id)
            ).scalars().all()
            if ids and self._on_transition is not None:
                rows = conn.execute(sa.select(n).where(n.c.id.in_(ids))).all()
                for row in rows:
                    self._on_transition(conn, "notification.read", inbox_item(row))
        return len(ids)

    def _transition(self, notification_id: uuid.UUID | str, column: str, signal: str | None) -> bool:
        n = notifications_table
        nid = as_uuid(notification_id, name="notification_id")
        now = self._clock.now()
        values: dict[str, Any] = {column: now}
        if column == "read_at":
            values["seen_at"] = sa.func.coalesce(n.c.seen_at, now)
        with self._conn(write=True) as conn:
            changed = conn.execute(
                sa.update(n).where(self._scope(), n.c.id == nid, n.c[column].is_(None)).values(**values)
            ).rowcount
            row = conn.execute(sa.select(n).where(self._scope(), n.c.id == nid)).first()
            if row is None:
                raise NotFoundError(f"notification {nid} is not in the inbox of {self.recipient!r}")
            if changed and signal is not None and self._on_transition is not None:
                self._on_transition(conn, signal, inbox_item(row))
        return bool(changed)


def unread_count(conn: Connection, *, tenant: str, recipient: str) -> int:
    """A recipient's unread items: the sum of its rows of ``chimeway_inbox_counts`` (no row: none).

    Args:
        conn: a connection that finds Chimeway's tables.
        tenant: the stored tenant (:func:`chimeway.db.tenant_key`).
        recipient: the recipient id.
    """
    c = inbox_counts_table
    found = conn.execute(
        sa.select(sa.func.sum(c.c.unread)).where(c.c.tenant == tenant, c.c.recipient_id == recipient)
    ).scalar()
    return int(found or 0)


def inbox_item(row: Any) -> InboxItem:
    """The inbox item a ``chimeway_notifications`` row stands for."""
    return InboxItem(
        id=row.id,
        recipient_id=row.recipient_id,
        notifier_key=row.notifier_key,
        category=row.category,
        content=dict(row.inbox_content or {}),
        created_at=row.created_at,
        delivered_at=row.inbox_at,
        seen_at=row.seen_at,
        read_at=row.read_at,
        archived_at=row.archived_at,
    )
