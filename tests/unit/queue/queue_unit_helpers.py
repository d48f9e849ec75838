"""Helpers shared by the queue's unit tests."""

from __future__ import annotations

import sqlalchemy as sa


def job_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM chimeway_jobs")).scalar_one())
