"""Fixtures for the queue's integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from queue_pg_helpers import Workers
from queue_worker_proc import SIDE_EFFECTS_DDL

from chimeway.db import create_engine


@pytest.fixture
def workers(pg_url: str) -> Iterator[Workers]:
    w = Workers(pg_url)
    yield w
    w.cleanup()


@pytest.fixture
def sqlite_workers(sqlite_url: str) -> Iterator[Workers]:
    w = Workers(sqlite_url)
    yield w
    w.cleanup()


@pytest.fixture
def side_engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(pg_url, pool_size=15, max_overflow=5)
    with engine.begin() as conn:
        conn.execute(sa.text(SIDE_EFFECTS_DDL))
    yield engine
    engine.dispose()
