"""Async verbs for ``AsyncSession`` / ``AsyncConnection`` callers.

Nothing here re-implements a rule. Inside the caller's transaction each verb
hands the sync code the sync ``Session``/``Connection`` behind the caller's
async one (``run_sync``), so the same planner writes the same rows on the same
connection, and a rollback still leaves nothing behind. Work that needs no
caller transaction (``explain``, an inbox without a session, a worker) runs the
sync code on a thread over Chimeway's own sync engine.

Chimeway's own work (deliveries after commit, explain, recover) runs on a
*sync* engine. Build the app from the async engine with
:meth:`Chimeway.from_async_engine`, which derives the matching sync URL
(``sqlite+aiosqlite`` → ``sqlite``, ``postgresql+asyncpg`` or
``postgresql+psycopg_async`` → ``postgresql+psycopg``).

After an async commit, the ``sync`` dispatcher's delivery runs on a worker
thread and the committing coroutine awaits it, so ``await session.commit()``
returns once delivered (as ``session.commit()`` does) while the event loop
keeps serving other tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol, Self, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Dialect, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine
from sqlalchemy.orm import Session

from chimeway.db import connection_of
from chimeway.errors import ConfigurationError
from chimeway.explain import Explanation, Trace
from chimeway.inbox import Inbox, InboxItem, InboxPage
from chimeway.notifier import Notifier
from chimeway.planning import TriggerResult
from chimeway.queue import JobQueue
from chimeway.traces import Outcomes, TracePage

__all__ = [
    "SUPPORTED_ASYNC_DRIVERS",
    "AsyncInbox",
    "AsyncTarget",
    "AsyncVerbs",
    "create_async_engine",
    "run_worker",
    "sync_url",
]

T = TypeVar("T")

AsyncTarget = AsyncSession | AsyncConnection

#: ``dialect+driver`` names the async verbs run on.
SUPPORTED_ASYNC_DRIVERS = (
    "postgresql+asyncpg", "postgresql+psycopg", "postgresql+psycopg_async", "sqlite+aiosqlite",
)

# async driver -> the sync driver Chimeway's own engine uses on that database
_SYNC_DRIVERS = {
    ("postgresql", "psycopg"): "postgresql+psycopg",
    ("postgresql", "psycopg_async"): "postgresql+psycopg",
    ("postgresql", "asyncpg"): "postgresql+psycopg",
    ("sqlite", "aiosqlite"): "sqlite",
}


# -- engines ------------------------------------------------------------------


def sync_url(engine_or_url: AsyncEngine | URL | str) -> str:
    """The sync URL of the database an async engine (or async URL) points at.

    Args:
        engine_or_url: an ``AsyncEngine``, or an async database URL.

    Raises:
        ConfigurationError: the driver has no sync counterpart Chimeway uses,
            or the database is an in-memory SQLite one (two engines would see
            two different databases).
    """
    url = engine_or_url.url if isinstance(engine_or_url, AsyncEngine) else make_url(engine_or_url)
    backend, _, driver = url.drivername.partition("+")
    if backend == "postgres":
        backend = "postgresql"
    target = _SYNC_DRIVERS.get((backend, driver or ("aiosqlite" if backend == "sqlite" else "psycopg")))
    if target is None:
        raise ConfigurationError(
            f"database URL driver {url.drivername!r} is not an async driver Chimeway supports; "
            f"use one of {', '.join(SUPPORTED_ASYNC_DRIVERS)}"
        )
    if backend == "sqlite" and url.database in (None, "", ":memory:"):
        raise ConfigurationError(
            "an in-memory SQLite database cannot be shared between the async engine and "
            "Chimeway's engine; use a SQLite file"
        )
    return url.set(drivername=target).render_as_string(hide_password=False)


def create_async_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """An ``AsyncEngine`` with the settings Chimeway needs on each backend.

    On SQLite (``sqlite+aiosqlite``) this applies what
    :func:`chimeway.db.create_engine` applies to sync engines: WAL journaling,
    a busy timeout and foreign keys, so the application's async writers and
    Chimeway's sync engine can share the file. ``postgresql://`` URLs use
    psycopg 3's async mode.

    Args:
        url: an async database URL.
        **kwargs: passed to :func:`sqlalchemy.ext.asyncio.create_async_engine`.
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        engine = sa_create_async_engine(parsed, **kwargs)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ConfigurationError(f"database URL {parsed.drivername!r} cannot be used: {exc}") from exc
    _check_dialect(engine.dialect)
    if engine.dialect.name == "sqlite":
        from chimeway.db import _configure_sqlite

        _configure_sqlite(engine.sync_engine)
    return engine


def _check_dialect(dialect: Dialect) -> None:
    name = f"{dialect.name}+{dialect.driver}"
    if name not in SUPPORTED_ASYNC_DRIVERS:
        raise ConfigurationError(
            f"async driver {name!r} is not supported; use one of {', '.join(SUPPORTED_ASYNC_DRIVERS)}"
        )


