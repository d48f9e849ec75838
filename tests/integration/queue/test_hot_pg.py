"""Queue updates that change no indexed column stay HOT (heap-only: no index entries written).

Every update of a job changes ``state``, which every job index is keyed or
filtered on, so none of them can be HOT (``tests/bench/hot_updates_bench.py``
prints the fraction per kind). A worker's heartbeat changes only
``heartbeat_at``; this checks, deterministically, that it stays HOT: the
counters are the transaction's own (``pg_stat_xact_user_tables``) and the
row's page has room for its new versions.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from chimeway.queue import sql

pytestmark = pytest.mark.postgres

COUNTS = sa.text("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = :t")


def test_a_heartbeat_is_a_hot_update(pg_engine: sa.Engine) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    with pg_engine.begin() as conn:
        conn.execute(sql.INSERT_WORKER, {"id": "node:1:worker:ab", "node": "node", "queues": {"default": 10},
                                         "started_at": start, "heartbeat_at": start})
        for beat in range(1, 6):
            updated = conn.execute(sql.HEARTBEAT, {"worker_id": "node:1:worker:ab",
                                                   "now": start + timedelta(seconds=5 * beat)})
            assert updated.rowcount == 1
        assert tuple(conn.execute(COUNTS, {"t": "chimeway_workers"}).one()) == (5, 5)
