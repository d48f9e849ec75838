"""The delivery claim finds its rows by primary key, whatever the statistics say.

Deliveries pile up on a table whose statistics are absent (never analyzed)
or stale (analyzed while it held a few finished deliveries), autovacuum
off. The claim's plan is read from ``EXPLAIN (FORMAT JSON)``, both as a
first execution gets it (values known) and as a prepared statement's
generic plan (what psycopg's prepared statements get after a few runs).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from plans import captured, plan_nodes

from chimeway.db import create_engine
from chimeway.deliveries import leases

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 12, 1, tzinfo=UTC)
EVENT = uuid.UUID(int=1)
NOTIFICATIONS = (
    "INSERT INTO chimeway_notifications (id, event_id, tenant, recipient_id, recipient, notifier_key, created_at)"
    " SELECT gen_random_uuid(), :event, '', 'user:' || g, '{\"id\": \"u\"}', 'n', :now"
    " FROM generate_series(1, :n) AS g"
)
DELIVERIES = (
    "INSERT INTO chimeway_deliveries (id, notification_id, event_id, tenant, recipient_id, channel, status,"
    " message, attempts, created_at, updated_at)"
    " SELECT gen_random_uuid(), n.id, :event, '', n.recipient_id, c.channel,"
    " CASE WHEN random() < 0.8 THEN 'succeeded' ELSE 'pending' END, '{}', 0, :now, :now"
    " FROM chimeway_notifications AS n, (VALUES ('webhook'), ('in_app')) AS c(channel)"
    " WHERE NOT EXISTS (SELECT 1 FROM chimeway_deliveries AS d WHERE d.notification_id = n.id)"
)


@pytest.fixture(params=["absent", "stale"])
def loaded(request: pytest.FixtureRequest, pg_url: str) -> Iterator[sa.Engine]:
    """20,000 deliveries, a fifth of them pending, that the statistics know nothing of."""
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO chimeway_events (id, tenant, idempotency_key, notifier_key,"
                             " notifier_version, params, created_at) VALUES (:event, '', 'k', 'n', 1, '{}', :now)"),
                     {"event": EVENT, "now": NOW})
        for table in ("chimeway_deliveries", "chimeway_notifications"):
            conn.execute(sa.text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
        if request.param == "stale":
            conn.execute(sa.text(NOTIFICATIONS), {"n": 50, "event": EVENT, "now": NOW})
            conn.execute(sa.text(DELIVERIES), {"event": EVENT, "now": NOW})
            conn.execute(sa.text("ANALYZE chimeway_deliveries; ANALYZE chimeway_notifications"))
        conn.execute(sa.text(NOTIFICATIONS), {"n": 10_000, "event": EVENT, "now": NOW})
        conn.execute(sa.text(DELIVERIES), {"event": EVENT, "now": NOW})
    yield engine
    engine.dispose()


def claim_plan(engine: sa.Engine, mode: str, ids: list[uuid.UUID]) -> list[dict[str, Any]]:
    """The plan nodes of the delivery claim for ``ids``, as a prepared statement in ``mode``."""
    with captured(engine) as seen, engine.connect() as conn:  # rolled back: nothing stays claimed
        leases.claim(conn, ids, holder="h", now=NOW, lease_until=NOW + timedelta(minutes=1),
                     channels=["webhook", "in_app"])
    [(statement, values)] = seen
    return plan_nodes(engine, statement, values, mode=mode)


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
def test_the_claim_reads_deliveries_by_primary_key_only(loaded: sa.Engine, mode: str) -> None:
    with loaded.connect() as conn:
        ids = list(conn.execute(sa.text(
            "SELECT id FROM chimeway_deliveries WHERE status = 'pending' LIMIT 50")).scalars())
    nodes = claim_plan(loaded, mode, ids)
    on_deliveries = [n for n in nodes if n.get("Relation Name") == "chimeway_deliveries"
                     or str(n.get("Index Name", "")).startswith(("pk_chimeway_deliveries", "ix_chimeway_deliveries"))]
    used = {n["Index Name"] for n in nodes if "Index Name" in n}
    assert "pk_chimeway_deliveries" in used, nodes
    assert not any(i.startswith("ix_chimeway_deliveries") for i in used), used
    assert not any(n["Node Type"] == "Seq Scan" for n in on_deliveries), on_deliveries
