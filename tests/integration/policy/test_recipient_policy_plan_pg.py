"""The preferences read finds a recipient's rows by index, whatever the statistics say.

Every trigger and every pre-send claim reads the preferences and settings of
its recipients (``load_recipient_policy``). Here both tables hold 20,000
recipients' rows that the statistics know nothing of (never analyzed) or
underrate (analyzed while they held a few rows), autovacuum off. The read's
plan is taken from ``EXPLAIN (FORMAT JSON)`` as a first execution gets it and
as a prepared statement's generic plan: neither may walk a whole table.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from plans import captured, plan_nodes

from chimeway.db import create_engine
from chimeway.preferences import load_recipient_policy

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 12, 1, tzinfo=UTC)
PREFERENCES = (
    "INSERT INTO chimeway_preferences (id, tenant, recipient_id, scope, scope_key, channel, enabled, source,"
    " updated_at) SELECT gen_random_uuid(), '', 'user:' || g, 'all', '', c.channel, g % 2 = 0, 'user', :now"
    " FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS g, (VALUES ('email'), ('webhook')) AS c(channel)"
)
SETTINGS = (
    "INSERT INTO chimeway_recipient_settings (tenant, recipient_id, timezone, quiet_start, quiet_end, updated_at)"
    " SELECT '', 'user:' || g, 'Europe/Paris', '22:00', '07:00', :now FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS g"
)
TABLES = ("chimeway_preferences", "chimeway_recipient_settings")


@pytest.fixture(params=["absent", "stale"])
def loaded(request: pytest.FixtureRequest, pg_url: str) -> Iterator[sa.Engine]:
    """20,000 recipients with preferences and settings, unknown to the statistics."""
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        for table in TABLES:
            conn.execute(sa.text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
        first = 1
        if request.param == "stale":
            for statement in (PREFERENCES, SETTINGS):
                conn.execute(sa.text(statement), {"first": 1, "last": 20, "now": NOW})
            conn.execute(sa.text("ANALYZE chimeway_preferences; ANALYZE chimeway_recipient_settings"))
            first = 21
        for statement in (PREFERENCES, SETTINGS):
            conn.execute(sa.text(statement), {"first": first, "last": 20_000, "now": NOW})
    yield engine
    engine.dispose()


def policy_plan(engine: sa.Engine, mode: str, ids: list[str]) -> list[dict[str, Any]]:
    """The plan nodes of the recipient policy read for ``ids``, as a prepared statement in ``mode``."""
    with captured(engine) as seen, engine.connect() as conn:
        preferences, settings = load_recipient_policy(conn, "", ids)
    # The read itself is right: both kinds of rows for every recipient asked for.
    assert all(len(preferences[i]) == 2 for i in ids) and set(settings) == set(ids)
    [(statement, values)] = seen
    return plan_nodes(engine, statement, values, mode=mode)


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
@pytest.mark.parametrize("count", [1, 10, 11, 100, 500])
def test_the_policy_read_never_walks_a_whole_table(loaded: sa.Engine, mode: str, count: int) -> None:
    ids = [f"user:{i}" for i in range(1, 20_000, 20_000 // count)][:count]
    plan = policy_plan(loaded, mode, ids)
    walked = [n["Relation Name"] for n in plan if n["Node Type"] == "Seq Scan"]
    assert walked == [], plan
    used = {n["Index Name"] for n in plan if "Index Name" in n}
    assert "uq_chimeway_preferences_target" in used, used
    assert any(i.startswith("pk_chimeway_recipient_settings") for i in used), used
