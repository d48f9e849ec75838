"""A scan's "already notified?" lookup probes the events index per key, whatever the statistics.

10,000 events on a table never analyzed (autovacuum off); the lookup is run
as a prepared statement's generic plan, the plan the server settles on from
its sixth execution. Structure only: the scan of ``chimeway_events`` must
find each key through the unique index's ``idempotency_key`` column, not
walk the tenant's rows and check the list on each.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from plans import sent_plan
from sqlalchemy import event

from chimeway.db import create_engine
from chimeway.scheduling.scans import existing_keys

pytestmark = pytest.mark.postgres

EVENTS = (
    "INSERT INTO chimeway_events (id, tenant, idempotency_key, notifier_key, notifier_version, params, created_at)"
    " SELECT gen_random_uuid(), '', 'reminder:' || n, 'proof_reminder', 1, '{}', :now"
    " FROM generate_series(1, :n) AS n"
)


@pytest.fixture
def unanalyzed(pg_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE chimeway_events SET (autovacuum_enabled = false)"))
        conn.execute(sa.text(EVENTS), {"n": 10_000, "now": datetime(2026, 12, 1, tzinfo=UTC)})
    yield engine
    engine.dispose()


def _scans_of(node: dict[str, Any], table: str) -> list[dict[str, Any]]:
    found = [node] if node.get("Relation Name") == table else []
    for child in node.get("Plans", ()):
        found += _scans_of(child, table)
    return found


def test_the_lookup_of_already_notified_rows_probes_the_index_per_key(unanalyzed: sa.Engine) -> None:
    keys = [("", f"reminder:{n}") for n in range(1, 10_001, 20)] + [("", "reminder:none")]
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        if "chimeway_events" in statement:
            seen.append((statement, params))

    event.listen(unanalyzed, "before_cursor_execute", capture)
    with unanalyzed.connect() as conn:
        found = existing_keys(conn, keys, like=unanalyzed)
    event.remove(unanalyzed, "before_cursor_execute", capture)
    assert found == set(keys[:-1])
    [(statement, params)] = seen

    with unanalyzed.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, psycopg.Connection)
        plan = sent_plan(raw, statement, params, analyze=True)
    [scan] = _scans_of(plan, "chimeway_events")
    assert scan["Node Type"] in ("Index Scan", "Index Only Scan"), scan
    assert "idempotency_key" in scan["Index Cond"], scan
    # One probe per key: never more rows read than keys looked up.
    assert scan["Actual Rows"] * scan["Actual Loops"] <= len(keys)
