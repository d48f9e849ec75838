"""Alembic environment for Chimeway's own tables."""

from __future__ import annotations

from alembic import context

from chimeway.db import schema_of
from chimeway.migrations import VERSION_TABLE
from chimeway.models import metadata


def include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    # Only Chimeway's tables: the application's own tables are not ours to touch.
    if type_ == "table":
        return bool(name and name.startswith("chimeway_"))
    return True


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("Chimeway migrations run with a connection: use app.migrate() or `chimeway migrate`")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # Chimeway(schema=...): the version table beside Chimeway's tables.
        version_table_schema=schema_of(connection),
        include_object=include_object,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
