"""Policy bookkeeping no rule looks at any more, and the prune targets that delete it.

Cap usage older than the kept history, dedupe marks past their expiry, and
digests flushed longer ago than the kept history (with their items). The
app's pruner deletes them in every worker (``Retention.policy``);
:func:`prune` does it at once in the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chimeway.errors import ConfigurationError
from chimeway.models import cap_usage_table, dedupe_marks_table, digest_items_table, digests_table
from chimeway.queue.plugins.pruner import AgePrune, PruneTarget

__all__ = ["DEFAULT_KEEP", "policy_targets", "prune"]

DEFAULT_KEEP = timedelta(days=2)
"""How much cap history is kept by default: longer than any cap window a rule should use."""


def _digest_items(keys: sa.BindParameter[Any]) -> tuple[sa.Table, sa.ColumnElement[bool]]:
    return digest_items_table, digest_items_table.c.digest_id.in_(keys)


def policy_targets(keep: timedelta = DEFAULT_KEEP, *, batch_size: int = 1000) -> list[PruneTarget]:
    """Prune targets for cap usage, expired dedupe marks and flushed digests.

    Args:
        keep: how much history to keep: cap usage older than this goes, and
            digests flushed longer ago. At least the longest cap window, or
            caps would count too little.
        batch_size: rows per transaction.

    Raises:
        ConfigurationError: ``keep`` is not a positive timedelta.
    """
    if not isinstance(keep, timedelta) or keep <= timedelta(0):
        raise ConfigurationError(f"keep must be a positive timedelta, got {keep!r}")
    caps, marks, digests = cap_usage_table, dedupe_marks_table, digests_table
    return [
        AgePrune("policy.cap_usage", caps, caps.c.at, keep, batch_size=batch_size),
        # A mark's age is counted from its expiry: it goes once it has expired.
        AgePrune("policy.dedupe_marks", marks, marks.c.expires_at, timedelta(0), batch_size=batch_size),
        AgePrune("policy.digests", digests, digests.c.flushed_at, keep, where=[digests.c.status == "flushed"],
                 batch_size=batch_size, children=[_digest_items]),
    ]


def prune(conn: Connection, now: datetime, *, keep: timedelta) -> dict[str, int]:
    """Delete policy bookkeeping no rule can look at any more, in ``conn``'s transaction.

    Cap usage older than ``keep``, expired dedupe marks, and digests flushed
    more than ``keep`` ago (with their items). Workers do this by themselves
    (``Retention.policy``); this is for a script that wants it done now.

    Args:
        conn: a write transaction.
        now: the clock's time.
        keep: how much history to keep (at least the longest cap window).

    Returns:
        rows deleted per table.
    """
    deleted = {t: 0 for t in ("chimeway_cap_usage", "chimeway_dedupe_marks", "chimeway_digest_items",
                              "chimeway_digests")}
    for target in policy_targets(keep):
        cursor: Any = None
        while True:
            batch = target.prune_batch(conn, now, target.batch_size, cursor)
            for table, n in batch.deleted.items():
                deleted[table] += n
            if batch.done:
                break
            cursor = batch.cursor
    return deleted
