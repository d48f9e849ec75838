"""Chimeway's Alembic migrations build exactly the schema its models declare."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from chimeway import Chimeway
from chimeway.db import create_engine
from chimeway.migrations import VERSION_TABLE, current_revision, head_revision
from chimeway.models import metadata


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'migrated.db'}"
    return str(request.getfixturevalue("pg_empty_url"))


def test_migrations_match_models(empty_url: str) -> None:
    engine = create_engine(empty_url)
    app = Chimeway(engine=engine)
    app.migrate()
    app.migrate()  # idempotent
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "compare_type": True,
            "include_name": lambda name, type_, parent: not (type_ == "table" and name == VERSION_TABLE),
        })
        diff = compare_metadata(context, metadata)
        assert current_revision(conn) == head_revision()
        tables = set(sa.inspect(conn).get_table_names())
    assert diff == []
    assert {t for t in tables if t.startswith("chimeway_")} == set(metadata.tables) | {VERSION_TABLE}
    engine.dispose()


def test_migrate_leaves_the_applications_tables_alone(empty_url: str) -> None:
    engine = create_engine(empty_url)
    user = sa.Table("users", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    user.create(engine)
    with engine.begin() as conn:
        conn.execute(user.insert().values(id=7))
    Chimeway(engine=engine).migrate()
    with engine.connect() as conn:
        assert conn.execute(sa.select(user.c.id)).scalars().all() == [7]
        assert "alembic_version" not in sa.inspect(conn).get_table_names()
    engine.dispose()
