"""Fixtures for the scheduling proofs: helper processes that never outlive a test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sched_helpers import Procs


@pytest.fixture
def procs(pg_url: str) -> Iterator[Procs]:
    p = Procs(pg_url)
    yield p
    p.cleanup()
