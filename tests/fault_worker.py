"""A delivery worker process for the fault proofs (see ``tests/faults.py``).

    python tests/fault_worker.py URL RECEIVER_URL [--lease S] [--concurrency N] [--grace S] [--stale-after S]

Works ``chimeway_delivery`` until SIGTERM, with short heartbeats so a dead
peer's jobs are rescued within seconds rather than a minute.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faults import make_app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("receiver")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--grace", type=float, default=15.0)
    parser.add_argument("--stale-after", type=float, default=3.0)
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    app = make_app(options.url, options.receiver, lease=options.lease, pool=options.concurrency + 5)
    app.queue.stale_after = timedelta(seconds=options.stale_after)
    app.queue.run_worker(
        queues={"chimeway_delivery": options.concurrency}, poll_interval=0.5, shutdown_grace=options.grace,
        heartbeat_interval=options.stale_after / 4, rescue_interval=options.stale_after / 2,
    )
    app.close()


if __name__ == "__main__":
    main()
