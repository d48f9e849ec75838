"""Helper processes for the scheduling proofs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from spooled import Spooled

HERE = Path(__file__).parent
ROOT = HERE.parents[2]


class Procs:
    """Starts ``sched_proc.py`` processes and kills leftovers."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, mode: str, *args: str) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = Spooled(
            [sys.executable, str(HERE / "sched_proc.py"), mode, self.url, *args],
            cwd=ROOT, env=env,
        )
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
