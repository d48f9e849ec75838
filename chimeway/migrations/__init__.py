"""Chimeway's schema, managed by Alembic inside the package.

Chimeway keeps its own version table (``chimeway_alembic_version``) so it
never collides with the application's Alembic history. Run it with
``app.migrate()`` / ``chimeway migrate``, or include it in your own Alembic
environment (see guides/integrations.md).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import alembic.context
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from chimeway.db import schema_change, schema_of
from chimeway.errors import DatabaseError

__all__ = ["VERSION_TABLE", "alembic_config", "current_revision", "head_revision", "upgrade"]

VERSION_TABLE = "chimeway_alembic_version"
HERE = Path(__file__).parent
# Alembic keeps its current environment in module globals (alembic.context,
# alembic.op): two upgrades in one process must never overlap.
_ALEMBIC = threading.Lock()


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` pointing at Chimeway's migration scripts."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(bind: Engine | Connection, revision: str = "head") -> None:
    """Create or upgrade Chimeway's tables to ``revision``.

    Safe to call from many threads and processes at once: threads take turns
    (Alembic's state is global), processes are ordered by a database lock
    (see :func:`chimeway.db.schema_change`), and whoever comes second finds
    the schema at ``revision`` and does nothing.

    Args:
        bind: an engine (a transaction is opened) or a connection (used as is).
        revision: target revision, ``head`` by default.
    """
    # Called from an application's own Alembic env.py, our environment would
    # replace (and then clear) the caller's ``alembic.context``; put it back.
    outer = getattr(alembic.context, "_proxy", None)
    try:
        with _ALEMBIC, schema_change(bind) as conn, _in_own_schema(conn):
            command.upgrade(alembic_config(conn), revision)
    except Exception as exc:
        raise DatabaseError(f"migrating Chimeway's tables failed: {exc}") from exc
    finally:
        if outer is not None:
            outer._install_proxy()


@contextmanager
def _in_own_schema(conn: Connection) -> Iterator[None]:
    # Chimeway's schema (Chimeway(schema=...)): create it, and let the
    # migrations' hand-written SQL find and create its objects there for this
    # transaction only (their tables are placed by the connection's
    # schema_translate_map, the version table by version_table_schema).
    schema = schema_of(conn)
    if schema is None:
        yield
        return
    quoted = conn.dialect.identifier_preparer.quote_schema(schema)
    conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
    previous = conn.exec_driver_sql("SELECT current_setting('search_path')").scalar()
    conn.execute(sa.text("SELECT set_config('search_path', :path, true)"), {"path": quoted})
    yield
    conn.execute(sa.text("SELECT set_config('search_path', :path, true)"), {"path": previous})


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at, or ``None`` if never migrated."""
    context = MigrationContext.configure(
        conn, opts={"version_table": VERSION_TABLE, "version_table_schema": schema_of(conn)})
    return context.get_current_revision()


def head_revision() -> str:
    """The newest revision shipped with this version of Chimeway."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head
