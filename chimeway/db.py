"""Engines and connections: the one place that knows backend differences."""

from __future__ import annotations

import json
import os
import re
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from chimeway.errors import ConfigurationError, DatabaseError, InvalidInputError
from chimeway.types import stored_values
from chimeway.validation import check_text

try:
    import fcntl
except ImportError:  # Windows: BEGIN IMMEDIATE alone orders SQLite writers there
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_DATABASE_URL",
    "INBOX_CHANNEL",
    "INBOX_COUNT_BACKFILL",
    "INBOX_COUNT_DDL",
    "INBOX_COUNT_DDL_SQLITE",
    "INBOX_NOTIFY_DDL",
    "JsonText",
    "TextBefore",
    "check_schema",
    "connection_of",
    "create_engine",
    "inbox_count_ddl",
    "insert",
    "insert_ignoring_conflict",
    "insert_new_rows",
    "insert_rows",
    "is_postgres",
    "locked",
    "mask_url",
    "own_tables",
    "plain",
    "present",
    "qualified",
    "rows_json",
    "schema_change",
    "schema_of",
    "sql_in",
    "tenant_key",
    "translated",
    "update_returning",
    "update_rows",
    "with_schema",
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


# --- the schema Chimeway's tables live in --------------------------------------------------------
#
# ``Chimeway(schema="notify")`` puts every table of Chimeway's in that
# PostgreSQL schema. Its engine carries a ``schema_translate_map`` that
# qualifies Chimeway's (schema-less) tables, so every Core statement run on
# it finds them there. Two kinds of connection do not carry it, and must not
# for long: the caller's own (their tables are schema-less too, and would be
# looked for in Chimeway's schema) and those reading an application's tables
# for record triggers. Chimeway sets the map on such a connection only while
# it runs its own statements there (:func:`own_tables`), and hand-written
# SQL names its tables through :func:`qualified` / :func:`sql_in`.

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


def check_schema(schema: str | None) -> str | None:
    """``schema`` if it is ``None`` or a plain PostgreSQL identifier; else a ``ConfigurationError``."""
    if schema is None:
        return None
    if not isinstance(schema, str) or not _IDENTIFIER.fullmatch(schema) or schema.lower().startswith("pg_"):
        raise ConfigurationError(
            f"schema must be a plain identifier of at most 63 letters, digits and underscores, not starting "
            f"with a digit or pg_, got {schema!r}"
        )
    return schema


def with_schema(engine: Engine, schema: str | None) -> Engine:
    """``engine`` finding Chimeway's tables in ``schema`` (the same pool; ``None``: unchanged)."""
    if schema is None:
        return engine
    return engine.execution_options(schema_translate_map={None: schema})


def plain(engine: Engine) -> Engine:
    """``engine`` without a schema for schema-less tables: for reading an application's own tables."""
    if schema_of(engine) is None:
        return engine
    return engine.execution_options(schema_translate_map=None)


def schema_of(bind: Engine | Connection) -> str | None:
    """The schema ``bind`` finds Chimeway's tables in (``None``: wherever the search path does)."""
    mapping = bind.get_execution_options().get("schema_translate_map")
    return mapping.get(None) if mapping else None


@contextmanager
def own_tables(target: Session | Connection, like: Engine | Connection) -> Iterator[Connection]:
    """The caller's connection, finding Chimeway's tables where ``like`` does while inside the block.

    Nothing changes when Chimeway uses no schema of its own. Otherwise the
    connection's ``schema_translate_map`` is set for the block and put back
    after it, so the caller's own statements, before and after, are theirs
    as written.

    Args:
        target: the caller's session or connection, in its transaction.
        like: Chimeway's engine.
    """
    conn = connection_of(target)
    # Without a schema of Chimeway's, the caller's connection is used exactly
    # as it is (a translate map of the caller's own included).
    if schema_of(like) is None:
        yield conn
        return
    wanted = like.get_execution_options().get("schema_translate_map")
    current = conn.get_execution_options().get("schema_translate_map")
    if wanted == current:
        yield conn
        return
    conn.execution_options(schema_translate_map=wanted)
    try:
        yield conn
    finally:
        conn.execution_options(schema_translate_map=current)


