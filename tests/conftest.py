"""Shared fixtures: fresh SQLite files and fresh PostgreSQL databases per test."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))

import pg

from chimeway.models import metadata

TEMPLATE = f"chimeway_tpl_{os.getpid()}"


def _admin(server: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(server + "/postgres", autocommit=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL server URL; skips (or fails under CHIMEWAY_REQUIRE_POSTGRES=1)."""
    server = pg.server_url()
    if server is None:
        message = (
            "no PostgreSQL answered on 127.0.0.1:5432 (or CHIMEWAY_TEST_PG) and none could be "
            "started from the installed binaries"
        )
        if pg.required():
            pytest.fail(message + "; CHIMEWAY_REQUIRE_POSTGRES=1 makes this a failure")
        pytest.skip(message + "; PostgreSQL tests skipped")
    with _admin(server) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
        admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
    engine = sa.create_engine(f"postgresql+psycopg://{server[len('postgresql://'):]}/{TEMPLATE}")
    metadata.create_all(engine)
    engine.dispose()
    yield server
    with _admin(server) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')


def _fresh_database(server: str, *, with_schema: bool = True) -> Iterator[str]:
    name = f"chimeway_t_{uuid.uuid4().hex[:12]}"
    with _admin(server) as admin:
        template = f' TEMPLATE "{TEMPLATE}" STRATEGY FILE_COPY' if with_schema else ""
        admin.execute(f'CREATE DATABASE "{name}"{template}')
    try:
        yield f"postgresql+psycopg://{server[len('postgresql://'):]}/{name}"
    finally:
        with _admin(server) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """URL of a fresh PostgreSQL database with Chimeway's tables, dropped afterwards."""
    yield from _fresh_database(pg_server)


@pytest.fixture
def pg_empty_url(pg_server: str) -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database (no tables), dropped afterwards."""
    yield from _fresh_database(pg_server, with_schema=False)


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_url, pool_size=20, max_overflow=20)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a fresh SQLite file with Chimeway's tables."""
    url = f"sqlite:///{tmp_path / 'chimeway.db'}"
    from chimeway.db import create_engine

    engine = create_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    return url


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[sa.Engine]:
    from chimeway.db import create_engine

    engine = create_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def any_url(request: pytest.FixtureRequest) -> str:
    """A fresh database on each backend in turn (behaviour that is the same on both)."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def any_engine(any_url: str) -> Iterator[sa.Engine]:
    from chimeway.db import create_engine

    engine = create_engine(any_url)
    yield engine
    engine.dispose()
