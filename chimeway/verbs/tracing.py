"""Looking back: traces by recipient, correlation id or notifier, and a notifier's outcomes."""

from __future__ import annotations

from datetime import datetime

from chimeway.traces import Outcomes, TracePage, count_outcomes, find_traces
from chimeway.verbs.base import AppBase

__all__ = ["TracingVerbs"]


class TracingVerbs(AppBase):
    """Traces found by what support and operators know, and outcome counts per notifier."""

    def traces(
        self,
        *,
        recipient: str | None = None,
        correlation_id: str | None = None,
        notifier: str | None = None,
        tenant: str | None = None,
        since: datetime | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> TracePage:
        """Traces (events with their explained deliveries) matching every filter given, newest first.

        Pages with a cursor: pass ``page.next_cursor`` as ``cursor`` for the
        next, older page. Each lookup is served by an index.

        Args:
            recipient: events that notified this recipient id; each trace then
                holds only this recipient's notifications and deliveries.
            correlation_id: events triggered with this ``correlation_id``.
            notifier: events of this notifier key.
            tenant: events of this tenant (``None``: any tenant).
            since: events triggered at or after this aware datetime.
            limit: traces per page (1..200).
            cursor: ``next_cursor`` of the previous page.

        Raises:
            InvalidInputError: a filter, the limit or the cursor is unusable.
        """
        with self.engine.connect() as conn:
            return find_traces(conn, recipient=recipient, correlation_id=correlation_id, notifier=notifier,
                               tenant=tenant, since=since, limit=limit, cursor=cursor)

    def outcomes(self, notifier: str, *, since: datetime | None = None, tenant: str | None = None) -> Outcomes:
        """A notifier's deliveries counted by status and reason code (``bounced``, ``opted_out``, ...).

        Args:
            notifier: the notifier key (or its class's ``key``).
            since: only deliveries of events triggered at or after this aware datetime.
            tenant: only this tenant (``None``: every tenant).
        """
        key = getattr(notifier, "key", notifier)
        with self.engine.connect() as conn:
            return count_outcomes(conn, key, since=since, tenant=tenant)