class SyncVerbs(Protocol):
    """The sync verbs the async ones run: what :class:`AsyncVerbs` needs of the app.

    Signatures are left open on purpose: each async verb forwards its
    arguments unchanged, so the sync verb alone describes them.
    """

    engine: Engine
    queue: JobQueue

    def trigger(self, *args: Any, **kwargs: Any) -> TriggerResult: ...

    def track(self, *args: Any, **kwargs: Any) -> uuid.UUID: ...

    def inbox(self, *args: Any, **kwargs: Any) -> Inbox: ...

    def explain(self, *args: Any, **kwargs: Any) -> Explanation: ...

    def trace(self, *args: Any, **kwargs: Any) -> Trace: ...

    def traces(self, *args: Any, **kwargs: Any) -> TracePage: ...

    def outcomes(self, *args: Any, **kwargs: Any) -> Outcomes: ...


def _check_app(app: SyncVerbs) -> None:
    if app.engine.dialect.is_async:
        raise ConfigurationError(
            "Chimeway's engine must be a sync engine (it delivers and explains outside the "
            "event loop); build the app with Chimeway.from_async_engine(async_engine)"
        )


# -- running sync code in the caller's transaction ----------------------------


async def _in_transaction(target: AsyncTarget, fn: Callable[[Session | Connection], T]) -> T:
    def run(sync_target: Session | Connection) -> T:
        _check_dialect(connection_of(sync_target).dialect)
        return fn(sync_target)

    if isinstance(target, AsyncSession):
        return await target.run_sync(run)
    if isinstance(target, AsyncConnection):
        return await target.run_sync(run)
    raise ConfigurationError(
        f"expected an AsyncSession or AsyncConnection, got {type(target).__name__}; "
        "sync sessions use the sync verbs (trigger, track, inbox)"
    )


# -- the inbox ---------------------------------------------------------------


class AsyncInbox:
    """One recipient's inbox, with awaitable methods; see :class:`chimeway.Inbox`.

    With a session, every call runs in the caller's transaction (``run_sync``);
    without one, in Chimeway's own short transactions on a worker thread.

    Args:
        app: the Chimeway app.
        recipient: the recipient id.
        tenant: the tenant, or ``None``.
        session: the caller's ``AsyncSession`` or ``AsyncConnection``, or ``None``.
    """

    def __init__(
        self, app: SyncVerbs, recipient: str, tenant: str | None = None, *, session: AsyncTarget | None = None
    ) -> None:
        _check_app(app)
        if session is not None and not isinstance(session, AsyncSession | AsyncConnection):
            raise ConfigurationError(
                f"session must be an AsyncSession or AsyncConnection, got {type(session).__name__}"
            )
        self._app = app
        self._session = session
        # Built once up front so a bad recipient fails here, not on first use.
        self._own = app.inbox(recipient, tenant)
        self.recipient = recipient
        self.tenant = tenant

    async def _run(self, fn: Callable[[Inbox], T]) -> T:
        if self._session is None:
            return await asyncio.to_thread(fn, self._own)
        return await _in_transaction(
            self._session, lambda sync_target: fn(self._app.inbox(self.recipient, self.tenant, session=sync_target))
        )

    async def list(
        self,
        limit: int = 20,
        cursor: str | None = None,
        *,
        unread_only: bool = False,
        include_archived: bool = False,
    ) -> InboxPage:
        """Newest items first, with keyset pagination.

        Args:
            limit: items per page (1..200).
            cursor: ``next_cursor`` from the previous page.
            unread_only: only items not yet read.
            include_archived: also archived items.
        """
        return await self._run(lambda box: box.list(
            limit, cursor, unread_only=unread_only, include_archived=include_archived
        ))

    async def get(self, notification_id: uuid.UUID | str) -> InboxItem:
        """One item of this recipient's inbox.

        Args:
            notification_id: the notification id.
        """
        return await self._run(lambda box: box.get(notification_id))

    async def unread_count(self) -> int:
        """Items not read and not archived."""
        return await self._run(lambda box: box.unread_count())

    async def mark_seen(self, notification_id: uuid.UUID | str) -> bool:
        """Stamp ``seen_at`` the first time; returns whether this call changed it.

        Args:
            notification_id: the notification id.
        """
        return await self._run(lambda box: box.mark_seen(notification_id))

    async def mark_read(self, notification_id: uuid.UUID | str) -> bool:
        """Stamp ``read_at`` (and ``seen_at`` if unset) the first time.

        Args:
            notification_id: the notification id.
        """
        return await self._run(lambda box: box.mark_read(notification_id))

    async def archive(self, notification_id: uuid.UUID | str) -> bool:
        """Stamp ``archived_at`` the first time; archived items leave ``list()``.

        Args:
            notification_id: the notification id.
        """
        return await self._run(lambda box: box.archive(notification_id))

    async def mark_all_read(self) -> int:
        """Mark every unread item read; returns how many changed."""
        return await self._run(lambda box: box.mark_all_read())


# -- the worker ----------------------------------------------------------------


