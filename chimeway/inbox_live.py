"""Live inbox changes: an async iterator over what happens to one recipient's inbox.

On PostgreSQL a trigger announces every change with ``NOTIFY`` in the
transaction that made it (``db.INBOX_NOTIFY_DDL``), so a rollback announces
nothing. One ``LISTEN`` connection per app (:class:`InboxHub`) fans the
announcements out to every open iterator; each iterator reads the changed
row back and yields it. SQLite has no ``NOTIFY``: there (and on PostgreSQL
with ``notify=False``) iterators poll for rows whose timestamps moved.

Both ways meet in one place: a change is ``(kind, notification id)``, each
kind happens once per notification (only the first transition writes its
timestamp), so an iterator that sees a change twice — announced, then found
again by a catch-up poll after a lost connection — yields it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chimeway.db import INBOX_CHANNEL, tenant_key
from chimeway.errors import InvalidInputError
from chimeway.inbox import InboxItem, inbox_item, unread_count
from chimeway.models import notifications_table
from chimeway.queue.listener import Listener

__all__ = ["ChangeKind", "InboxChange", "InboxHub", "inbox_changes"]

log = logging.getLogger("chimeway")

ChangeKind = Literal["snapshot", "new", "seen", "read", "archived"]

# Column whose first timestamp marks each kind of change, in the order a
# notification goes through them.
_COLUMNS: dict[str, str] = {"new": "inbox_at", "seen": "seen_at", "read": "read_at", "archived": "archived_at"}
_RANK = {kind: i for i, kind in enumerate(_COLUMNS)}
# How far back a poll looks for timestamps: a transaction that stamped a row
# and committed later than this after its clock reading would be missed.
LOOKBACK = timedelta(seconds=60)
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True, kw_only=True)
class InboxChange:
    """One change to a recipient's inbox.

    Args:
        kind: ``snapshot`` (the first change: the state when the iterator
            started), ``new`` (an item arrived), ``seen``, ``read`` or ``archived``.
        unread_count: unread, unarchived items when the change was read back.
        item: the item as it is now (``None`` for a snapshot).
        at: when the change happened (``None`` for a snapshot).
    """

    kind: ChangeKind
    unread_count: int
    item: InboxItem | None = None
    at: datetime | None = None

    @property
    def notification_id(self) -> uuid.UUID | None:
        """The changed item's id (``None`` for a snapshot)."""
        return self.item.id if self.item is not None else None


Note = tuple[str, uuid.UUID]


class _Subscriber:
    """An open iterator's mailbox: announcements arrive on the listener thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.notes: list[Note] = []
        self.catch_up = False
        self.wake = asyncio.Event()

    def _note(self, note: Note) -> None:
        self.notes.append(note)
        self.wake.set()

    def _reconnected(self) -> None:
        self.catch_up = True
        self.wake.set()

    def note(self, note: Note) -> None:
        self._call(self._note, note)

    def reconnected(self) -> None:
        self._call(self._reconnected)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the iterator's loop has closed
            self.loop.call_soon_threadsafe(fn, *args)


class InboxHub:
    """One ``LISTEN`` connection for every open inbox iterator of an app (PostgreSQL).

    The connection opens with the first iterator and closes with the last.

    Args:
        engine: the app's (PostgreSQL) engine.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._subscribers: dict[tuple[str, str], set[_Subscriber]] = {}
        self._listener: Listener | None = None
        self._stop: threading.Event | None = None

    def subscribe(self, tenant: str, recipient: str, subscriber: _Subscriber) -> Listener:
        with self._lock:
            self._subscribers.setdefault((tenant, recipient), set()).add(subscriber)
            if self._listener is None:
                self._stop = threading.Event()
                self._listener = Listener(self._engine, self._on_notify, self._on_connect, self._stop,
                                          name="chimeway-inbox-listener", channel=INBOX_CHANNEL)
                self._listener.start()
            return self._listener

    def unsubscribe(self, tenant: str, recipient: str, subscriber: _Subscriber) -> None:
        with self._lock:
            subscribers = self._subscribers.get((tenant, recipient))
            if subscribers is not None:
                subscribers.discard(subscriber)
                if not subscribers:
                    del self._subscribers[(tenant, recipient)]
            if not self._subscribers:
                self._halt()

    def close(self) -> None:
        """Stop listening (the app's ``close()`` calls this)."""
        with self._lock:
            self._subscribers.clear()
            self._halt()

    def _halt(self) -> None:
        if self._stop is not None:
            self._stop.set()
        self._listener = None
        self._stop = None

    def _on_notify(self, payload: str) -> None:
        try:
            data = json.loads(payload)
            key = (str(data["t"]), str(data["r"]))
            note = (str(data["k"]), uuid.UUID(str(data["id"])))
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed inbox notification: %r", payload[:200])
            return
        with self._lock:
            subscribers = list(self._subscribers.get(key, ()))
        for subscriber in subscribers:
            subscriber.note(note)

    def _on_connect(self) -> None:
        # Announcements sent while the connection was down are lost: every
        # iterator looks for what it missed.
        with self._lock:
            everyone = [s for group in self._subscribers.values() for s in group]
        for subscriber in everyone:
            subscriber.reconnected()


