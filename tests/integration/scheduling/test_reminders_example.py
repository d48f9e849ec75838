"""The appointment reminders example runs and sends what it says it sends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_example_sends_each_reminder_once_and_none_to_the_cancelled() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "appointment_reminders.py")],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stderr
    sent = [line for line in run.stdout.splitlines() if "] sms to " in line]
    assert [line.split("] sms to ")[0] + "]" for line in sent] == [
        "[Mon 08:00]", "[Mon 08:00]", "[Mon 10:00]", "[Mon 13:00]", "[Tue 08:00]",
    ]
    assert sum("Alice" in line for line in sent) == 2
    assert sum("Bob" in line for line in sent) == 2
    assert sum("Dan" in line for line in sent) == 1
    assert not any("Carol" in line for line in sent)
    assert "status   succeeded" in run.stdout
    assert "trigger reminder_24h: 0 matching, 0 pending" in run.stdout
