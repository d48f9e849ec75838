"""Throwaway databases for benchmark scripts."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

SERVER = os.environ.get("CHIMEWAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


@contextmanager
def fresh_postgres(prefix: str = "chimeway_bench", server: str | None = None) -> Iterator[str]:
    """Create a database, yield its URL (``postgresql://...``), drop it afterwards.

    Args:
        prefix: the database name's prefix.
        server: the server URL without a database (default: ``CHIMEWAY_TEST_PG`` or local).
    """
    server = server or SERVER
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server + "/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(server + "/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
