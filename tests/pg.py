"""Finding (or starting) a PostgreSQL server for the integration tests.

Order: ``CHIMEWAY_TEST_PG`` (a server URL without database), then
127.0.0.1:5432 as user ``postgres``, then a throwaway cluster started from the
installed PostgreSQL binaries. With ``CHIMEWAY_REQUIRE_POSTGRES=1`` a missing
server fails the run instead of skipping.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time

import psycopg

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"


def _answers(server: str) -> bool:
    try:
        with psycopg.connect(server + "/postgres", connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_throwaway() -> str | None:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    pg_ctl = bins[-1] if bins else shutil.which("pg_ctl")
    if not pg_ctl:
        return None
    bindir = os.path.dirname(pg_ctl)
    datadir = tempfile.mkdtemp(prefix="chimeway-pg-")
    port = _free_port()
    env = dict(os.environ)
    run_as: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses to run as root; use the postgres system user when present.
        if shutil.which("runuser") and _user_exists("postgres"):
            shutil.chown(datadir, "postgres")
            run_as = ["runuser", "-u", "postgres", "--"]
        else:
            return None
    try:
        subprocess.run(
            [*run_as, os.path.join(bindir, "initdb"), "-D", datadir, "-U", "postgres",
             "--auth=trust", "-E", "UTF8"],
            check=True, capture_output=True, env=env,
        )
        subprocess.run(
            [*run_as, pg_ctl, "-D", datadir, "-o",
             f"-p {port} -c listen_addresses=127.0.0.1 -k {datadir} -c fsync=off",
             "-w", "start", "-l", os.path.join(datadir, "log")],
            check=True, capture_output=True, env=env,
        )
    except (subprocess.CalledProcessError, OSError):
        return None

    def stop() -> None:
        subprocess.run([*run_as, pg_ctl, "-D", datadir, "-m", "immediate", "stop"],
                       capture_output=True, check=False)
        shutil.rmtree(datadir, ignore_errors=True)

    atexit.register(stop)
    server = f"postgresql://postgres@127.0.0.1:{port}"
    for _ in range(50):
        if _answers(server):
            return server
        time.sleep(0.1)
    return None


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


_server: str | bool | None = False


def server_url() -> str | None:
    """Return a reachable server URL (no database part), or ``None``."""
    global _server
    if _server is False:
        candidate = os.environ.get("CHIMEWAY_TEST_PG", DEFAULT_SERVER)
        _server = candidate if _answers(candidate) else _start_throwaway()
    return _server if isinstance(_server, str) else None


def required() -> bool:
    return os.environ.get("CHIMEWAY_REQUIRE_POSTGRES") == "1"
