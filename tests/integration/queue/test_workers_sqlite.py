"""Several worker processes polling one SQLite file."""

from __future__ import annotations

import sqlalchemy as sa
from queue_pg_helpers import Workers, scalar, wait_for

from chimeway.db import create_engine
from chimeway.queue import JobQueue

COMPLETED = "SELECT count(*) FROM chimeway_jobs WHERE state = 'completed'"


def test_sqlite_worker_processes_share_one_file(
    sqlite_url: str, sqlite_workers: Workers
) -> None:
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(sa.text(SIDE_EFFECTS_DDL_SQLITE))
    total = 300
    q = JobQueue(engine)
    with engine.begin() as conn:
        q.insert_many(conn, [{"worker": "record", "args": {"n": i}} for i in range(total)])
    procs = [sqlite_workers.start("--concurrency", "4", "--poll", "0.05")
             for _ in range(2)]
    wait_for(lambda: scalar(engine, COMPLETED) == total, 60, "all sqlite jobs", procs)
    for proc in procs:
        code, _, err = sqlite_workers.stop(proc)
        assert code == 0, err
    assert scalar(engine, "SELECT count(*) FROM queue_side_effects") == total
    assert scalar(engine, "SELECT count(DISTINCT n) FROM queue_side_effects") == total
    engine.dispose()


SIDE_EFFECTS_DDL_SQLITE = (
    "CREATE TABLE IF NOT EXISTS queue_side_effects "
    "(n INTEGER NOT NULL, job_id INTEGER NOT NULL, attempt INTEGER NOT NULL, pid INTEGER NOT NULL)"
)
