"""Claim and ack under stale planner statistics: prints figures, gates nothing.

The scenario: statistics were taken in a quiet period (a couple of thousand
finished jobs, autovacuum off for the table), then 500,000 finished jobs and
200,000 queued ones arrived without another ANALYZE. One worker process
(concurrency 20) works ``--jobs`` jobs on those statistics, then the table is
analyzed and it works ``--jobs`` more. Printed:

- jobs/s in both states and their ratio (stale / fresh);
- the plans of the claim (``CLAIM_PG``) and of an ack on the stale statistics;
- job updates that were HOT (``n_tup_hot_upd``) and WAL written per job;
- a prune pass with nothing past its age, the every-minute cost, at ~1M rows.

Creates (and drops) its own database on ``CHIMEWAY_BENCH_PG`` (default
``postgresql://postgres@127.0.0.1:5432``).

Run: ``.venv/bin/python tests/bench/stale_stats_bench.py [--jobs 10000]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _db import fresh_postgres  # noqa: E402

from chimeway.db import create_engine, sql_in  # noqa: E402
from chimeway.models import metadata  # noqa: E402
from chimeway.queue import sql  # noqa: E402
from chimeway.queue.plugins.pruner import Pruner, job_targets  # noqa: E402

WORKER = ROOT / "tests" / "integration" / "queue" / "queue_worker_proc.py"

# Finished jobs of the last hours (none past the pruner's default ages), spread
# over the three final states as a busy system has them.
FINISHED = """
INSERT INTO chimeway_jobs (state, queue, worker, args, meta, errors, attempt, max_attempts,
                           priority, inserted_at, scheduled_at, attempted_at, attempted_by,
                           completed_at, cancelled_at, discarded_at)
SELECT s, 'default', 'noop', jsonb_build_object('n', g), '{}', '[]', 1, 20, 0, t, t, t, 'old',
       CASE WHEN s = 'completed' THEN t END, CASE WHEN s = 'cancelled' THEN t END,
       CASE WHEN s = 'discarded' THEN t END
FROM generate_series(1, :n) AS g,
     LATERAL (SELECT CASE WHEN g % 100 = 0 THEN 'cancelled' WHEN g % 100 = 1 THEN 'discarded'
                          ELSE 'completed' END AS s,
                     CAST(:now AS timestamptz) - make_interval(secs => g % 20000) AS t) AS x
"""

QUEUED = """
INSERT INTO chimeway_jobs (state, queue, worker, args, meta, errors, attempt, max_attempts,
                           priority, inserted_at, scheduled_at)
SELECT 'available', 'default', 'noop', jsonb_build_object('n', g), '{}', '[]', 0, 20, 0,
       CAST(:now AS timestamptz), CAST(:now AS timestamptz)
FROM generate_series(1, :n) AS g
"""


def scalar(engine: sa.Engine, query: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(query), params).scalar_one()


def execute(engine: sa.Engine, query: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(query), params)


def table_stats(engine: sa.Engine) -> tuple[int, int, int]:
    """Updates, HOT updates of chimeway_jobs, and the WAL position."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        upd, hot = conn.execute(sa.text(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'chimeway_jobs'"
        )).one()
        wal = conn.execute(sa.text("SELECT pg_current_wal_lsn() - '0/0'")).scalar_one()
    return int(upd), int(hot), int(wal)


def plans(engine: sa.Engine) -> list[str]:
    """EXPLAIN ANALYZE of a claim of 20 and of the ack of those 20, rolled back."""
    now = datetime.now(UTC)
    lines = []
    with engine.connect() as conn, conn.begin() as tx:
        params = {"claim_queue": "default", "limit": 20, "now": now, "by": "explain", "acks": []}
        text = str(sql_in(conn, sql.CLAIM_PG).compile(dialect=conn.dialect))
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cur = raw.cursor()
        cur.execute("EXPLAIN (ANALYZE, COSTS OFF, SUMMARY ON) " + text, params)
        lines += ["claim:"] + ["  " + r[0] for r in cur.fetchall()]
        ids = [r[0] for r in conn.execute(sa.text(
            "SELECT id FROM chimeway_jobs WHERE state = 'executing' AND attempted_by = 'explain'"))]
        cur.execute("EXPLAIN (ANALYZE, COSTS OFF, SUMMARY ON) " + text, {**params, "acks": ids, "limit": 0})
        lines += [f"ack of {len(ids)} (with a claim of 0):"] + ["  " + r[0] for r in cur.fetchall()]
        tx.rollback()
    return lines


