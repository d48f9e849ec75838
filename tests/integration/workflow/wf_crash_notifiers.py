"""The notifier the killed-worker test uses (imported by the test and by the worker process)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chimeway import Notifier, Recipient
from chimeway.workflow import deliver, wait

HANG_MARKER = "CHIMEWAY_WF_HANG_MARKER"


def escalate(params: Mapping[str, Any], recipient: Recipient) -> Recipient:
    marker = os.environ.get(HANG_MARKER)
    if marker:
        Path(marker).write_text("progressing")
        time.sleep(600)
    return Recipient(id="user:lead")


class Crashy(Notifier):
    key = "wf_crashy"
    templates = {"in_app": {"body": "hi"}, "email": {"body": "escalated"}}
    workflow = [deliver("in_app"), wait(seconds=1), deliver("email", to=escalate)]

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id="user:1")]

