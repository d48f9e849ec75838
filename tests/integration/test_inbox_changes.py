"""app.inbox_changes(): LISTEN/NOTIFY on PostgreSQL, polling on SQLite; nothing announced for a rollback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from chimeway import Chimeway, Notifier, Recipient
from chimeway.errors import InvalidInputError
from chimeway.inbox_live import InboxChange

# The failure condition only: a change that works arrives in milliseconds.
PATIENCE = 10.0


class Mention(Notifier):
    key = "live_mention"
    channels = ["in_app"]
    templates = {"in_app": {"title": "{{ by }} mentioned you", "body": "{{ text }}"}}

    def recipients(self, params: Any) -> list[Recipient]:
        return [Recipient(id=params["to"])]


@pytest.fixture(params=["notify", "poll"])
def app(request: pytest.FixtureRequest, any_url: str) -> Iterator[Chimeway]:
    if request.param == "poll" and not any_url.startswith("postgresql"):
        pytest.skip("SQLite always polls")
    app = Chimeway(any_url, notify=request.param == "notify")
    yield app
    app.close()


def mention(app: Chimeway, key: str, *, to: str = "user:1", tenant: str | None = None) -> Any:
    with Session(app.engine) as session, session.begin():
        return app.trigger(session, Mention, {"to": to, "by": "ana", "text": key}, idempotency_key=key,
                           tenant=tenant).notification_ids[0]


async def take(changes: AsyncIterator[InboxChange]) -> InboxChange:
    return await asyncio.wait_for(anext(changes), PATIENCE)


def brief(change: InboxChange) -> tuple[Any, ...]:
    return (change.kind, change.item.body if change.item else None, change.unread_count)


def test_changes_arrive_in_order_with_the_item_and_unread_count(app: Chimeway) -> None:
    async def scenario() -> None:
        changes = app.inbox_changes("user:1", poll_interval=0.05 if app.inbox_hub is None else 15)
        assert brief(await take(changes)) == ("snapshot", None, 0)
        first = await asyncio.to_thread(mention, app, "first")
        arrived = await take(changes)
        assert brief(arrived) == ("new", "first", 1)
        assert arrived.notification_id == first and arrived.item is not None
        assert arrived.item.title == "ana mentioned you"
        second = await asyncio.to_thread(mention, app, "second")
        assert brief(await take(changes)) == ("new", "second", 2)
        await asyncio.to_thread(app.inbox("user:1").mark_read, first)
        read = await take(changes)
        assert (brief(read), read.notification_id) == (("read", "first", 1), first)
        assert read.item is not None and read.item.read_at is not None
        await asyncio.to_thread(app.inbox("user:1").mark_seen, second)
        assert brief(await take(changes)) == ("seen", "second", 1)
        await asyncio.to_thread(app.inbox("user:1").archive, second)
        assert brief(await take(changes)) == ("archived", "second", 0)
        await changes.aclose()

    asyncio.run(scenario())


def test_a_rolled_back_change_is_never_announced(app: Chimeway) -> None:
    async def scenario() -> None:
        first, second = mention(app, "first"), mention(app, "second")
        changes = app.inbox_changes("user:1", poll_interval=0.05 if app.inbox_hub is None else 15)
        assert brief(await take(changes)) == ("snapshot", None, 2)

        def read_then_roll_back() -> None:
            with Session(app.engine) as session:
                session.begin()
                assert app.inbox("user:1", session=session).mark_read(first)
                session.rollback()

        await asyncio.to_thread(read_then_roll_back)
        await asyncio.to_thread(app.inbox("user:1").archive, second)
        # The next change is the archive: the read that was rolled back never comes.
        assert brief(await take(changes)) == ("archived", "second", 1)
        await asyncio.to_thread(app.inbox("user:1").mark_read, first)
        assert brief(await take(changes)) == ("read", "first", 0)
        await changes.aclose()

    asyncio.run(scenario())


def test_only_the_recipients_own_changes_in_their_tenant(app: Chimeway) -> None:
    async def scenario() -> None:
        changes = app.inbox_changes("user:1", "acme", poll_interval=0.05 if app.inbox_hub is None else 15,
                                    snapshot=False)
        await asyncio.to_thread(mention, app, "other-user", to="user:2", tenant="acme")
        await asyncio.to_thread(mention, app, "other-tenant", to="user:1", tenant="globex")
        await asyncio.to_thread(mention, app, "no-tenant", to="user:1")
        await asyncio.to_thread(mention, app, "mine", to="user:1", tenant="acme")
        assert brief(await take(changes)) == ("new", "mine", 1)
        await changes.aclose()

    asyncio.run(scenario())


def test_mark_all_read_announces_every_item(app: Chimeway) -> None:
    async def scenario() -> None:
        made = [mention(app, f"m{i}") for i in range(3)]
        changes = app.inbox_changes("user:1", poll_interval=0.05 if app.inbox_hub is None else 15,
                                    snapshot=False)
        await asyncio.sleep(0)
        task = asyncio.ensure_future(take(changes))
        await asyncio.sleep(0.2)
        assert await asyncio.to_thread(app.inbox("user:1").mark_all_read) == 3
        got = [await task] + [await take(changes) for _ in range(2)]
        assert sorted(c.notification_id for c in got) == sorted(made)  # type: ignore[type-var]
        assert {c.kind for c in got} == {"read"} and got[-1].unread_count == 0
        await changes.aclose()

    asyncio.run(scenario())


@pytest.mark.postgres
def test_a_lost_listen_connection_loses_no_change(pg_url: str) -> None:
    app = Chimeway(pg_url)

    async def scenario() -> None:
        changes = app.inbox_changes("user:1")
        assert brief(await take(changes)) == ("snapshot", None, 0)
        with app.engine.connect() as conn:
            killed = conn.execute(sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'chimeway-listener' AND pid <> pg_backend_pid() "
                "AND datname = current_database()")).scalar()
        assert killed == 1
        await asyncio.to_thread(mention, app, "while-down")
        assert brief(await take(changes)) == ("new", "while-down", 1)
        await asyncio.to_thread(mention, app, "after")
        assert brief(await take(changes)) == ("new", "after", 2)
        await changes.aclose()

    asyncio.run(scenario())
    app.close()


def test_bad_arguments_are_refused_at_once(sqlite_url: str) -> None:
    with Chimeway(sqlite_url) as app:
        with pytest.raises(InvalidInputError, match="recipient"):
            app.inbox_changes("")
        with pytest.raises(InvalidInputError, match="poll_interval"):
            app.inbox_changes("user:1", poll_interval=0)


@pytest.mark.postgres
@pytest.mark.parametrize("schema", ["create_all", "migrated"])
def test_postgresql_announces_inbox_changes_at_commit_only(
    schema: str, pg_url: str, pg_empty_url: str
) -> None:
    import json

    import psycopg
    from sqlalchemy.engine import make_url

    url = pg_url if schema == "create_all" else pg_empty_url
    app = Chimeway(url)
    if schema == "migrated":
        app.migrate()
    first, second = mention(app, "first"), mention(app, "second")
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN chimeway_inbox")
        with Session(app.engine) as session:
            session.begin()
            app.inbox("user:1", session=session).mark_read(first)
            session.rollback()
        app.inbox("user:1").archive(second)
        note = next(listener.notifies(timeout=PATIENCE, stop_after=1))
    assert json.loads(note.payload) == {"t": "", "r": "user:1", "id": str(second), "k": "archived"}
    app.close()
