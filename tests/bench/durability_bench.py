"""Deliveries under faults: what is lost, what is sent twice, how long recovery takes.

    python tests/bench/durability_bench.py [--deliveries 2000] [--lease 2] [--faults sigkill,db_restart,sigterm_slow,sqlite]

For each fault, plans N webhook deliveries with the queue dispatcher, starts
a worker process, injects the fault a third of the way in (see
``tests/faults.py``) and prints ``lost L, duplicated D, recovered in S s``:
the clock runs from the fault until every delivery row is final. ``lost``
counts deliveries the receiver never saw plus rows not ``succeeded``;
``duplicated`` counts extra receipts of the same ``webhook-id``. The
recovery time is bounded by the lease (``--lease``, the app's ``lease_ttl``;
60 s by default in an app, 2 s here) plus the worker's rescue interval.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _db import fresh_postgres
from faults import Cluster, run

from chimeway.db import create_engine
from chimeway.models import metadata


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--faults", default="sigkill,db_restart,sigterm_slow,sqlite")
    options = parser.parse_args()
    for fault in options.faults.split(","):
        if fault == "db_restart":
            cluster = Cluster()
            try:
                report = run(fault, cluster.url, deliveries=options.deliveries, lease=options.lease, cluster=cluster)
            finally:
                cluster.stop()
        elif fault == "sqlite":
            with tempfile.TemporaryDirectory() as folder:
                url = f"sqlite:///{folder}/bench.db"
                engine = create_engine(url)
                metadata.create_all(engine)
                engine.dispose()
                report = run("sigkill", url, deliveries=options.deliveries, lease=options.lease, workers=2,
                             concurrency=10, delay=0.2)
                report.fault = "sqlite, 2 workers, sigkill"
        else:
            with fresh_postgres("chimeway_durability") as url:
                report = run(fault, url, deliveries=options.deliveries, lease=options.lease)
        print(report.line(), flush=True)


if __name__ == "__main__":
    main()
