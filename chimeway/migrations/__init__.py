"""Chimeway's schema, managed by Alembic inside the package.

Chimeway keeps its own version table (``chimeway_alembic_version``) so it
never collides with the application's Alembic history. Run it with
``app.migrate()`` / ``chimeway migrate``, or include it in your own Alembic
environment (see guides/integrations.md).
"""

from __future__ import annotations

from pathlib import Path

import alembic.context
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from chimeway.errors import DatabaseError

__all__ = ["VERSION_TABLE", "alembic_config", "current_revision", "head_revision", "upgrade"]

VERSION_TABLE = "chimeway_alembic_version"
HERE = Path(__file__).parent


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` pointing at Chimeway's migration scripts."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(bind: Engine | Connection, revision: str = "head") -> None:
    """Create or upgrade Chimeway's tables to ``revision``.

    Args:
        bind: an engine (a transaction is opened) or a connection (used as is).
        revision: target revision, ``head`` by default.
    """
    # Called from an application's own Alembic env.py, our environment would
    # replace (and then clear) the caller's ``alembic.context``; put it back.
    outer = getattr(alembic.context, "_proxy", None)
    try:
        if isinstance(bind, Engine):
            with bind.begin() as conn:
                command.upgrade(alembic_config(conn), revision)
        else:
            command.upgrade(alembic_config(bind), revision)
    except Exception as exc:
        raise DatabaseError(f"migrating Chimeway's tables failed: {exc}") from exc
    finally:
        if outer is not None:
            outer._install_proxy()


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at, or ``None`` if never migrated."""
    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def head_revision() -> str:
    """The newest revision shipped with this version of Chimeway."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head