async def run_worker(jobs: JobQueue, **options: Any) -> int:
    """Run a blocking ``JobQueue.run_worker`` on its own thread until cancelled.

    Cancelling the awaiting task sets the worker's stop event, waits for its
    graceful shutdown (running jobs get ``shutdown_grace`` seconds), and then
    re-raises the cancellation.

    Args:
        jobs: the ``JobQueue``.
        **options: keyword arguments of ``JobQueue.run_worker`` (``queues``,
            ``poll_interval``, ``shutdown_grace``, ...), except ``stop_event``.

    Returns:
        how many jobs the worker ran, when it stopped by itself.
    """
    if "stop_event" in options:
        raise ConfigurationError("run_worker stops when its task is cancelled; do not pass stop_event")
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()

    def settle(result: int | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(int(result or 0))

    def work() -> None:
        try:
            ran = int(jobs.run_worker(stop_event=stop, **options))
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, ran, None)

    # Its own thread, not the loop's default executor: a worker runs for the
    # life of the process and must not hold one of that pool's few slots.
    # Daemon, so a loop that dies without cancelling does not hang the exit;
    # jobs it held are rescued once its heartbeat goes stale.
    thread = threading.Thread(target=work, name="chimeway-worker", daemon=True)
    thread.start()
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait([done])
        await asyncio.to_thread(thread.join)
        raise


# -- the async verbs of Chimeway -------------------------------------------------------


class AsyncVerbs:
    """The async counterparts of ``Chimeway``'s verbs, mixed into it.

    Each forwards its arguments to the sync verb of the same name (whose
    docstring describes them), run inside the caller's async transaction or
    on a worker thread.
    """

    @classmethod
    def from_async_engine(cls, engine: AsyncEngine | URL | str, **options: Any) -> Self:
        """An app over the database an ``AsyncEngine`` (or async URL) points at.

        Chimeway delivers and explains outside the event loop, so it opens its
        own sync engine on the same database (``sqlite+aiosqlite`` → ``sqlite``,
        ``postgresql+psycopg``/``+asyncpg`` → ``postgresql+psycopg``) and
        closes it on ``close()``.

        Args:
            engine: an ``AsyncEngine``, or an async database URL.
            **options: the other ``Chimeway`` arguments (``channels``, ``dispatcher``, ...).
        """
        return cast(Any, cls)(sync_url(engine), **options)  # type: ignore[no-any-return]

    async def trigger_async(self: SyncVerbs, session: AsyncTarget, notifier: type[Notifier],
                            params: Mapping[str, Any] | None = None, **options: Any) -> TriggerResult:
        """``trigger`` inside the caller's ``AsyncSession``/``AsyncConnection`` transaction.

        Same arguments, rows and guarantees as ``trigger``: rollback leaves
        nothing; after the async commit the dispatcher delivers without
        blocking the event loop.
        """
        _check_app(self)
        return await _in_transaction(session, lambda target: self.trigger(target, notifier, params, **options))

    async def track_async(self: SyncVerbs, session: AsyncTarget, name: str, **options: Any) -> uuid.UUID:
        """``track`` inside the caller's ``AsyncSession``/``AsyncConnection`` transaction (same arguments)."""
        _check_app(self)
        return await _in_transaction(session, lambda target: self.track(target, name, **options))

    def inbox_async(self: SyncVerbs, recipient: str, tenant: str | None = None, *,
                    session: AsyncTarget | None = None) -> AsyncInbox:
        """``inbox`` with awaitable methods (an :class:`AsyncInbox`).

        Args:
            recipient: the recipient id.
            tenant: the tenant, or ``None``.
            session: run in the caller's ``AsyncSession``/``AsyncConnection``
                transaction instead of Chimeway's own (on a worker thread).
        """
        return AsyncInbox(self, recipient, tenant, session=session)

    async def explain_async(self: SyncVerbs, delivery_id: uuid.UUID | str, **options: Any) -> Explanation:
        """``explain`` on a worker thread, without blocking the event loop."""
        _check_app(self)
        return await asyncio.to_thread(self.explain, delivery_id, **options)

    async def trace_async(self: SyncVerbs, event_id: uuid.UUID | str, **options: Any) -> Trace:
        """``trace`` on a worker thread, without blocking the event loop."""
        _check_app(self)
        return await asyncio.to_thread(self.trace, event_id, **options)

    async def traces_async(self: SyncVerbs, **filters: Any) -> TracePage:
        """``traces`` on a worker thread, without blocking the event loop."""
        _check_app(self)
        return await asyncio.to_thread(self.traces, **filters)

    async def outcomes_async(self: SyncVerbs, notifier: str, **options: Any) -> Outcomes:
        """``outcomes`` on a worker thread, without blocking the event loop."""
        _check_app(self)
        return await asyncio.to_thread(self.outcomes, notifier, **options)

    async def run_worker(self: SyncVerbs, **options: Any) -> int:
        """Run a job-queue worker on its own thread until this task is cancelled.

        Cancellation stops the worker gracefully (running jobs get
        ``shutdown_grace`` seconds) and is then re-raised.

        Args:
            **options: keyword arguments of ``JobQueue.run_worker`` (``queues``,
                ``poll_interval``, ``shutdown_grace``, ...).

        Returns:
            how many jobs the worker ran.
        """
        return await run_worker(self.queue, **options)
