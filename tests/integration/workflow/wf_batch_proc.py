"""A process that advances due workflow runs every way it can, until none waits.

Usage: python wf_batch_proc.py DATABASE_URL RUNS SECONDS

It says ``ready`` once started, waits for RUNS runs to exist, then runs a
worker (4 threads on ``chimeway_workflows``: the runs' own timer jobs) and,
on its main thread, the sweep over and over, while the test's process and
another copy of this one do the same to the same runs. Prints how many runs
this process advanced.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from chimeway import Chimeway, Notifier, Recipient
from chimeway.db import create_engine
from chimeway.models import workflow_runs_table
from chimeway.testing import RecordingChannel
from chimeway.workflow import WORKFLOW_QUEUE, deliver, wait


class Tick(Notifier):
    """A short wait a read would stop, then an email."""

    key = "wf_tick"
    templates = {"email": {"body": "tick {{ n }}"}}
    workflow = [wait(seconds=1, unless="notification.read"), deliver("email")]

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=str(params["user"]))]


def count(app: Chimeway, *where: Any) -> int:
    r = workflow_runs_table
    with app.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(r).where(*where)).scalar_one())


def waiting(app: Chimeway) -> int:
    return count(app, workflow_runs_table.c.state == "waiting")


def main() -> None:
    url, runs, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    app = Chimeway(engine=create_engine(url, pool_size=8), dispatcher="queue", channels={"email": RecordingChannel()})
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while count(app) < runs and time.monotonic() < deadline:
        time.sleep(0.01)
    stop = threading.Event()
    worker = threading.Thread(target=app.queue.run_worker, kwargs={
        "queues": {WORKFLOW_QUEUE: 4}, "poll_interval": 0.05, "stop_event": stop, "plugins": ()})
    worker.start()
    moved = 0
    try:
        while waiting(app) and time.monotonic() < deadline:
            swept = app.progress_due()
            moved += swept
            if not swept:
                time.sleep(0.01)
    finally:
        stop.set()
        worker.join(30)
        app.close()
    print(moved)


if __name__ == "__main__":
    main()
