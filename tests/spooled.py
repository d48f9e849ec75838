"""Child processes whose output goes to temporary files rather than pipes.

A worker started with ``stderr=subprocess.PIPE`` that nobody reads blocks
on its next log line once the pipe's 64 KiB are full: under a fault (a
database restart logs a traceback per retried job) it stops working and
the test waits for nothing. :class:`Spooled` writes stdout and stderr to
temporary files instead, so a child never blocks on its output, and
``communicate()`` still returns what it wrote.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from typing import IO, Any


class Spooled(subprocess.Popen[str]):
    """``subprocess.Popen`` (text mode) with stdout and stderr spooled to temporary files."""

    def __init__(self, args: Sequence[str], **kwargs: Any) -> None:
        for name in ("stdout", "stderr", "text", "universal_newlines"):
            kwargs.pop(name, None)
        self._out: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 -- outlives __init__
        self._err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 -- outlives __init__
        super().__init__(args, stdout=self._out, stderr=self._err, **kwargs)

    @staticmethod
    def _read(spool: IO[bytes]) -> str:
        spool.flush()
        spool.seek(0)
        return spool.read().decode(errors="replace")

    def stdout_text(self) -> str:
        """Everything the child wrote to stdout so far."""
        return self._read(self._out)

    def stderr_text(self) -> str:
        """Everything the child wrote to stderr so far."""
        return self._read(self._err)

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[str, str]:
        """Wait for the child to exit; returns ``(stdout, stderr)`` as text (again on every call)."""
        self.wait(timeout)
        return self.stdout_text(), self.stderr_text()