def qualified(bind: Engine | Connection, name: str) -> str:
    """A table name of Chimeway's, schema-qualified and quoted as ``bind``'s schema needs, for hand-written SQL."""
    schema = schema_of(bind)
    if schema is None:
        return name
    return f"{bind.dialect.identifier_preparer.quote_schema(schema)}.{name}"


_TEXTS: dict[tuple[str, str | None], sa.TextClause] = {}
_TABLE_TOKEN = re.compile(r"\{(chimeway_\w+)\}")


def sql_in(bind: Engine | Connection, template: str) -> sa.TextClause:
    """Hand-written SQL naming Chimeway's tables as ``{chimeway_jobs}``, for ``bind``'s schema.

    Each (template, schema) is built once; the result is an ordinary
    ``text()`` construct, so SQLAlchemy's compiled cache applies.
    """
    schema = schema_of(bind)
    key = (template, schema)
    found = _TEXTS.get(key)
    if found is None:
        found = sa.text(_TABLE_TOKEN.sub(lambda m: qualified(bind, m.group(1)), template))
        _TEXTS[key] = found
    return found


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
class TextBefore(sa.sql.expression.ColumnElement[str]):
    """The text of a column up to its first ``separator`` (all of it when there is none).

    Compiles to ``split_part`` on PostgreSQL and to ``substr``/``instr`` on
    SQLite. A delivery's ``reason`` is ``code`` or ``code: detail``; this
    gives the code, so counts can group by it in the database.

    Args:
        column: a text column.
        separator: one character.
    """

    inherit_cache = True
    type = sa.String()
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement),
                           ("separator", InternalTraversal.dp_string)]

    def __init__(self, column: sa.ColumnElement[Any], separator: str) -> None:
        if len(separator) != 1 or separator in "'\\%_":
            raise ValueError(f"separator must be one plain character, got {separator!r}")
        self.column = column
        self.separator = separator


@compiles(TextBefore, "postgresql")
def _text_before_pg(element: TextBefore, compiler: SQLCompiler, **kw: Any) -> str:
    return f"split_part({compiler.process(element.column, **kw)}, '{element.separator}', 1)"


