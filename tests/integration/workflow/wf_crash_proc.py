"""A worker process that is SIGKILLed in the middle of advancing a workflow run.

Usage: python wf_crash_proc.py DATABASE_URL MARKER_FILE

It runs the workflow queue; the run's next step asks ``escalate`` for its
recipients, which (in this process only) writes the marker and hangs while
the run's row lock is held, until the parent kills the process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from wf_crash_notifiers import HANG_MARKER

from chimeway import Chimeway
from chimeway.db import create_engine
from chimeway.testing import RecordingChannel


def main() -> None:
    url, marker = sys.argv[1], sys.argv[2]
    os.environ[HANG_MARKER] = marker
    app = Chimeway(engine=create_engine(url), dispatcher="queue", channels={"email": RecordingChannel()})
    app.queue.run_worker(queues={"chimeway_workflows": 2, "chimeway_delivery": 2}, poll_interval=0.1)


if __name__ == "__main__":
    main()
