"""Live inbox changes: what a web app streams to a recipient's open page."""

from __future__ import annotations

from collections.abc import AsyncIterator

from chimeway.inbox_live import InboxChange, check_changes_args, inbox_changes
from chimeway.verbs.base import AppBase

__all__ = ["LiveVerbs"]


class LiveVerbs(AppBase):
    """The inbox as a stream of changes."""

    def inbox_changes(
        self, recipient: str, tenant: str | None = None, *, poll_interval: float | None = None,
        snapshot: bool = True,
    ) -> AsyncIterator[InboxChange]:
        """An async iterator over one recipient's inbox changes, as they commit.

        Each change is an ``InboxChange``: ``kind`` (``new``, ``seen``,
        ``read``, ``archived``; first a ``snapshot`` of the state it starts
        from), the ``item`` as it is now, and the ``unread_count``. On
        PostgreSQL the change is announced with ``NOTIFY`` in the transaction
        that made it (a rollback announces nothing) and arrives within
        milliseconds of the commit; SQLite, and PostgreSQL with
        ``notify=False``, poll every ``poll_interval`` seconds. Changes made
        from the call on are yielded, even those made before the iteration
        starts. Close it (leave the ``async for``, or ``aclose()``) to stop
        listening.

        Args:
            recipient: the recipient id.
            tenant: the tenant, or ``None``.
            poll_interval: seconds between polls: default 1 when polling, 15
                as the safety net behind ``LISTEN`` on PostgreSQL.
            snapshot: first yield a ``snapshot`` change with the unread count.

        Raises:
            InvalidInputError: the recipient or the interval is unusable.
        """
        listening = self.inbox_hub is not None
        interval = poll_interval if poll_interval is not None else (15.0 if listening else 1.0)
        check_changes_args(recipient, interval)
        return inbox_changes(engine=self.engine, recipient=recipient, tenant=tenant,
                             hub=self.inbox_hub, poll_interval=float(interval), since=self.clock.now(),
                             snapshot=snapshot)


