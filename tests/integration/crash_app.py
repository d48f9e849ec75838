"""A process that triggers, commits, and is SIGKILLed before or during delivery.

Usage: python crash_app.py DATABASE_URL MODE MARKER_FILE
  MODE after_commit: killed right after the commit, before delivering (the
                     delivery was claimed in the trigger's transaction).
  MODE after_commit_in_savepoint: the same, but the trigger ran inside a
                     savepoint, so the delivery was left for after the commit.
  MODE mid_send:     killed while the channel is sending (after the claim).

The app's send lease lasts LEASE seconds (environment, default 60).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import OnlyRec

from chimeway import Chimeway, DeliveryResult, Message
from chimeway.channels import Channel
from chimeway.db import create_engine


class Hangs(Channel):
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def send(self, message: Message) -> DeliveryResult:
        self.marker.write_text(str(message.delivery_id))
        time.sleep(600)
        return DeliveryResult.ok()


def main() -> None:
    url, mode, marker = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    lease = timedelta(seconds=float(os.environ.get("LEASE", "60")))
    app = Chimeway(engine=create_engine(url), channels={"rec": Hangs(marker)}, lease_ttl=lease)
    with Session(app.engine) as session:
        if mode.startswith("after_commit"):
            # Registered before Chimeway's own hook, so it runs first.
            @event.listens_for(session, "after_commit")
            def die(committed: Session) -> None:
                if committed.in_nested_transaction():
                    return  # a savepoint released, not the commit
                marker.write_text("committed")
                os.kill(os.getpid(), signal.SIGKILL)

        with session.begin():
            if mode == "after_commit_in_savepoint":
                with session.begin_nested():
                    app.trigger(session, OnlyRec, {"n": 1}, idempotency_key=f"crash-{mode}")
            else:
                app.trigger(session, OnlyRec, {"n": 1}, idempotency_key=f"crash-{mode}")


if __name__ == "__main__":
    main()
