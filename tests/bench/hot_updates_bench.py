"""Which job updates are HOT, kind by kind: prints figures, gates nothing.

A HOT update (heap-only tuple) writes no index entry: PostgreSQL can make one
when no column that an index covers (its keys, its expressions, its
predicate) changes and the new row version fits on the same page. Every
update below is made by the queue's own methods (``claim``, ``record``,
``complete``, ``rescue``, ``release``, ``retry``, ``cancel``,
``heartbeat``), on ``--jobs`` rows each, in a database of its own created on
``CHIMEWAY_BENCH_PG`` (default ``postgresql://postgres@127.0.0.1:5432``) with
Chimeway's metadata. Printed per kind: the rows updated, how many of those
updates were HOT (``n_tup_upd`` and ``n_tup_hot_upd`` of
``pg_stat_user_tables``, read after each kind), and whether the update
changes ``state``, the column every job index is keyed or filtered on.

The connections are not pooled, so each backend reports its counters when it
closes; the script waits until the counters have taken every update in.

Then, for each ``--fillfactor``, ``--cycles`` jobs are claimed and
acknowledged 20 at a time by the worker's statement (``CLAIM_PG``) under
``EXPLAIN (ANALYZE, WAL)``, and the script prints WAL bytes and server time
per job (the server's own clock for the statement, instrumentation
included), the updates and how many were HOT, and the table's size: what
the table's fillfactor does to updates that cannot be HOT.

Run: ``.venv/bin/python tests/bench/hot_updates_bench.py [--jobs 2000] [--cycles 20000]
[--fillfactor 100,70]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _db import fresh_postgres  # noqa: E402

from chimeway.db import create_engine, sql_in  # noqa: E402
from chimeway.models import metadata  # noqa: E402
from chimeway.queue import Cancel, JobQueue, NewJob, Snooze, sql  # noqa: E402
from chimeway.queue.runner import Claimed  # noqa: E402

COUNTERS = ("SELECT coalesce(sum(n_tup_upd), 0), coalesce(sum(n_tup_hot_upd), 0)"
            " FROM pg_stat_user_tables WHERE relname = :table")


def counters(engine: sa.Engine, table: str) -> tuple[int, int]:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        updated, hot = conn.execute(sa.text(COUNTERS), {"table": table}).one()
        return int(updated), int(hot)


def settled(engine: sa.Engine, table: str, expected: int = 0) -> tuple[int, int]:
    """The counters once at least ``expected`` updates are in and they stopped growing for half a second."""
    deadline = time.monotonic() + 15
    last = counters(engine, table)
    while True:
        time.sleep(0.5)
        now = counters(engine, table)
        if (now == last and now[0] >= expected) or time.monotonic() > deadline:
            return now
        last = now


def ok(**_: object) -> None:
    pass


def boom(**_: object) -> None:
    raise ValueError("provider down")


def stop(**_: object) -> None:
    raise Cancel("gone")


def later(**_: object) -> None:
    raise Snooze(60)


def build(url: str) -> JobQueue:
    engine = build_engine(url)
    q = JobQueue(engine, notify=False, backoff=lambda attempt: 3600.0)
    q.register(ok, name="ok")
    q.register(boom, name="boom")
    q.register(boom, name="last", max_attempts=1)
    q.register(stop, name="stop")
    q.register(later, name="later")
    return q


def enqueue(q: JobQueue, worker: str, n: int) -> None:
    with q.engine.begin() as conn:
        q.insert_many(conn, [NewJob(worker=worker, args={"n": i}) for i in range(n)])


Step = Callable[[], object]


def kinds(q: JobQueue, n: int) -> list[tuple[str, str, bool, Step | None, Step]]:
    """(name, table, changes state, set-up (not counted), the updates), in the order they run."""
    by = q.new_worker_id()
    q.register_worker(by, {"default": n})
    held: dict[str, list[Claimed]] = {}

    def claim(worker: str, owner: str = by) -> Step:
        def run() -> None:
            held.pop(worker, None)
            enqueue(q, worker, n)
            claimed = q.claim("default", n, owner)
            assert {job.info.worker for job in claimed} == {worker}, "jobs left over from an earlier kind"
            held[worker] = claimed
        return run

    def record(worker: str) -> Step:
        def run() -> None:
            for job in held.pop(worker):
                q.record(job, q.execute(job), by)
        return run

    def ack() -> None:
        q.claim("default", 0, by, acks=[job.info.id for job in held.pop("ok")])

    def ids(state: str) -> list[int]:
        with q.engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT id FROM chimeway_jobs WHERE state = :s"),
                                     {"s": state}).scalars())

    def retry() -> None:
        for job_id in ids("discarded"):
            q.retry(job_id)

    def cancel() -> None:
        for job_id in ids("available"):
            q.cancel(job_id)

    def beat() -> None:
        for _ in range(n):
            q.heartbeat(by)

    jobs = "chimeway_jobs"
    return [
        ("claim: available -> executing", jobs, True, lambda: enqueue(q, "ok", n),
         lambda: held.setdefault("ok", q.claim("default", n, by))),
        ("ack with the next claim: executing -> completed", jobs, True, None, ack),
        ("record a completion (drain, work): -> completed", jobs, True, claim("ok"), record("ok")),
        ("record a failure: -> retryable, errors appended", jobs, True, claim("boom"), record("boom")),
        ("record the last failure: -> discarded", jobs, True, claim("last"), record("last")),
        ("record Cancel: -> cancelled", jobs, True, claim("stop"), record("stop")),
        ("record Snooze: -> scheduled, meta counted", jobs, True, claim("later"), record("later")),
        ("release on shutdown: executing -> available", jobs, True, claim("ok"), lambda: q.release(by)),
        ("rescue from a dead worker: executing -> available", jobs, True, claim("ok", "dead:worker"),
         q.rescue),
        ("operator retry: discarded -> available", jobs, True, None, retry),
        ("operator cancel: available -> cancelled", jobs, True, None, cancel),
        ("worker heartbeat", "chimeway_workers", False, None, beat),
    ]


def fractions(url: str, n: int) -> None:
    q = build(url)
    print(f"{'kind of update':<52} {'rows':>6} {'HOT':>6} {'HOT %':>6}  changes state")
    for name, table, changes_state, setup, run in kinds(q, n):
        if setup is not None:
            setup()
        before = settled(q.engine, table)
        run()
        after = settled(q.engine, table, before[0] + n)
        rows, hot = after[0] - before[0], after[1] - before[1]
        share = f"{100.0 * hot / rows:5.0f}%" if rows else "    -"
        print(f"{name:<52} {rows:>6} {hot:>6} {share:>6}  {'yes' if changes_state else 'no'}", flush=True)
    q.engine.dispose()


def cycles(url: str, n: int, fillfactor: int) -> str:
    """Claim and acknowledge ``n`` jobs 20 at a time through CLAIM_PG under EXPLAIN (ANALYZE, WAL)."""
    engine = build_engine(url)
    q = JobQueue(engine, notify=False)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE chimeway_jobs"))
        conn.execute(sa.text(f"ALTER TABLE chimeway_jobs SET (fillfactor = {int(fillfactor)})"))
    enqueue(q, "ok", n)
    explain = "EXPLAIN (ANALYZE, WAL, FORMAT JSON) " + sql_in(engine, sql.CLAIM_PG).text
    before = counters(engine, "chimeway_jobs")
    acks: list[int] = []
    wal = fpi = 0
    server = 0.0
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        while True:
            plan = conn.execute(sa.text(explain), {"acks": acks, "claim_queue": "default", "limit": 20,
                                                   "now": q.clock.now(), "by": "bench"}).scalar_one()
            wal += plan[0]["Plan"]["WAL Bytes"]
            fpi += plan[0]["Plan"]["WAL FPI"]
            server += plan[0]["Execution Time"]
            acks = list(conn.execute(sa.text("SELECT id FROM chimeway_jobs WHERE state = 'executing'")).scalars())
            if not acks:
                break
        pages = conn.execute(sa.text("SELECT pg_relation_size('chimeway_jobs') / 8192")).scalar_one()
    after = settled(engine, "chimeway_jobs", before[0] + 2 * n)
    engine.dispose()
    rows, hot = after[0] - before[0], after[1] - before[1]
    return (f"fillfactor {fillfactor:>3}: {wal / n:5.0f} WAL bytes/job ({fpi / n:.2f} full pages), "
            f"server {server / n * 1000:5.1f} us/job, {rows} updates, {hot} HOT, table {pages} pages")


def build_engine(url: str) -> sa.Engine:
    return create_engine(url, poolclass=NullPool)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default=os.environ.get("CHIMEWAY_BENCH_PG",
                                                           "postgresql://postgres@127.0.0.1:5432"))
    parser.add_argument("--jobs", type=int, default=2000, help="rows per kind of update")
    parser.add_argument("--cycles", type=int, default=20_000,
                        help="jobs claimed and acknowledged per fillfactor (0 skips)")
    parser.add_argument("--fillfactor", default="100,70", help="comma-separated fillfactors for the cycles")
    ns = parser.parse_args()
    print(f"cpus={os.cpu_count()} load average={os.getloadavg()[0]:.1f}")
    with fresh_postgres(prefix="chimeway_hot", server=ns.server) as url:
        engine = create_engine(url)
        metadata.create_all(engine)
        engine.dispose()
        fractions(url, ns.jobs)
        if ns.cycles:
            print(f"claim + ack cycles (CLAIM_PG, 20 jobs each, {ns.cycles:,} jobs) by the table's fillfactor:")
            for fillfactor in (int(f) for f in ns.fillfactor.split(",")):
                print("  " + cycles(url, ns.cycles, fillfactor), flush=True)


if __name__ == "__main__":
    main()
