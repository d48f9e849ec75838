"""Action trigger benchmark: prints figures, gates nothing.

Creates (and drops) its own database on ``CHIMEWAY_BENCH_PG`` (default
``postgresql://postgres@127.0.0.1:5432``), fills ``proof_orders`` with
``--rows`` unprocessed rows, and runs the ``proof_process`` action trigger of
``tests/integration/scheduling/sched_proc.py`` (every second,
``lock_for_update``, 500 rows per batch job, 8 threads per worker) with one
worker process and then two, with a savepoint per row and then with
``isolate_rows=False``, measuring rows processed per second from the
first batch job's start to the last job's completion (process start-up
excluded).

Run: ``.venv/bin/python tests/bench/record_trigger_action_bench.py [--rows 10000]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "integration" / "scheduling"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(HERE))

from _db import fresh_postgres  # noqa: E402
from sched_proc import ProofBase, ProofOrder  # noqa: E402

from chimeway.db import create_engine  # noqa: E402
from chimeway.models import metadata  # noqa: E402


def run(url: str, engine: sa.Engine, rows: int, processes: int, isolate: bool) -> float:
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE chimeway_jobs, chimeway_cron_ticks, proof_orders, proof_gate"))
        conn.execute(sa.insert(ProofOrder), [{"id": i} for i in range(1, rows + 1)])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, str(HERE / "sched_proc.py"), "actions", url, "--together", str(processes),
                               "--seconds", "600", *([] if isolate else ["--no-isolate"])],
                              env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(processes)]
    for proc in procs:
        proc.communicate(timeout=900)
    with engine.connect() as conn:
        done = conn.execute(sa.text("SELECT count(*) FROM proof_orders WHERE processed AND runs = 1")).scalar_one()
        took = conn.execute(sa.text(
            "SELECT extract(epoch FROM max(completed_at) - min(attempted_at)) FROM chimeway_jobs"
            " WHERE queue = 'proof_process' AND worker <> 'chimeway.record_trigger.scan'")).scalar_one()
    assert done == rows, f"{done} of {rows} rows processed once"
    return rows / float(took)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    ns = parser.parse_args()
    server = os.environ.get("CHIMEWAY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
    with fresh_postgres(server=server) as url:
        engine = create_engine(url)
        metadata.create_all(engine)
        ProofBase.metadata.create_all(engine)
        print(f"cpus={os.cpu_count()} load average={os.getloadavg()[0]:.1f}")
        for isolate in (True, False):
            for processes in (1, 2):
                rate = run(url, engine, ns.rows, processes, isolate)
                how = "a savepoint per row" if isolate else "isolate_rows=False"
                print(f"action trigger, {processes} worker process(es) x8, {how}: {rate:,.0f} rows/s "
                      f"({ns.rows:,} rows, each once)")
        engine.dispose()


if __name__ == "__main__":
    main()
