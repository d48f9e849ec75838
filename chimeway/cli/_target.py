"""Which app and database a command works on, and one-line answers for every database mistake.

A command that only reads never creates a database: a SQLite file that is
not there is an error that says how to fix it, not an empty file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from chimeway.app import Chimeway
from chimeway.db import DEFAULT_DATABASE_URL, mask_url
from chimeway.errors import ChimewayError, ConfigurationError

__all__ = ["ENV_SCHEMA", "ENV_URL", "describe_failure", "load_app", "load_attr", "open_app"]

ENV_URL = "CHIMEWAY_DATABASE_URL"
ENV_SCHEMA = "CHIMEWAY_SCHEMA"
_FIX_URL = f"fix --database-url (or ${ENV_URL})"


def load_attr(spec: str, option: str = "--app") -> Any:
    """Import ``pkg.module:attribute`` and return the attribute, or say in one line what is wrong.

    Args:
        spec: ``package.module:name``.
        option: the command-line option it came from, for the message.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"{option} must look like 'package.module:name', got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"{option} {spec!r}: cannot import {module_name!r}: {exc}") from exc
    if not hasattr(module, attr):
        raise ConfigurationError(
            f"{option} {spec!r}: module {module_name!r} has no attribute {attr!r}"
            f" (it is {module.__file__ or module_name})"
        )
    return getattr(module, attr)


def load_app(spec: str) -> Chimeway:
    """Import ``pkg.module:attribute`` and return the Chimeway app it names.

    The attribute may also be a function that returns the app.
    """
    app = load_attr(spec)
    if callable(app) and not isinstance(app, Chimeway):
        app = app()
    if not isinstance(app, Chimeway):
        raise ConfigurationError(f"--app {spec!r} is a {type(app).__name__}, not a Chimeway app")
    return app


def _parse(raw: str) -> URL:
    masked = mask_url(raw)
    try:
        url = make_url(raw)
    except sa.exc.ArgumentError:
        raise ConfigurationError(
            f"database URL {masked!r} cannot be read: write it like "
            "postgresql://USER@HOST:5432/DBNAME or sqlite:///PATH/TO/FILE.db"
        ) from None
    try:
        url.get_dialect()
    except (sa.exc.NoSuchModuleError, ImportError):
        raise ConfigurationError(
            f"database URL {masked!r} names an unknown database kind {url.drivername!r}: "
            "use postgresql://USER@HOST:5432/DBNAME or sqlite:///PATH/TO/FILE.db"
        ) from None
    return url


def _sqlite_file(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve()


def check_sqlite(url: URL, *, create: bool) -> None:
    """Refuse a SQLite URL whose folder (or, unless ``create``, whose file) does not exist."""
    path = _sqlite_file(url)
    if path is None:
        return
    shown = mask_url(url)
    if not path.parent.is_dir():
        raise ConfigurationError(
            f"database {shown}: the folder {path.parent} does not exist; create it or {_FIX_URL}"
        )
    if not create and not path.exists():
        raise ConfigurationError(
            f"database {shown}: no such file {path}; {_FIX_URL} to point at your database, "
            f"or create one here with `chimeway migrate --database-url {shown}`"
        )


def open_app(args: argparse.Namespace, *, create: bool = False) -> Chimeway:
    """The app named by ``--app``, else one on ``--database-url`` / ``$CHIMEWAY_DATABASE_URL``.

    Records the (masked) URL on ``args`` for error messages.

    Args:
        args: the parsed command line.
        create: the command may create the database (``migrate``).
    """
    spec = getattr(args, "app", None)
    if spec:
        app = load_app(spec)
        url = app.engine.url
    else:
        raw = getattr(args, "database_url", None) or os.environ.get(ENV_URL) or DEFAULT_DATABASE_URL
        args.shown_url = mask_url(raw)
        url = _parse(raw)
        app = Chimeway(raw, schema=getattr(args, "schema", None) or os.environ.get(ENV_SCHEMA) or None)
    args.shown_url = mask_url(url)
    check_sqlite(url, create=create)
    return app


# --- one line for every database mistake -------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if isinstance(current, sa.exc.DBAPIError) and current.orig is not None:
            yield current.orig
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def _host(url: str | None) -> str:
    try:
        parsed = make_url(url or "")
    except sa.exc.ArgumentError:
        return "the server"
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}"


def _user(url: str | None) -> str:
    try:
        return make_url(url or "").username or "(none)"
    except sa.exc.ArgumentError:
        return "(unknown)"


_MISSING_TABLE = re.compile(r'no such table: (chimeway_\w+)|relation "(?:(\w+)\.)?(chimeway_\w+)" does not exist')
_MISSING_DB = re.compile(r'database "([^"]+)" does not exist')
_MISSING_ROLE = re.compile(r'role "([^"]+)" does not exist')


def _database_message(text: str, url: str) -> str:
    lower = text.lower()
    if match := _MISSING_TABLE.search(text):
        table = match.group(1) or match.group(3)
        schema = match.group(2)
        where = f" in schema {schema}" if schema else ""
        flag = f" --schema {schema}" if schema else ""
        return (f"database {url} has no Chimeway tables{where} ({table} is missing): "
                f"run `chimeway migrate --database-url {url}{flag}` (or app.migrate()), or {_FIX_URL}")
    if match := _MISSING_DB.search(text):
        return (f"database {url}: the database {match.group(1)!r} does not exist on {_host(url)}; "
                f"create it (createdb {match.group(1)}) or {_FIX_URL}")
    if match := _MISSING_ROLE.search(text):
        return f"database {url}: the user {match.group(1)!r} does not exist on {_host(url)}; {_FIX_URL}"
    if "password authentication failed" in lower or "no password supplied" in lower:
        return (f"database {url}: {_host(url)} refused the login of user {_user(url)!r}; "
                f"check the user and password, or {_FIX_URL}")
    if "connection refused" in lower:
        return (f"database {url}: nothing accepts connections at {_host(url)}; "
                f"start the database server there, or {_FIX_URL}")
    if ("could not translate host name" in lower or "name or service not known" in lower
            or "failed to resolve" in lower or "nodename nor servname" in lower):
        return f"database {url}: the host of {_host(url)} cannot be found; {_FIX_URL}"
    if "timeout expired" in lower or "timed out" in lower:
        return f"database {url}: {_host(url)} did not answer in time; check that it is reachable, or {_FIX_URL}"
    if "unable to open database file" in lower:
        return f"database {url}: the file cannot be opened (check the folder and its permissions), or {_FIX_URL}"
    if "file is not a database" in lower or "file is encrypted" in lower:
        return f"database {url}: the file is not a SQLite database; {_FIX_URL}"
    if "database is locked" in lower:
        return f"database {url}: the file stayed locked by another process; try again when it is done"
    first = text.strip().splitlines()[0] if text.strip() else type(text).__name__
    return f"database {url}: {first}"


def describe_failure(exc: BaseException, url: str | None) -> str | None:
    """One line for an error a command ended with, or ``None`` when it is a bug to show in full.

    Database errors (raised directly or wrapped in a ``ChimewayError``) name
    the URL with its password masked, and the fix.
    """
    shown = url or "(unknown)"
    for link in _chain(exc):
        module = type(link).__module__
        if module.startswith(("psycopg", "sqlite3", "asyncpg", "aiosqlite")):
            return mask_url(_database_message(str(link), shown))
    for link in _chain(exc):
        if isinstance(link, sa.exc.SQLAlchemyError):
            return mask_url(_database_message(str(link), shown))
    if isinstance(exc, ChimewayError):
        return mask_url(str(exc))
    return None
