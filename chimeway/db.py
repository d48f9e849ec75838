"""Engines and connections: the one place that knows backend differences."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from chimeway.errors import ConfigurationError

try:
    import fcntl
except ImportError:  # Windows: BEGIN IMMEDIATE alone orders SQLite writers there
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_DATABASE_URL",
    "JsonText",
    "connection_of",
    "create_engine",
    "is_postgres",
    "mask_url",
    "schema_change",
    "writer",
]

DEFAULT_DATABASE_URL = "sqlite:///chimeway.db"

# scheme://user:password@ -- the password runs to the last "@" of the word.
_PASSWORD_IN_URL = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*):[^\s'\"]*@")


def mask_url(url: str | sa.URL) -> str:
    """``url`` (or any text holding URLs) with every password replaced by ``***``.

    Args:
        url: a URL, or a message that may contain URLs.
    """
    if isinstance(url, sa.URL):
        return url.render_as_string(hide_password=True)
    return _PASSWORD_IN_URL.sub(r"\1:***@", url)


def create_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine with the settings Chimeway needs on each backend.

    SQLite gets WAL journaling, a busy timeout (several processes share one
    file) and foreign keys; ``postgresql://`` URLs use psycopg 3.

    Args:
        url: a SQLAlchemy database URL.
        **kwargs: passed to :func:`sqlalchemy.create_engine`.
    """
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    try:
        engine = sa.create_engine(url, **kwargs)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ConfigurationError(f"database_url {mask_url(url)!r} cannot be used: {mask_url(str(exc))}") from exc
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin, so
        # BEGIN IMMEDIATE can take the write lock up front.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("chimeway_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def writer(engine: Engine) -> Engine:
    """An engine whose transactions take SQLite's write lock at BEGIN.

    A deferred SQLite transaction that reads and then writes can fail at once
    with "database is locked" when another process writes in between; taking
    the lock up front makes it wait (busy_timeout) instead. On PostgreSQL this
    is the same engine.
    """
    if engine.dialect.name != "sqlite":
        return engine
    return engine.execution_options(chimeway_write=True)


def is_postgres(bind: Engine | Connection) -> bool:
    return bind.dialect.name == "postgresql"


def connection_of(target: Session | Connection) -> Connection:
    """The caller's connection, inside the caller's transaction."""
    if isinstance(target, Session):
        return target.connection()
    if isinstance(target, Connection):
        return target
    raise ConfigurationError(
        f"session must be a sqlalchemy Session or Connection, got {type(target).__name__}"
    )


# Any constant will do; it only has to be the same in every process.
_SCHEMA_LOCK_KEY = 0x43484D5753434821  # "CHMWSCH!"


@contextmanager
def schema_change(bind: Engine | Connection) -> Iterator[Connection]:
    """A transaction in which only one process at a time changes Chimeway's schema.

    PostgreSQL: a transaction-scoped advisory lock, released at commit or
    rollback. SQLite: an exclusive ``flock`` on a ``<database>.migrate-lock``
    file beside the database (waits as long as it takes, unlike the busy
    timeout), and ``BEGIN IMMEDIATE`` on Chimeway's engines. The caller's
    process must serialise its own threads; this only orders processes.

    Args:
        bind: an engine (a transaction is opened and committed) or a connection
            (used in its current transaction).
    """
    with _sqlite_file_lock(bind):
        if isinstance(bind, Engine):
            with writer(bind).begin() as conn:
                _advisory_lock(conn)
                yield conn
        else:
            _advisory_lock(bind)
            yield bind


def _advisory_lock(conn: Connection) -> None:
    if is_postgres(conn):
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})


@contextmanager
def _sqlite_file_lock(bind: Engine | Connection) -> Iterator[None]:
    path = _sqlite_file(bind)
    if path is None or fcntl is None:
        yield
        return
    try:
        handle = open(path + ".migrate-lock", "a")  # noqa: SIM115 - held across the yield
    except OSError:
        # A read-only directory: BEGIN IMMEDIATE still orders the writers.
        yield
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # closing releases the lock


def _sqlite_file(bind: Engine | Connection) -> str | None:
    if bind.dialect.name != "sqlite":
        return None
    url = bind.engine.url
    database = url.database or ""
    if not database or database == ":memory:" or url.query.get("mode") == "memory":
        return None
    if database.startswith("file:"):
        database = database[len("file:"):].partition("?")[0]
    return os.path.abspath(database)


class JsonText(sa.sql.expression.ColumnElement[str]):
    """The text of one top-level key of a JSON column, as an index can hold it.

    Compiles to ``(column ->> 'key')`` on PostgreSQL and
    ``json_extract(column, '$.key')`` on SQLite, with the key written into the
    SQL: an expression index is used only by a query that spells the
    expression exactly the same way, never through a bound parameter.

    Args:
        column: a JSON column.
        key: a plain identifier.
    """

    inherit_cache = True
    type = sa.String()
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement),
                           ("key", InternalTraversal.dp_string)]

    def __init__(self, column: sa.ColumnElement[Any], key: str) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"JSON key must be an identifier, got {key!r}")
        self.column = column
        self.key = key


@compiles(JsonText, "postgresql")
def _json_text_pg(element: JsonText, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({compiler.process(element.column, **kw)} ->> '{element.key}')"


@compiles(JsonText, "sqlite")
def _json_text_sqlite(element: JsonText, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json_extract({compiler.process(element.column, **kw)}, '$.{element.key}')"
