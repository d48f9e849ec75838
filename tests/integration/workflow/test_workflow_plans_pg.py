"""The statement that locks a batch of due runs looks at signals by an index probe per run, whatever the statistics.

20,000 signals on a table never analyzed (autovacuum off). The locking
statement the sweep sends is explained as a prepared statement's generic
plan. Structure only: its look at ``chimeway_signals`` is a per-run subplan
that finds the run's recipient through the actor index, not a scan of the
table or a join planned from its (absent) statistics.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from journeys import Race
from plans import nodes, sent_plan
from sqlalchemy import event
from sqlalchemy.orm import Session

from chimeway import Chimeway
from chimeway.db import create_engine
from chimeway.testing import FakeClock, RecordingChannel

pytestmark = pytest.mark.postgres

SIGNALS = (
    "INSERT INTO chimeway_signals (id, tenant, actor, name, payload, created_at, matched)"
    " SELECT gen_random_uuid(), '', 'someone:' || (n % 2000), 'notification.read', '{}', now(), 0"
    " FROM generate_series(1, 20000) AS n"
)


def test_the_batch_lock_probes_each_runs_signals_through_the_actor_index(pg_url: str) -> None:
    clock = FakeClock()
    app = Chimeway(engine=create_engine(pg_url), clock=clock, dispatcher="queue",
                   channels={"email": RecordingChannel()})
    with app.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE chimeway_signals SET (autovacuum_enabled = false)"))
        conn.execute(sa.text(SIGNALS))
    with Session(app.engine) as session, session.begin():
        for i in range(20):
            app.trigger(session, Race, {"user": f"user:{i}"}, idempotency_key=f"plan-{i}")
    app.work()
    clock.advance(minutes=30)
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        if "FOR UPDATE" in statement and "chimeway_workflow_runs" in statement:
            sent.append((statement, params))

    event.listen(app.engine, "before_cursor_execute", capture)
    assert app.progress_due() == 20
    event.remove(app.engine, "before_cursor_execute", capture)
    statement, params = sent[0]
    with app.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, psycopg.Connection)
        plan = sent_plan(raw, statement, params)
    subplans = [n for n in nodes(plan) if n.get("Parent Relationship") == "SubPlan"]
    per_run = [n for sub in subplans for n in nodes(sub) if n.get("Relation Name") == "chimeway_signals"]
    elsewhere = [n for n in nodes(plan) if n.get("Relation Name") == "chimeway_signals"]
    assert len(per_run) == len(elsewhere) == 1, plan
    [probe] = per_run
    assert probe.get("Index Name") == "ix_chimeway_signals_actor", probe
    assert "recipient_id" in probe["Index Cond"] and "tenant" in probe["Index Cond"], probe
    app.engine.dispose()
