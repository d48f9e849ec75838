"""The claim and the acknowledgement are planned on the intended indexes whatever the statistics.

Jobs arrive in bulk on a table whose statistics are absent (never analyzed)
or stale (analyzed while it held a few finished jobs), autovacuum off. The
plans are read from ``EXPLAIN (FORMAT JSON)``, both as the worker's first
executions get them (values known) and as a prepared statement's generic
plan. Structure only: which index, which conditions, no sort.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg.sql import Literal

from chimeway.db import create_engine, sql_in
from chimeway.queue import sql

pytestmark = pytest.mark.postgres

FINISHED = (
    "INSERT INTO chimeway_jobs (state, queue, worker, args, meta, errors, attempt, max_attempts,"
    " priority, inserted_at, scheduled_at, attempted_at, attempted_by, completed_at)"
    " SELECT 'completed', 'default', 'noop', '{}', '{}', '[]', 1, 20, 0, :now, :now, :now, 'old', :now"
    " FROM generate_series(1, :n)"
)
QUEUED = (
    "INSERT INTO chimeway_jobs (state, queue, worker, args, meta, errors, attempt, max_attempts,"
    " priority, inserted_at, scheduled_at)"
    " SELECT 'available', 'default', 'noop', '{}', '{}', '[]', 0, 20, 0, :now, :now"
    " FROM generate_series(1, :n)"
)
TYPES = {"claim_queue": "text", "limit": "integer", "now": "timestamptz", "by": "text",
         "acks": "bigint[]"}
NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture(params=["absent", "stale"])
def loaded(request: pytest.FixtureRequest, pg_url: str) -> Iterator[sa.Engine]:
    """20,000 finished and 5,000 queued jobs the statistics know nothing of."""
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE chimeway_jobs SET (autovacuum_enabled = false)"))
        if request.param == "stale":
            conn.execute(sa.text(FINISHED), {"n": 200, "now": NOW})
            conn.execute(sa.text("ANALYZE chimeway_jobs"))
        conn.execute(sa.text(FINISHED), {"n": 20_000, "now": NOW})
        conn.execute(sa.text(QUEUED), {"n": 5_000, "now": NOW})
        analyzed = conn.execute(sa.text(
            "SELECT count(*) FROM pg_stats WHERE tablename = 'chimeway_jobs' AND attname = 'state'"
        )).scalar_one()
        assert analyzed == (1 if request.param == "stale" else 0)
    yield engine
    engine.dispose()


def plan(engine: sa.Engine, mode: str, acks: list[int], limit: int) -> dict[str, Any]:
    """The plan of CLAIM_PG with these arguments, as a prepared statement in ``mode``."""
    names: list[str] = []

    def positional(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    text = re.sub(r"(?<!:):(\w+)", positional, sql_in(engine, sql.CLAIM_PG).text)
    values = {"claim_queue": "default", "limit": limit, "now": NOW, "by": "w1", "acks": acks}
    with engine.connect() as conn:
        conn.execute(sa.text(f"SET plan_cache_mode = {mode}"))
        conn.exec_driver_sql(f"PREPARE claim ({', '.join(TYPES[n] for n in names)}) AS {text}")
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, psycopg.Connection)
        args = ", ".join(f"CAST({Literal(values[n]).as_string(raw)} AS {TYPES[n]})" for n in names)
        explained = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) EXECUTE claim ({args})")
        return dict(explained.scalar_one()[0]["Plan"])


def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from nodes(child)


def cte(root: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in nodes(root) if n.get("Subplan Name") == f"CTE {name}")


def scans(node: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node that reads chimeway_jobs or one of its indexes."""
    return [n for n in nodes(node) if "Scan" in n["Node Type"]
            and (n.get("Relation Name") == "chimeway_jobs" or "Index Name" in n)]


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
def test_claim_reads_only_the_due_index_in_order(loaded: sa.Engine, mode: str) -> None:
    picked = cte(plan(loaded, mode, [], 20), "picked")
    found = [(n["Node Type"], n.get("Index Name")) for n in scans(picked)]
    assert found == [("Index Scan", "ix_chimeway_jobs_due")], found
    assert not any(n["Node Type"] in ("Sort", "Incremental Sort") for n in nodes(picked))


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
def test_ack_looks_its_jobs_up_by_id(loaded: sa.Engine, mode: str) -> None:
    with loaded.begin() as conn:
        ids = list(conn.execute(sa.text(
            "UPDATE chimeway_jobs SET state = 'executing', attempted_by = 'w1', attempt = 1"
            " WHERE id IN (SELECT id FROM chimeway_jobs WHERE state = 'available' LIMIT 20)"
            " RETURNING id")).scalars())
    acked = cte(plan(loaded, mode, ids, 0), "acked")
    lookups = scans(acked)
    assert len(lookups) == 1, lookups
    (lookup,) = lookups
    assert lookup["Node Type"] == "Index Scan", lookup
    assert lookup["Index Name"] in ("pk_chimeway_jobs", "ix_chimeway_jobs_executing"), lookup
    assert re.fullmatch(r"\(id = ANY \(.+\)\)", lookup["Index Cond"]), lookup