def run_worker(url: str, engine: sa.Engine, jobs: int) -> tuple[float, float, float]:
    """Jobs/s of one worker process over ``jobs`` jobs; HOT share of updates; WAL bytes per job."""
    upd0, hot0, wal0 = table_stats(engine)
    mark = scalar(engine, "SELECT max(id) FROM chimeway_jobs WHERE state = 'completed'")
    started = datetime.now(UTC)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(WORKER), url, "--concurrency", "20", "--poll", "1"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    done_query = ("SELECT count(*) FROM chimeway_jobs WHERE state = 'completed' AND attempted_at >= :t "
                  "AND attempted_at <= :t + interval '1 hour'")
    deadline = time.monotonic() + 900
    while scalar(engine, done_query, t=started) < jobs:
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("worker too slow (15 minutes)")
        time.sleep(0.25)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    with engine.connect() as conn:
        n, span = conn.execute(sa.text(
            "SELECT count(*), extract(epoch FROM max(completed_at) - min(attempted_at))"
            " FROM chimeway_jobs WHERE state = 'completed' AND id > :mark AND attempted_at >= :t"),
            {"mark": mark, "t": started}).one()
    time.sleep(1.0)  # the worker's backends flush their statistics as they exit
    upd1, hot1, wal1 = table_stats(engine)
    upd = upd1 - upd0
    return n / float(span), (hot1 - hot0) / upd if upd else 0.0, (wal1 - wal0) / n


def prune_cost(engine: sa.Engine, passes: int = 20) -> float:
    """Median ms of a prune pass over the default job targets that finds nothing past its age."""
    pruner = Pruner(engine, job_targets())
    times = []
    for _ in range(passes):
        started = time.perf_counter()
        deleted = pruner.prune(datetime.now(UTC))
        times.append(time.perf_counter() - started)
        assert not any(deleted.values()), deleted
    return statistics.median(times) * 1000


def prune_plans(engine: sa.Engine) -> list[str]:
    """Index used and server execution time of each job target's batch statement, rolled back."""
    from psycopg import ClientCursor

    from chimeway.queue.plugins.pruner import BEGINNING, AgePrune

    lines = []
    now = datetime.now(UTC)
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        for target in job_targets():
            assert isinstance(target, AgePrune)
            compiled = target._statement.compile(dialect=conn.dialect)
            params = {**compiled.params, "cutoff": now - target.max_age, "after": BEGINNING,
                      "limit": target.batch_size}
            cur = ClientCursor(raw)
            cur.execute("EXPLAIN (ANALYZE, COSTS OFF) " + str(compiled), params)
            rows = [r[0] for r in cur.fetchall()]
            raw.rollback()
            scan = next(r.strip() for r in rows if "Scan" in r and "CTE" not in r)
            took = next(r.strip() for r in rows if r.startswith("Execution Time"))
            lines.append(f"  {target.name}: {scan}; {took}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default=os.environ.get("CHIMEWAY_BENCH_PG",
                                                           "postgresql://postgres@127.0.0.1:5432"))
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per measured run")
    parser.add_argument("--finished", type=int, default=500_000)
    parser.add_argument("--queued", type=int, default=200_000)
    parser.add_argument("--prune-rows", type=int, default=1_000_000)
    ns = parser.parse_args()
    with fresh_postgres(prefix="chimeway_stale", server=ns.server) as url:
        engine = create_engine(url)
        metadata.create_all(engine)
        print(f"cpus={os.cpu_count()} postgres={scalar(engine, 'SHOW server_version_num')} "
              f"load average={os.getloadavg()[0]:.1f}")
        indexes = scalar(engine, "SELECT count(*) FROM pg_indexes WHERE tablename = 'chimeway_jobs'")
        options = scalar(engine, "SELECT reloptions FROM pg_class WHERE relname = 'chimeway_jobs'")
        print(f"chimeway_jobs: {indexes} indexes, reloptions {options}")
        execute(engine, "ALTER TABLE chimeway_jobs SET (autovacuum_enabled = false)")
        now = datetime.now(UTC)
        execute(engine, FINISHED, n=2000, now=now)
        execute(engine, "ANALYZE chimeway_jobs")
        started = time.perf_counter()
        execute(engine, FINISHED, n=ns.finished, now=now)
        execute(engine, QUEUED, n=ns.queued, now=now)
        print(f"statistics taken at 2,000 finished jobs; then {ns.finished:,} finished and "
              f"{ns.queued:,} queued inserted in {time.perf_counter() - started:.1f} s")
        for line in plans(engine):
            print(line)
        stale, stale_hot, stale_wal = run_worker(url, engine, ns.jobs)
        print(f"stale statistics: {stale:,.0f} jobs/s ({ns.jobs:,} jobs; HOT updates "
              f"{stale_hot:.0%}; WAL {stale_wal / 1024:.1f} kB/job)")
        execute(engine, "ANALYZE chimeway_jobs")
        fresh, fresh_hot, fresh_wal = run_worker(url, engine, ns.jobs)
        print(f"after ANALYZE:    {fresh:,.0f} jobs/s ({ns.jobs:,} jobs; HOT updates "
              f"{fresh_hot:.0%}; WAL {fresh_wal / 1024:.1f} kB/job)")
        print(f"stale / fresh: {stale / fresh:.2f}")
        rows = scalar(engine, "SELECT count(*) FROM chimeway_jobs")
        if ns.prune_rows > rows:
            execute(engine, FINISHED, n=ns.prune_rows - rows, now=datetime.now(UTC))
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("VACUUM ANALYZE chimeway_jobs"))
        rows = scalar(engine, "SELECT count(*) FROM chimeway_jobs")
        print(f"prune pass with nothing past its age at {rows:,} rows: p50 {prune_cost(engine):.2f} ms "
              "(three transactions, client included); on the server:")
        for line in prune_plans(engine):
            print(line)
        engine.dispose()


if __name__ == "__main__":
    main()
