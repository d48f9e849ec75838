"""Running work after the caller's transaction commits.

``Session`` has an ``after_commit`` event. A bare ``Connection`` only has a
``commit`` event that fires *before* the database commits, so for it the
listener commits the DBAPI connection itself and then runs the callbacks;
SQLAlchemy's own commit that follows finds nothing left to commit. Either
way, callbacks run only once the rows are durable and visible to other
connections, and a rollback discards them.

Callbacks must not raise into the caller's ``commit()``: they are run by
:func:`run_callbacks`, which logs failures (the rows stay ``pending`` and
``recover()`` picks them up).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

__all__ = ["after_commit"]

log = logging.getLogger("chimeway")

Callback = Callable[[], None]

_SESSION_KEY = "chimeway.after_commit"
_connection_pending: weakref.WeakKeyDictionary[Connection, list[Callback]] = weakref.WeakKeyDictionary()


def after_commit(target: Session | Connection, callback: Callback) -> None:
    """Run ``callback`` after ``target``'s outermost transaction commits.

    Args:
        target: the caller's ``Session`` or ``Connection``.
        callback: runs once, after commit; dropped on rollback.
    """
    if isinstance(target, Session):
        pending: list[Callback] | None = target.info.get(_SESSION_KEY)
        if pending is None:
            pending = target.info[_SESSION_KEY] = []
            event.listen(target, "after_commit", _session_committed)
            event.listen(target, "after_rollback", _session_rolled_back)
        pending.append(callback)
        return
    conn_pending = _connection_pending.get(target)
    if conn_pending is None:
        conn_pending = _connection_pending[target] = []
        event.listen(target, "commit", _connection_committing)
        event.listen(target, "rollback", _connection_rolled_back)
    conn_pending.append(callback)


def _session_committed(session: Session) -> None:
    # after_commit also fires when a savepoint (begin_nested) is released;
    # only the outermost commit makes the rows durable and visible.
    if session.in_nested_transaction():
        return
    callbacks = session.info.get(_SESSION_KEY) or []
    session.info[_SESSION_KEY] = []
    run_callbacks(callbacks)


def _session_rolled_back(session: Session) -> None:
    # A savepoint rolled back: work planned before it still stands. Work
    # planned inside it finds no rows when it runs, so it can stay queued.
    if session.in_nested_transaction():
        return
    session.info[_SESSION_KEY] = []


def _connection_committing(conn: Connection) -> None:
    callbacks = _connection_pending.get(conn) or []
    if not callbacks:
        return
    _connection_pending[conn] = []
    dbapi: Any = conn.connection.dbapi_connection
    dbapi.commit()
    run_callbacks(callbacks)


def _connection_rolled_back(conn: Connection) -> None:
    if conn in _connection_pending:
        _connection_pending[conn] = []


def run_callbacks(callbacks: list[Callback]) -> None:
    """Run post-commit work; under an ``AsyncSession`` commit, off the event loop.

    An async commit runs the sync session's commit (and so these callbacks)
    inside SQLAlchemy's greenlet on the event-loop thread. There the work is
    moved to a worker thread and awaited through the greenlet, which gives
    the loop back until it is done.
    """
    if _in_async_commit():
        import asyncio

        from sqlalchemy.util import await_only

        await_only(asyncio.to_thread(_run_all, callbacks))
        return
    _run_all(callbacks)


def _in_async_commit() -> bool:
    try:
        from sqlalchemy.util.concurrency import in_greenlet
    except ImportError:  # pragma: no cover - SQLAlchemy without asyncio support
        return False
    try:
        return bool(in_greenlet())
    except Exception:  # greenlet not installed
        return False


def _run_all(callbacks: list[Callback]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("chimeway: post-commit work failed; recover() will retry it")
