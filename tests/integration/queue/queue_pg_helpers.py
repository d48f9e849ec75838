"""Helpers shared by the queue's integration tests: worker processes and waiting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from spooled import Spooled

HERE = Path(__file__).parent
ROOT = HERE.parents[2]


class Workers:
    """Spawns worker processes and makes sure none outlives the test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *args: str, url: str | None = None) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = Spooled(
            [sys.executable, str(HERE / "queue_worker_proc.py"), url or self.url, *args],
            cwd=ROOT, env=env,
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, str]:
        # A SIGTERM that lands while the process is still importing (a loaded
        # machine) kills it before the worker installs its handler: wait
        # until it has registered, as a supervisor's readiness check would.
        self.wait_registered(proc, timeout)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err

    def wait_registered(self, proc: subprocess.Popen[str], timeout: float = 30) -> None:
        from chimeway.db import create_engine

        engine = create_engine(self.url)
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                with engine.connect() as conn:
                    ids = conn.execute(sa.text("SELECT id FROM chimeway_workers")).scalars().all()
                if any(f":{proc.pid}:" in worker_id for worker_id in ids):
                    return
                time.sleep(0.05)
        finally:
            engine.dispose()

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)


def scalar(engine: sa.Engine, query: str, **params: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(query), params).scalar_one())


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             procs: list[subprocess.Popen[str]] | None = None) -> None:
    """Poll until ``predicate()``; fail with the workers' stderr when it never holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for proc in procs or []:
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"worker exited early ({proc.returncode}) waiting for {what}: {err}")
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def listening(engine: sa.Engine, n: int = 1) -> Callable[[], bool]:
    query = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
             "AND application_name = 'chimeway-listener' AND query LIKE 'LISTEN%'")
    return lambda: scalar(engine, query) >= n