@compiles(TextBefore, "sqlite")
def _text_before_sqlite(element: TextBefore, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    at = f"instr({column}, '{element.separator}')"
    return f"(CASE WHEN {at} > 0 THEN substr({column}, 1, {at} - 1) ELSE {column} END)"


# --- inbox changes announced by PostgreSQL ------------------------------------------------------

INBOX_CHANNEL = "chimeway_inbox"
"""The ``NOTIFY`` channel on which PostgreSQL announces inbox changes."""

# A trigger, so that every writer of an inbox row (the executor marking a
# delivery, the inbox's transitions, a caller's own session) announces the
# change in its own transaction: PostgreSQL delivers the NOTIFY at commit,
# and never for a rollback. The payload names the row and the change only.
INBOX_NOTIFY_DDL = (
    """CREATE OR REPLACE FUNCTION chimeway_inbox_notify() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE
  kinds text[] := ARRAY[]::text[];
  kind text;
BEGIN
  IF NEW.inbox_at IS NULL THEN
    RETURN NULL;
  END IF;
  IF OLD.inbox_at IS NULL THEN
    kinds := kinds || 'new'::text;
  END IF;
  IF NEW.read_at IS NOT NULL AND OLD.read_at IS NULL THEN
    kinds := kinds || 'read'::text;
  ELSIF NEW.seen_at IS NOT NULL AND OLD.seen_at IS NULL THEN
    kinds := kinds || 'seen'::text;
  END IF;
  IF NEW.archived_at IS NOT NULL AND OLD.archived_at IS NULL THEN
    kinds := kinds || 'archived'::text;
  END IF;
  FOREACH kind IN ARRAY kinds LOOP
    PERFORM pg_notify('chimeway_inbox', json_build_object(
      't', NEW.tenant, 'r', NEW.recipient_id, 'id', NEW.id, 'k', kind)::text);
  END LOOP;
  RETURN NULL;
END
$body$""",
    "DROP TRIGGER IF EXISTS chimeway_inbox_notify ON chimeway_notifications",
    """CREATE TRIGGER chimeway_inbox_notify
  AFTER UPDATE OF inbox_at, seen_at, read_at, archived_at ON chimeway_notifications
  FOR EACH ROW EXECUTE FUNCTION chimeway_inbox_notify()""",
)
"""The PostgreSQL function and trigger behind :data:`INBOX_CHANNEL` (migration 0009 creates the same)."""


# --- unread counts kept by the database ---------------------------------------------------------

# Triggers, so that every writer of chimeway_notifications (planning, the
# executor stamping inbox_at, the inbox's transitions, the pruner, a caller's
# own SQL) keeps chimeway_inbox_counts exact in its own transaction, without
# code in any of them. A row counts while inbox_at is set and read_at and
# archived_at are not. Templates name Chimeway's objects as
# ``{chimeway_...}``: :func:`inbox_count_ddl` qualifies them for a schema of
# Chimeway's, which a function's body must name itself (it runs with the
# writer's search_path, not the one it was created with).
#
# PostgreSQL: one statement-level trigger per kind of statement aggregates
# its transition tables per recipient, so a statement makes one change per
# recipient whatever its number of rows. A recipient's count may be spread
# over a few rows (``slot``s); its unread count is their sum. A change locks
# the recipient's rows that no other transaction holds (``SKIP LOCKED``),
# keeps the first with the new total and deletes the others; when another
# transaction holds them all it adds a row of its own (slot = its
# transaction id). So a writer never waits for a count row: writers of one
# recipient do not queue behind each other's commits, and no order of
# statements in two transactions (a caller's own updates, one row at a time)
# can deadlock on counts. A recipient has more
# than one row only after writers overlapped, until its next change. A
# transaction under REPEATABLE READ or SERIALIZABLE, which could not lock a
# row changed since its snapshot, always writes its own row.
# TRUNCATE has no transition table: it empties the counts.
INBOX_COUNT_DDL = (
    """CREATE OR REPLACE FUNCTION {chimeway_inbox_count}() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE
  tenants text[];
  recipients text[];
  deltas bigint[];
  free bigint[];
  total bigint;
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    DELETE FROM {chimeway_inbox_counts};
    RETURN NULL;
  ELSIF TG_OP = 'INSERT' THEN
    SELECT array_agg(tenant), array_agg(recipient_id), array_agg(delta) INTO tenants, recipients, deltas
    FROM (SELECT tenant, recipient_id, count(*) AS delta FROM new_rows
          WHERE inbox_at IS NOT NULL AND read_at IS NULL AND archived_at IS NULL
          GROUP BY tenant, recipient_id) AS changed;
  ELSIF TG_OP = 'DELETE' THEN
    SELECT array_agg(tenant), array_agg(recipient_id), array_agg(delta) INTO tenants, recipients, deltas
    FROM (SELECT tenant, recipient_id, -count(*) AS delta FROM old_rows
          WHERE inbox_at IS NOT NULL AND read_at IS NULL AND archived_at IS NULL
          GROUP BY tenant, recipient_id) AS changed;
  ELSE
    SELECT array_agg(tenant), array_agg(recipient_id), array_agg(delta) INTO tenants, recipients, deltas
    FROM (SELECT tenant, recipient_id, sum(one) AS delta FROM (
            SELECT tenant, recipient_id, 1 AS one FROM new_rows
            WHERE inbox_at IS NOT NULL AND read_at IS NULL AND archived_at IS NULL
            UNION ALL
            SELECT tenant, recipient_id, -1 FROM old_rows
            WHERE inbox_at IS NOT NULL AND read_at IS NULL AND archived_at IS NULL
          ) AS rows_changed
          GROUP BY tenant, recipient_id HAVING sum(one) <> 0) AS changed;
  END IF;
  IF tenants IS NULL THEN
    RETURN NULL;
  END IF;
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    -- Locking a row changed since this transaction's snapshot would fail it.
    INSERT INTO {chimeway_inbox_counts} AS c (tenant, recipient_id, slot, unread)
    SELECT tenant, recipient_id, txid_current(), delta FROM unnest(tenants, recipients, deltas)
      AS changed (tenant, recipient_id, delta)
    ON CONFLICT (tenant, recipient_id, slot) DO UPDATE SET unread = c.unread + excluded.unread;
    RETURN NULL;
  END IF;
  FOR i IN 1 .. cardinality(tenants) LOOP
    SELECT array_agg(slot ORDER BY slot), sum(unread) INTO free, total FROM (
      SELECT slot, unread FROM {chimeway_inbox_counts}
      WHERE tenant = tenants[i] AND recipient_id = recipients[i]
      FOR UPDATE SKIP LOCKED
    ) AS unheld;
    IF free IS NULL THEN
      INSERT INTO {chimeway_inbox_counts} (tenant, recipient_id, slot, unread)
      VALUES (tenants[i], recipients[i], txid_current(), deltas[i]);
    ELSE
      UPDATE {chimeway_inbox_counts} SET unread = total + deltas[i]
      WHERE tenant = tenants[i] AND recipient_id = recipients[i] AND slot = free[1];
      IF cardinality(free) > 1 THEN
        DELETE FROM {chimeway_inbox_counts}
        WHERE tenant = tenants[i] AND recipient_id = recipients[i] AND slot = ANY (free[2:]);
      END IF;
    END IF;
  END LOOP;
  RETURN NULL;
END
$body$""",
    "DROP TRIGGER IF EXISTS chimeway_inbox_count_insert ON {chimeway_notifications}",
    "DROP TRIGGER IF EXISTS chimeway_inbox_count_update ON {chimeway_notifications}",
    "DROP TRIGGER IF EXISTS chimeway_inbox_count_delete ON {chimeway_notifications}",
    "DROP TRIGGER IF EXISTS chimeway_inbox_count_truncate ON {chimeway_notifications}",
    """CREATE TRIGGER chimeway_inbox_count_insert AFTER INSERT ON {chimeway_notifications}
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION {chimeway_inbox_count}()""",
    """CREATE TRIGGER chimeway_inbox_count_update AFTER UPDATE ON {chimeway_notifications}
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION {chimeway_inbox_count}()""",
    """CREATE TRIGGER chimeway_inbox_count_delete AFTER DELETE ON {chimeway_notifications}
  REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION {chimeway_inbox_count}()""",
    """CREATE TRIGGER chimeway_inbox_count_truncate AFTER TRUNCATE ON {chimeway_notifications}
  FOR EACH STATEMENT EXECUTE FUNCTION {chimeway_inbox_count}()""",
)
"""PostgreSQL's function and triggers keeping ``chimeway_inbox_counts`` (migration 0013 creates the same)."""

# SQLite: row triggers on one row per recipient (slot 0); its writers take
# turns. A later migration that rebuilds chimeway_notifications there (batch
# mode copies the table) drops these triggers and must create them again.
INBOX_COUNT_DDL_SQLITE = (
    "DROP TRIGGER IF EXISTS chimeway_inbox_count_insert",
    "DROP TRIGGER IF EXISTS chimeway_inbox_count_update",
    "DROP TRIGGER IF EXISTS chimeway_inbox_count_delete",
    """CREATE TRIGGER chimeway_inbox_count_insert AFTER INSERT ON chimeway_notifications
  FOR EACH ROW WHEN NEW.inbox_at IS NOT NULL AND NEW.read_at IS NULL AND NEW.archived_at IS NULL
BEGIN
  INSERT INTO chimeway_inbox_counts (tenant, recipient_id, slot, unread)
  VALUES (NEW.tenant, NEW.recipient_id, 0, 1)
  ON CONFLICT (tenant, recipient_id, slot) DO UPDATE SET unread = unread + 1;
END""",
    """CREATE TRIGGER chimeway_inbox_count_update
  AFTER UPDATE OF tenant, recipient_id, inbox_at, read_at, archived_at ON chimeway_notifications
  FOR EACH ROW WHEN
    (OLD.inbox_at IS NOT NULL AND OLD.read_at IS NULL AND OLD.archived_at IS NULL)
    <> (NEW.inbox_at IS NOT NULL AND NEW.read_at IS NULL AND NEW.archived_at IS NULL)
    OR (OLD.inbox_at IS NOT NULL AND OLD.read_at IS NULL AND OLD.archived_at IS NULL
        AND (OLD.tenant <> NEW.tenant OR OLD.recipient_id <> NEW.recipient_id))
BEGIN
  UPDATE chimeway_inbox_counts SET unread = unread - 1
  WHERE tenant = OLD.tenant AND recipient_id = OLD.recipient_id AND slot = 0
    AND OLD.inbox_at IS NOT NULL AND OLD.read_at IS NULL AND OLD.archived_at IS NULL;
  INSERT INTO chimeway_inbox_counts (tenant, recipient_id, slot, unread)
  SELECT NEW.tenant, NEW.recipient_id, 0, 1
  WHERE NEW.inbox_at IS NOT NULL AND NEW.read_at IS NULL AND NEW.archived_at IS NULL
  ON CONFLICT (tenant, recipient_id, slot) DO UPDATE SET unread = unread + 1;
END""",
    """CREATE TRIGGER chimeway_inbox_count_delete AFTER DELETE ON chimeway_notifications
  FOR EACH ROW WHEN OLD.inbox_at IS NOT NULL AND OLD.read_at IS NULL AND OLD.archived_at IS NULL
BEGIN
  UPDATE chimeway_inbox_counts SET unread = unread - 1
  WHERE tenant = OLD.tenant AND recipient_id = OLD.recipient_id AND slot = 0;
END""",
)
"""SQLite's triggers keeping ``chimeway_inbox_counts`` (migration 0013 creates the same)."""

INBOX_COUNT_BACKFILL = """INSERT INTO {chimeway_inbox_counts} (tenant, recipient_id, slot, unread)
SELECT tenant, recipient_id, 0, count(*) FROM {chimeway_notifications}
WHERE inbox_at IS NOT NULL AND read_at IS NULL AND archived_at IS NULL
GROUP BY tenant, recipient_id"""
"""The counts of rows already there, for a counts table created beside existing notifications."""


def inbox_count_ddl(bind: Engine | Connection) -> tuple[str, ...]:
    """The statements creating the unread-count triggers, then counting the rows already there.

    For ``bind``'s backend, naming Chimeway's objects in its schema.

    Args:
        bind: the connection (or engine) whose dialect and schema the
            statements are for.
    """
    templates = INBOX_COUNT_DDL if is_postgres(bind) else INBOX_COUNT_DDL_SQLITE
    return tuple(_TABLE_TOKEN.sub(lambda m: qualified(bind, m.group(1)), t)
                 for t in (*templates, INBOX_COUNT_BACKFILL))


# --- statements that differ between PostgreSQL and SQLite ---------------------------------------


def tenant_key(tenant: str | None) -> str:
    """How a tenant is stored: ``None`` is the empty string (so unique keys treat it as one tenant)."""
    if tenant is None:
        return ""
    if not isinstance(tenant, str):
        raise InvalidInputError(f"tenant must be a string or None, got {type(tenant).__name__}")
    check_text(tenant, field="tenant")
    return tenant


def insert(bind: Connection | str, table: sa.Table) -> Any:
    """``INSERT`` for this backend, with its ``on_conflict_do_nothing``/``on_conflict_do_update``.

    Args:
        bind: the connection the statement will run on, or its dialect's name.
        table: the table.
    """
    name = bind if isinstance(bind, str) else bind.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise InvalidInputError(f"database {name!r} is not supported (use PostgreSQL or SQLite)")


def insert_ignoring_conflict(conn: Connection, table: sa.Table, values: Mapping[str, Any],
                             conflict: Sequence[str]) -> bool:
    """``INSERT ... ON CONFLICT DO NOTHING``; returns whether the row went in.

    ``RETURNING`` tells us, where ``rowcount`` is not reliable on every driver.

    Args:
        conn: inside the caller's transaction.
        table: the table.
        values: the row.
        conflict: the columns of the unique constraint that may conflict.
    """
    pk = next(iter(table.primary_key.columns))
    stmt = insert(conn, table).values(**values).on_conflict_do_nothing(index_elements=list(conflict))
    return conn.execute(stmt.returning(pk)).first() is not None


def locked(query: sa.Select[Any], conn: Connection, *, skip_locked: bool = False, of: Any = None) -> sa.Select[Any]:
    """``query ... FOR UPDATE [SKIP LOCKED]`` on PostgreSQL.

    SQLite has no row locks: Chimeway's write transactions take the database's
    write lock at ``BEGIN IMMEDIATE`` (:func:`writer`), which orders them.

    Args:
        query: the select.
        conn: the connection it will run on.
        skip_locked: pass over rows another transaction holds.
        of: lock only this table's rows (a query with joins).
    """
    if conn.dialect.name == "postgresql":
        return query.with_for_update(skip_locked=skip_locked, of=of)
    return query


def any_of(bind: Engine | Connection, column: sa.ColumnElement[Any], values: Iterable[Any]) -> sa.ColumnElement[bool]:
    """``column IN (values)``, as SQL whose text does not grow with the values.

    On PostgreSQL it is ``column = ANY(:array)``: one parameter however many
    values, so the statement's text is the same every time and the driver
    prepares it once (an ``IN`` list of 50 ids is a new statement for every
    length, parsed and planned afresh). SQLite gets the ``IN`` list.

    Args:
        bind: decides the dialect.
        column: the column to match.
        values: the values it may take.
    """
    if bind.dialect.name == "postgresql":
        return column == sa.any_(sa.bindparam(None, list(values), type_=sa.ARRAY(column.type)))
    return column.in_(list(values))


def present(conn: Connection, column: sa.ColumnElement[Any], values: Sequence[Any],
            *where: sa.ColumnElement[bool]) -> set[Any]:
    """Which of ``values`` a row of ``column``'s table holds in ``column`` (among rows matching ``where``).

    On PostgreSQL each value is one probe of an index that starts with
    ``where``'s columns and ``column``: a plan that does not depend on the
    table's statistics. ``column IN (...)`` (or ``= ANY``) on a table whose
    statistics are stale (a young table, growing fast) is planned, once the
    server prepares the statement (its sixth run), as a walk over every row
    matching ``where`` with the list checked on each: 10,000 events took
    250 ms where 500 probes take 1 ms. SQLite gets the ``IN`` list.

    Args:
        conn: the connection.
        column: the column to look in.
        values: the values to look for.
        where: further conditions on the same table (equalities, for the index).
    """
    if not values:
        return set()
    if conn.dialect.name != "postgresql":
        return set(conn.execute(sa.select(column).where(column.in_(list(values)), *where)).scalars())
    wanted = sa.func.unnest(sa.bindparam(None, list(values), type_=postgresql.ARRAY(column.type))) \
        .table_valued("value").render_derived()
    # A scalar subquery in WHERE stays a per-row subplan: the planner cannot
    # turn it into a join that scans the table.
    probe = sa.select(sa.literal(1)).where(column == wanted.c.value, *where).limit(1).scalar_subquery()
    return set(conn.execute(sa.select(wanted.c.value).where(probe.is_not(None))).scalars())


def rows_among(select: sa.Select[Any], column: sa.ColumnElement[Any], name: str, *,
               postgres: bool) -> sa.Select[Any]:
    """``select``'s rows whose ``column`` is among the list parameter ``name``, by one index probe per value.

    On PostgreSQL ``select`` runs once per value (a ``LATERAL`` subquery
    over ``unnest(:name)`` that the planner may not flatten), so an index
    that starts with ``select``'s equalities and ``column`` answers each,
    whatever the statistics. ``column = ANY(:name)`` on a table whose
    statistics are stale is planned as a walk over the whole table once the
    list is long enough: 4.4 ms against 0.6 ms for 100 recipients among
    20,000, 17 ms against 5 ms for 500 among 200,000, growing with the
    table. The statement's text is fixed, whatever the list's length.
    SQLite gets an expanding ``IN``.

    Args:
        select: what to read, with its other conditions (equalities, for the index).
        column: the column to match.
        name: the parameter that will carry the list of values.
        postgres: build it for PostgreSQL or SQLite.
    """
    if not postgres:
        return select.where(column.in_(sa.bindparam(name, expanding=True)))
    values = sa.func.unnest(sa.bindparam(name, type_=postgresql.ARRAY(column.type))) \
        .table_valued("value").render_derived()
    # OFFSET 0 keeps the subquery a subquery: pulled up into the outer
    # query, it could be answered with a scan of the whole table.
    found = select.where(column == values.c.value).offset(sa.literal_column("0", sa.Integer)).lateral()
    return sa.select(*found.c).select_from(values).join(found, sa.true())


def among(column: sa.ColumnElement[Any], name: str, *, postgres: bool) -> sa.ColumnElement[bool]:
    """``column IN :name`` for a statement built once and run many times (see :func:`any_of`).

    Args:
        column: the column to match.
        name: the parameter that will carry the list of values.
        postgres: build it for PostgreSQL (``= ANY(:name)``) or SQLite (an expanding ``IN``).
    """
    if postgres:
        return column == sa.any_(sa.bindparam(name, type_=sa.ARRAY(column.type)))
    return column.in_(sa.bindparam(name, expanding=True))


def update_returning(conn: Connection, statement: sa.Update, columns: Sequence[Any], *,
                     join: sa.Table, on: sa.ColumnElement[bool],
                     params: Mapping[str, Any] | None = None) -> list[Any]:
    """Run an ``UPDATE`` and return ``columns`` of the changed rows and of a joined table.

    PostgreSQL does it in one round trip (``UPDATE ... FROM ... RETURNING``);
    SQLite's ``RETURNING`` cannot name a joined table, so the changed keys are
    read back with a join.

    Args:
        conn: inside the transaction.
        statement: the update (of one table, by its primary key or any filter).
        columns: what to return, from the updated and the joined table.
        join: the joined table.
        on: the join condition.
        params: values for the statement's bound parameters.
    """
    if conn.dialect.name == "postgresql":
        return list(conn.execute(_returning(statement, on, tuple(columns)), params).all())
    table = statement.table
    assert isinstance(table, sa.Table)
    pk = next(iter(table.primary_key.columns))
    changed = conn.execute(statement.returning(pk), params).scalars().all()
    if not changed:
        return []
    return list(conn.execute(sa.select(*columns).join(join, on).where(pk.in_(changed))).all())


_RETURNINGS: weakref.WeakKeyDictionary[sa.Update, tuple[Any, tuple[Any, ...], sa.Update]] = (
    weakref.WeakKeyDictionary()
)


def _returning(statement: sa.Update, on: sa.ColumnElement[bool], columns: tuple[Any, ...]) -> sa.Update:
    # A statement built once keeps its joined, RETURNING form too (for the
    # same join condition and columns, compared by identity).
    found = _RETURNINGS.get(statement)
    if found is not None and found[0] is on and len(found[1]) == len(columns) \
            and all(a is b for a, b in zip(found[1], columns, strict=True)):
        return found[2]
    built = statement.where(on).returning(*columns)
    _RETURNINGS[statement] = (on, columns, built)
    return built


def insert_rows(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows with one statement of fixed text, whatever their number.

    On PostgreSQL the rows travel as one JSON document expanded by
    ``json_populate_recordset`` (which casts each field to its column's
    type), so neither SQLAlchemy nor the driver builds a statement or a
    parameter list that grows with the batch. SQLite runs in-process, where
    ``executemany`` is already cheap.

    Args:
        conn: the transaction's connection.
        table: the table.
        rows: dicts with the same keys.
    """
    if not rows:
        return
    if conn.dialect.name != "postgresql" or len(rows) == 1:
        conn.execute(sa.insert(table), rows)
        return
    rows = stored_values(conn, table, rows)  # the JSON document bypasses column types
    names = ", ".join(rows[0])
    name = qualified(conn, table.name)
    conn.execute(sa.text(
        f"INSERT INTO {name} ({names}) SELECT {names}"
        f" FROM json_populate_recordset(NULL::{name}, CAST(:rows AS json))"
    ), {"rows": rows_json(rows)})


def insert_new_rows(conn: Connection, table: sa.Table, rows: list[dict[str, Any]], *,
                    unique: Sequence[str]) -> list[Any]:
    """Insert rows, passing over those whose ``unique`` columns a row already holds; returns the new rows' keys.

    ``INSERT ... ON CONFLICT (unique) DO NOTHING RETURNING`` the primary key,
    so the result names exactly the rows that went in. On PostgreSQL the
    rows travel as one JSON document, as with :func:`insert_rows`: a
    statement of fixed text, where a multi-row ``VALUES`` is a new statement
    that SQLAlchemy compiles afresh every time (half the time of planning
    500 triggers at once). SQLite gets the multi-row ``VALUES``.

    Args:
        conn: the transaction's connection.
        table: the table.
        rows: dicts with the same keys.
        unique: the columns of the unique constraint that may conflict.
    """
    if not rows:
        return []
    pk = next(iter(table.primary_key.columns))
    if conn.dialect.name != "postgresql":
        stmt = insert(conn, table).values(rows).on_conflict_do_nothing(index_elements=list(unique))
        return list(conn.execute(stmt.returning(pk)).scalars())
    rows = stored_values(conn, table, rows)  # the JSON document bypasses column types
    names = ", ".join(rows[0])
    name = qualified(conn, table.name)
    return list(conn.execute(sa.text(
        f"INSERT INTO {name} ({names}) SELECT {names}"
        f" FROM json_populate_recordset(NULL::{name}, CAST(:rows AS json))"
        f" ON CONFLICT ({', '.join(unique)}) DO NOTHING RETURNING {pk.name}"
    ).columns(pk), {"rows": rows_json(rows)}).scalars())


def update_rows(conn: Connection, table: sa.Table, rows: list[dict[str, Any]], *, key: str = "id") -> None:
    """Update many rows by ``key``, each with its own values, in one statement.

    PostgreSQL: one ``UPDATE ... FROM json_populate_recordset(...)``; SQLite:
    ``executemany``.

    Args:
        conn: the transaction's connection.
        table: the table.
        rows: dicts with the same keys, ``key`` among them.
        key: the column that finds each row.
    """
    if not rows:
        return
    names = [name for name in rows[0] if name != key]
    if conn.dialect.name != "postgresql":
        conn.execute(
            sa.update(table).where(table.c[key] == sa.bindparam(f"b_{key}"))
            .values({name: sa.bindparam(f"b_{name}") for name in names}),
            [{f"b_{k}": v for k, v in row.items()} for row in rows],
        )
        return
    rows = stored_values(conn, table, rows)  # the JSON document bypasses column types
    name = qualified(conn, table.name)
    conn.execute(sa.text(
        f"UPDATE {name} SET " + ", ".join(f"{n} = v.{n}" for n in names)
        + f" FROM json_populate_recordset(NULL::{name}, CAST(:rows AS json)) AS v"
        + f" WHERE {name}.{key} = v.{key}"
    ), {"rows": rows_json(rows)})


def rows_json(rows: list[dict[str, Any]]) -> str:
    """Rows as a JSON array for ``json_populate_recordset`` (ids and times as text).

    Args:
        rows: dicts of column values.
    """
    return json.dumps(rows, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


# --- database errors at the public API ---------------------------------------------------------

_MISSING_TABLE = re.compile(r"(?:no such table|relation \"?[\w.]*\"? does not exist|UndefinedTable)", re.I)


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn a database error raised inside into a :class:`DatabaseError` (the driver's error chained).

    A missing table says to run ``chimeway migrate``. Bad input never gets
    here: entry points check it before writing (:mod:`chimeway.validation`).

    Args:
        what: what was being done, for the message (``trigger``, ``inbox.list``).
    """
    try:
        yield
    except sa.exc.DBAPIError as exc:
        raise database_error(exc, what) from exc


def database_error(exc: sa.exc.DBAPIError, what: str) -> DatabaseError:
    """The :class:`DatabaseError` for a driver error, saying what to do when it can."""
    original = exc.orig if exc.orig is not None else exc
    first_line = (str(original).strip().splitlines() or [""])[0]
    if _MISSING_TABLE.search(first_line) or type(original).__name__ == "UndefinedTable":
        return DatabaseError(
            f"{what}: Chimeway's tables are missing from this database ({first_line}); run "
            "`chimeway migrate --database-url URL` or app.migrate() first"
        )
    return DatabaseError(f"{what} failed in the database: {type(original).__name__}: {mask_url(first_line)}")
