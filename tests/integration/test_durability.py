"""Committed deliveries survive every crash: SIGKILL, a database restart, a slow shutdown.

Real worker processes send real webhooks to a receiver on 127.0.0.1; the
fault is injected a third of the way in. Every delivery must end
``succeeded`` and the receiver must have seen every delivery id at least
once. Duplicates (the same ``webhook-id`` twice: a send whose holder died
before recording it) are allowed and printed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faults import Cluster, run

from chimeway.db import create_engine
from chimeway.models import metadata

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("fault", ["sigkill", "sigterm_slow"])
def test_no_delivery_is_lost_when_a_worker_dies_mid_send(pg_empty_url: str, fault: str) -> None:
    report = run(fault, pg_empty_url, deliveries=1000)
    print(report.line())
    assert report.statuses == {"succeeded": 1000}
    assert report.lost == 0
    assert report.in_flight_at_fault > 0, "the fault hit no send in flight: the proof proves nothing"


def test_no_delivery_is_lost_when_the_database_restarts(pg_server: str) -> None:
    try:
        cluster = Cluster()
    except Exception as exc:  # no binaries, or no user to run them as
        pytest.skip(f"cannot start a PostgreSQL cluster of our own to restart: {exc}")
    try:
        report = run("db_restart", cluster.url, deliveries=1000, cluster=cluster)
    finally:
        cluster.stop()
    print(report.line())
    assert report.statuses == {"succeeded": 1000}
    assert report.lost == 0


def test_no_delivery_is_lost_when_one_of_two_sqlite_workers_is_killed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'faults.db'}"
    engine = create_engine(url)
    metadata.create_all(engine)
    engine.dispose()
    report = run("sigkill", url, deliveries=1000, workers=2, concurrency=10, delay=0.2)
    print(report.line())
    assert report.statuses == {"succeeded": 1000}
    assert report.lost == 0
    assert report.in_flight_at_fault > 0, "the fault hit no send in flight: the proof proves nothing"