class _Reader:
    """The database side of one iterator: snapshots, polls and reading changed rows back."""

    def __init__(self, engine: Engine, tenant: str, recipient: str) -> None:
        self.engine = engine
        self.tenant = tenant
        self.recipient = recipient
        n = notifications_table
        self.scope = sa.and_(n.c.tenant == tenant, n.c.recipient_id == recipient, n.c.inbox_at.is_not(None))

    def _unread(self, conn: Connection) -> int:
        return unread_count(conn, tenant=self.tenant, recipient=self.recipient)

    def start(self, since: datetime) -> tuple[int, list[tuple[str, uuid.UUID, datetime]]]:
        """The unread count now, and the changes already made within the poll window."""
        with self.engine.connect() as conn:
            return self._unread(conn), [(k, row.id, at) for k, row, at in self._changed(conn, since)]

    def _changed(self, conn: Connection, since: datetime) -> list[tuple[str, Any, datetime]]:
        n = notifications_table
        rows = conn.execute(sa.select(n).where(
            self.scope, sa.or_(*(n.c[column] >= since for column in _COLUMNS.values())))).all()
        out = []
        for row in rows:
            for kind, column in _COLUMNS.items():
                at = getattr(row, column)
                # A read also stamps seen_at: that is one change, not two.
                if at is not None and at >= since and not (kind == "seen" and row.read_at == at):
                    out.append((kind, row, at))
        return out

    def changes(self, notes: Iterable[Note], since: datetime | None,
                skip: Callable[[str, uuid.UUID], bool]) -> list[InboxChange]:
        """Read announced changes back (and, with ``since``, poll for others), oldest first."""
        n = notifications_table
        found: dict[Note, tuple[Any, datetime]] = {}
        with self.engine.connect() as conn:
            wanted = [note for note in notes if not skip(*note)]
            if wanted:
                ids = list({i for _, i in wanted})
                rows = {r.id: r for r in conn.execute(sa.select(n).where(self.scope, n.c.id.in_(ids)))}
                for kind, i in wanted:
                    row = rows.get(i)
                    at = getattr(row, _COLUMNS.get(kind, ""), None) if row is not None else None
                    if at is not None:
                        found[(kind, i)] = (row, at)
            if since is not None:
                for kind, row, at in self._changed(conn, since):
                    if not skip(kind, row.id):
                        found.setdefault((kind, row.id), (row, at))
            if not found:
                return []
            unread = self._unread(conn)
        ordered = sorted(found.items(), key=lambda pair: (pair[1][1], _RANK[pair[0][0]], pair[0][1]))
        return [InboxChange(kind=cast(ChangeKind, kind), unread_count=unread, item=inbox_item(row), at=at)
                for (kind, _), (row, at) in ordered]


async def inbox_changes(
    *,
    engine: Engine,
    recipient: str,
    tenant: str | None,
    hub: InboxHub | None,
    poll_interval: float,
    since: datetime,
    snapshot: bool = True,
) -> AsyncIterator[InboxChange]:
    """Yield one recipient's inbox changes as they commit (see ``Chimeway.inbox_changes``).

    Args:
        engine: the app's engine.
        recipient: the recipient id.
        tenant: the tenant, or ``None``.
        hub: the app's ``LISTEN`` hub on PostgreSQL, or ``None`` to poll.
        poll_interval: seconds between polls (with a hub: between safety-net polls).
        since: changes from this time on are yielded (the time of the call).
        snapshot: first yield the unread count when the iteration starts.
    """
    key = tenant_key(tenant)
    reader = _Reader(engine, key, recipient)
    subscriber = _Subscriber(asyncio.get_running_loop())
    seen: dict[Note, datetime] = {}
    listening = False
    try:
        if hub is not None:
            listener = hub.subscribe(key, recipient, subscriber)
            # Changes committed before LISTEN took effect are never announced:
            # start from the state read once the connection listens.
            listening = await asyncio.to_thread(listener.connected.wait, CONNECT_TIMEOUT)
            if not listening:
                log.warning("inbox changes: no LISTEN connection after %.0fs; polling", CONNECT_TIMEOUT)
        mark = since
        unread, recent = await asyncio.to_thread(reader.start, mark - LOOKBACK)
        for kind, i, at in recent:
            if at < since:
                seen[(kind, i)] = at
            else:
                # Made between the call and the first step of the iteration.
                subscriber.notes.append((kind, i))
                subscriber.wake.set()
        subscriber.catch_up = False
        if snapshot:
            yield InboxChange(kind="snapshot", unread_count=unread)
        while True:
            try:
                await asyncio.wait_for(subscriber.wake.wait(), timeout=poll_interval)
                poll = subscriber.catch_up or not listening
            except TimeoutError:
                poll = True
            subscriber.wake.clear()
            notes, subscriber.notes = subscriber.notes, []
            subscriber.catch_up = False
            window = mark - LOOKBACK if poll else None
            changes = await asyncio.to_thread(reader.changes, notes, window, lambda k, i: (k, i) in seen)
            for change in changes:
                assert change.item is not None and change.at is not None
                note = (change.kind, change.item.id)
                if note in seen:
                    continue
                seen[note] = change.at
                mark = max(mark, change.at)
                yield change
            # What is older than the poll window can never come back.
            horizon = mark - LOOKBACK
            for old in [n for n, at in seen.items() if at < horizon]:
                del seen[old]
    finally:
        if hub is not None:
            hub.unsubscribe(key, recipient, subscriber)


def check_changes_args(recipient: object, poll_interval: object) -> None:
    """Refuse bad arguments before an iterator is made."""
    if not isinstance(recipient, str) or not recipient:
        raise InvalidInputError("recipient must be a non-empty recipient id string")
    if isinstance(poll_interval, bool) or not isinstance(poll_interval, int | float) or not poll_interval > 0:
        raise InvalidInputError(f"poll_interval must be a positive number of seconds, got {poll_interval!r}")
