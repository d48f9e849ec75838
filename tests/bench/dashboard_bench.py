"""Dashboard benchmark: every page's latency with 1,000,000 jobs and 1,000,000 deliveries.

Prints figures and gates nothing. Creates (and drops) its own PostgreSQL
database, migrates it, fills it with generated rows spread over seven days
(500,000 events, 500,000 notifications, 1,000,000 deliveries, 1,000,000
jobs, 10,000 workflow runs), runs VACUUM ANALYZE, then renders each page
in-process through ``Dashboard.handle`` (no HTTP: the figure is the page's
own cost) and prints the median and worst of several runs. Every statement a
page ran is then EXPLAINed; a sequential scan of a table of 50,000 rows or
more is flagged.

Run: ``.venv/bin/python tests/bench/dashboard_bench.py [--rows 1000000] [--runs 7]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _db import fresh_postgres  # noqa: E402

from chimeway import Chimeway  # noqa: E402
from chimeway.web import Dashboard, Request  # noqa: E402

BIG_ROWS = 50_000  # a sequential scan of a table this large is flagged

# A UUIDv7 for the i-th row of n spread over the last seven days, as SQL.
UUID7 = ("(lpad(to_hex((extract(epoch FROM {ts}) * 1000)::bigint), 12, '0') || '7'"
         " || substr(md5({seed}), 1, 3) || '8' || substr(md5({seed}), 4, 15))::uuid")
TS = "(now() - interval '7 days' + ({i}::float8 / {n}) * interval '7 days')"


def _run(conn: sa.Connection, statement: str) -> None:
    # No parameters: the driver must not read "%" (modulo) as a placeholder.
    conn.exec_driver_sql(statement.replace("%", "%%"))


def fill(engine: sa.Engine, rows: int) -> dict[str, Any]:
    events = rows // 2
    started = time.perf_counter()
    event_ts = TS.format(i="g", n=events)
    event_id = UUID7.format(ts=event_ts, seed="'e' || g")
    notification_id = UUID7.format(ts=event_ts, seed="'n' || g")
    delivery_id = UUID7.format(ts="n.created_at", seed="n.id::text || c")
    job_ts = TS.format(i="g", n=rows)
    with engine.begin() as conn:
        _run(conn, "SET LOCAL synchronous_commit = off")
        _run(conn,
            "INSERT INTO chimeway_events (id, tenant, idempotency_key, notifier_key, notifier_version,"
            " actor, correlation_id, params, created_at)"
            f" SELECT {event_id}, 'tenant-' || (g % 20), 'key-' || g,"
            " CASE WHEN g % 5000 = 0 THEN 'rare_notice' ELSE 'notifier_' || (g % 9) END, 1,"
            " 'user:' || (g % 50000), 'req-' || g, '{\"order_id\": 1, \"password\": \"[redacted]\"}', "
            f"{event_ts} FROM generate_series(1, {events}) AS g")
        _run(conn,
            "INSERT INTO chimeway_notifications (id, event_id, tenant, recipient_id, recipient, notifier_key,"
            " created_at, inbox_at, inbox_content)"
            f" SELECT {notification_id}, e.id, e.tenant, 'user:' || (g % 50000),"
            " '{\"id\": \"x\"}', e.notifier_key, e.created_at, e.created_at,"
            " '{\"title\": \"Order shipped\", \"body\": \"Track it\"}'"
            f" FROM generate_series(1, {events}) AS g"
            " JOIN chimeway_events e ON e.idempotency_key = 'key-' || g AND e.tenant = 'tenant-' || (g % 20)")
        _run(conn,
            "INSERT INTO chimeway_deliveries (id, notification_id, event_id, tenant, recipient_id, channel,"
            " status, reason, message, attempts, not_before, created_at, updated_at, completed_at)"
            f" SELECT {delivery_id}, n.id, n.event_id, n.tenant, n.recipient_id, c,"
            " CASE WHEN h < 90 THEN 'succeeded' WHEN h < 95 THEN 'failed' WHEN h < 98 THEN 'cancelled'"
            "  ELSE 'suppressed' END,"
            " CASE WHEN h < 90 THEN NULL WHEN h < 95 THEN 'temporary: HTTP 503'"
            "  WHEN h < 98 THEN 'permanent: 550 mailbox unknown' ELSE 'quiet_hours' END,"
            " '{\"body\": \"x\"}', 1, CASE WHEN h BETWEEN 90 AND 94 THEN now() + interval '1 hour' END,"
            " n.created_at, n.created_at, CASE WHEN h < 90 OR h >= 95 THEN n.created_at END"
            " FROM chimeway_notifications n, unnest(ARRAY['webhook', 'email']) AS c,"
            " LATERAL (SELECT abs(hashtext(n.id::text || c)) % 100 AS h) AS x")
        _run(conn, "CREATE TEMP TABLE numbered AS"
                             " SELECT id, row_number() OVER (ORDER BY id) AS rn FROM chimeway_deliveries")
        _run(conn, "CREATE INDEX ON numbered (rn)")
        _run(conn,
            "INSERT INTO chimeway_jobs (state, queue, worker, args, meta, errors, attempt, max_attempts,"
            " priority, inserted_at, scheduled_at, attempted_at, attempted_by, completed_at, discarded_at)"
            " SELECT s, q, CASE WHEN q = 'chimeway_delivery' THEN 'chimeway.deliver' ELSE 'shop.' || q END,"
            " CASE WHEN q = 'chimeway_delivery' THEN jsonb_build_object('delivery_id', numbered.id::text)"
            "  ELSE jsonb_build_object('order_id', g) END, '{}',"
            " CASE WHEN s IN ('retryable', 'discarded') THEN '[{\"attempt\": 1, \"at\": \"2026-01-01\","
            "  \"error\": \"RuntimeError: boom\", \"traceback\": \"\"}]' ELSE '[]' END::jsonb,"
            " CASE WHEN s IN ('available', 'scheduled') THEN 0 ELSE 1 END, 5, 0, t,"
            " CASE WHEN s = 'scheduled' THEN now() + interval '1 hour' ELSE t END,"
            " CASE WHEN s IN ('available', 'scheduled') THEN NULL ELSE t END,"
            " CASE WHEN s IN ('available', 'scheduled') THEN NULL ELSE 'node:1:worker:x' END,"
            " CASE WHEN s = 'completed' THEN t END, CASE WHEN s = 'discarded' THEN t END"
            f" FROM (SELECT g, {job_ts} AS t,"
            "  CASE WHEN g % 1000 = 1 THEN 'discarded' WHEN g % 500 = 2 THEN 'retryable'"
            f"   WHEN g > {rows - 5000} THEN 'available' WHEN g % 1000 = 3 THEN 'scheduled'"
            "   ELSE 'completed' END AS s,"
            "  CASE WHEN g % 10 < 8 THEN 'chimeway_delivery' WHEN g % 10 = 8 THEN 'mailers' ELSE 'default' END AS q"
            f"  FROM generate_series(1, {rows}) AS g) AS base"
            " LEFT JOIN numbered ON numbered.rn = base.g")
        _run(conn,
            "INSERT INTO chimeway_workflow_runs (id, notification_id, event_id, tenant, recipient_id, notifier_key,"
            " notifier_version, fingerprint, state, step, wait_until, signal_mark, transitions, created_at,"
            " updated_at)"
            " SELECT id, id, event_id, tenant, recipient_id, notifier_key, 1, 'f',"
            " CASE WHEN abs(hashtext(id::text)) % 3 = 0 THEN 'waiting' ELSE 'completed' END, 1,"
            " now() + interval '1 hour', id, 2, created_at, created_at"
            " FROM (SELECT * FROM chimeway_notifications ORDER BY id DESC LIMIT 10000) AS recent")
    loaded = time.perf_counter() - started
    raw = engine.raw_connection()
    try:
        raw.driver_connection.autocommit = True  # type: ignore[union-attr]
        raw.driver_connection.execute("VACUUM ANALYZE")  # type: ignore[union-attr]
    finally:
        raw.close()
    with engine.connect() as conn:
        counts = {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in
                  ("chimeway_jobs", "chimeway_deliveries", "chimeway_events", "chimeway_notifications",
                   "chimeway_workflow_runs")}
        sample = conn.execute(sa.text(
            "SELECT d.id, d.event_id, d.recipient_id, d.tenant, e.correlation_id FROM chimeway_deliveries d"
            " JOIN chimeway_events e ON e.id = d.event_id WHERE d.status = 'failed' ORDER BY d.id LIMIT 1"
            f" OFFSET {rows // 50}")).one()
        job = conn.execute(sa.text("SELECT id FROM chimeway_jobs WHERE state = 'discarded' LIMIT 1")).scalar()
        delivery_job = conn.execute(sa.text(
            "SELECT args->>'delivery_id' FROM chimeway_jobs WHERE worker = 'chimeway.deliver' LIMIT 1")).scalar()
        run = conn.execute(sa.text("SELECT id FROM chimeway_workflow_runs LIMIT 1")).scalar()
    return {"seconds": loaded, "counts": counts, "delivery": sample, "job": job, "delivery_job": delivery_job,
            "run": run}


class Recorder:
    """Keeps every statement (with its parameters) an engine runs while on."""

    def __init__(self, engine: sa.Engine) -> None:
        self.on = False
        self.seen: list[tuple[str, Any]] = []
        sa.event.listen(engine, "before_cursor_execute", self._before)

    def _before(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if self.on and not statement.lstrip().upper().startswith(("BEGIN", "SAVEPOINT", "RELEASE")):
            self.seen.append((statement, parameters))


def seq_scans(plan: Any, big: set[str]) -> list[str]:
    """Sequential scans of large tables, except those a LIMIT stops early (counts with a cap)."""
    found = []
    stack = [(plan, False)]
    while stack:
        node, limited = stack.pop()
        if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") in big and not limited:
            found.append(str(node["Relation Name"]))
        below = limited or node.get("Node Type") == "Limit"
        stack.extend((child, below) for child in node.get("Plans", []))
    return found


def indexes_used(plan: Any) -> set[str]:
    found = set()
    stack = [plan]
    while stack:
        node = stack.pop()
        if "Index Name" in node:
            found.add(str(node["Index Name"]))
        stack.extend(node.get("Plans", []))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="jobs and deliveries (default 1,000,000)")
    parser.add_argument("--runs", type=int, default=7, help="timed renders per page (default 7)")
    args = parser.parse_args()
    with fresh_postgres("chimeway_dash_bench") as url:
        app = Chimeway(url)
        app.migrate()
        data = fill(app.engine, args.rows)
        print(f"loaded in {data['seconds']:.0f}s: " + ", ".join(f"{t.removeprefix('chimeway_')} {n:,}"
                                                                 for t, n in data["counts"].items()))
        d = data["delivery"]
        day = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 3 * 86400))
        next_day = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 2 * 86400))
        pages = {
            "overview": "/",
            "jobs": "/jobs",
            "jobs: discarded": "/jobs?state=discarded",
            "jobs: completed in chimeway_delivery": "/jobs?state=completed&queue=chimeway_delivery",
            "jobs: retryable in mailers": "/jobs?state=retryable&queue=mailers",
            "jobs: worker shop.mailers": "/jobs?worker=shop.mailers",
            "jobs: args contain": "/jobs?args=order_id%22%3A%2099",
            "jobs: one day, 3 days ago": f"/jobs?since={day}&until={next_day}",
            "job": f"/jobs/{data['job']}",
            "deliveries": "/deliveries",
            "deliveries: failed": "/deliveries?status=failed",
            "deliveries: recipient": f"/deliveries?recipient={d.recipient_id}",
            "deliveries: recipient + tenant": f"/deliveries?recipient={d.recipient_id}&tenant={d.tenant}",
            "deliveries: rare notifier": "/deliveries?notifier=rare_notice",
            "deliveries: common notifier": "/deliveries?notifier=notifier_3",
            "deliveries: correlation id": f"/deliveries?correlation={d.correlation_id}",
            "deliveries: tenant + cancelled": f"/deliveries?tenant={d.tenant}&status=cancelled",
            "deliveries: one day, 3 days ago": f"/deliveries?since={day}&until={next_day}",
            "delivery (with its job)": f"/deliveries/{data['delivery_job']}",
            "event": f"/events/{d.event_id}",
            "workflows": "/workflows",
            "workflows: waiting": "/workflows?state=waiting",
            "run": f"/workflows/{data['run']}",
            "schedules": "/schedules",
            "inbox": f"/inbox?recipient={d.recipient_id}&tenant={d.tenant}",
        }
        with app.engine.connect() as conn:
            big = set(conn.execute(sa.text(
                "SELECT relname FROM pg_class WHERE relname LIKE 'chimeway%' AND relkind = 'r'"
                " AND reltuples >= :n"), {"n": BIG_ROWS}).scalars())
        dashboard = Dashboard(app, authorize=lambda request: "read", refresh_seconds=0)
        recorder = Recorder(app.engine)
        print(f"\n{'page':<40}{'median ms':>10}{'worst ms':>10}  statements  index use (EXPLAIN)")
        flagged = 0
        flagged_statements: list[str] = []
        for name, target in pages.items():
            path, _, query = target.partition("?")
            request = Request(method="GET", path=path, query_string=query, headers={})
            response = dashboard.handle(request)
            assert response.status == 200, (name, response.status, response.body[:500])
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                dashboard.handle(Request(method="GET", path=path, query_string=query, headers={}))
                times.append((time.perf_counter() - t0) * 1000)
            recorder.seen.clear()
            recorder.on = True
            dashboard.handle(Request(method="GET", path=path, query_string=query, headers={}))
            recorder.on = False
            scans: list[str] = []
            used: set[str] = set()
            with app.engine.connect() as conn:
                for statement, parameters in recorder.seen:
                    plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).scalar()
                    root = (plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]
                    found = seq_scans(root, big)
                    if found:
                        flagged_statements.append(f"{name}: {' '.join(statement.split())[:300]}")
                    scans += found
                    used |= indexes_used(root)
            flagged += bool(scans)
            verdict = ("SEQ SCAN on " + ", ".join(sorted(set(scans)))) if scans else ", ".join(sorted(used)) or "-"
            print(f"{name:<40}{statistics.median(times):>10.1f}{max(times):>10.1f}  {len(recorder.seen):>10}  "
                  f"{verdict}")
        print(f"\n{flagged} page(s) with a sequential scan of a large table")
        for line in flagged_statements:
            print("  " + line)
        app.close()


if __name__ == "__main__":
    main()
    sys.exit(0)
