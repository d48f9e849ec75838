"""``app.migrate()`` from many threads and processes at once, on a fresh database."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from chimeway import Chimeway
from chimeway.db import create_engine
from chimeway.migrations import VERSION_TABLE, current_revision, head_revision
from chimeway.models import metadata

THREADS = 8
PROCESSES = 3


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return str(request.getfixturevalue("pg_empty_url"))


def _assert_migrated_once(url: str) -> None:
    engine = create_engine(url)
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        assert conn.execute(sa.text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar_one() == 1
        tables = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert set(metadata.tables) <= tables


def test_many_threads_migrate_one_fresh_database(empty_url: str) -> None:
    apps = [Chimeway(database_url=empty_url) for _ in range(THREADS)]
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def run(app: Chimeway) -> None:
        start.wait()
        try:
            app.migrate()
        except BaseException as exc:  # collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(app,)) for app in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for app in apps:
        app.close()
    assert errors == []
    _assert_migrated_once(empty_url)


# Each process waits for the go file, then migrates from two threads of its own.
_CHILD = """
import os, sys, threading, time
from chimeway import Chimeway
url, ready, go = sys.argv[1:4]
apps = [Chimeway(database_url=url) for _ in range(2)]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
failed = []
def run(app):
    try:
        app.migrate()
    except BaseException as exc:
        failed.append(repr(exc))
threads = [threading.Thread(target=run, args=(app,)) for app in apps]
[t.start() for t in threads]
[t.join() for t in threads]
print("FAILED", failed) if failed else print("OK")
sys.exit(1 if failed else 0)
"""


def test_several_processes_migrate_one_fresh_database(empty_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    readies = [tmp_path / f"ready{i}" for i in range(PROCESSES)]
    children = [
        subprocess.Popen([sys.executable, "-c", _CHILD, empty_url, str(ready), str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for ready in readies
    ]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in readies) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    outputs = [child.communicate(timeout=180)[0] for child in children]
    assert [child.returncode for child in children] == [0] * PROCESSES, outputs
    _assert_migrated_once(empty_url)
