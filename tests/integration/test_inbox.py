"""The in-app inbox on both backends: pagination, transitions, tenant isolation."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from support import Welcome

from chimeway import Chimeway
from chimeway.errors import InvalidInputError, NotFoundError
from chimeway.testing import FakeClock, RecordingChannel


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(any_engine: sa.Engine, clock: FakeClock) -> Chimeway:
    return Chimeway(engine=any_engine, channels={"rec": RecordingChannel()}, clock=clock)


def _notify(app: Chimeway, n: int, tenant: str | None = "acme", user: str = "user:1") -> None:
    for i in range(n):
        with Session(app.engine) as session, session.begin():
            app.trigger(session, Welcome, {"name": f"#{i}", "users": [user]},
                        idempotency_key=f"{tenant}-{user}-{i}", tenant=tenant)


def test_keyset_pagination_newest_first(app: Chimeway) -> None:
    _notify(app, 7)
    inbox = app.inbox("user:1", tenant="acme")
    seen = []
    cursor = None
    while True:
        page = inbox.list(limit=3, cursor=cursor)
        seen.extend(item.title for item in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [f"Welcome #{i}" for i in reversed(range(7))]


def test_transitions_write_only_the_first_timestamp(app: Chimeway, clock: FakeClock) -> None:
    _notify(app, 2)
    inbox = app.inbox("user:1", tenant="acme")
    first, second = inbox.list().items
    assert inbox.unread_count() == 2
    assert inbox.mark_seen(first.id) is True
    seen_at = inbox.get(first.id).seen_at
    clock.advance(minutes=5)
    assert inbox.mark_seen(first.id) is False
    assert inbox.get(first.id).seen_at == seen_at
    assert inbox.mark_read(first.id) is True
    read = inbox.get(first.id)
    assert read.read_at == clock.now() and read.seen_at == seen_at
    clock.advance(minutes=5)
    assert inbox.mark_read(first.id) is False
    assert inbox.get(first.id).read_at == read.read_at
    assert inbox.unread_count() == 1
    assert [i.id for i in inbox.list(unread_only=True).items] == [second.id]
    assert inbox.archive(second.id) is True
    assert inbox.archive(second.id) is False
    assert [i.id for i in inbox.list().items] == [first.id]
    assert len(inbox.list(include_archived=True).items) == 2


def test_mark_all_read(app: Chimeway) -> None:
    _notify(app, 3)
    inbox = app.inbox("user:1", tenant="acme")
    inbox.mark_read(inbox.list().items[0].id)
    assert inbox.mark_all_read() == 2
    assert inbox.unread_count() == 0
    assert inbox.mark_all_read() == 0


def test_tenants_and_recipients_never_see_each_others_items(app: Chimeway) -> None:
    _notify(app, 2, tenant="a")
    _notify(app, 1, tenant="b")
    _notify(app, 1, tenant=None)
    _notify(app, 1, tenant="a", user="user:2")
    a_items = app.inbox("user:1", tenant="a").list().items
    assert len(a_items) == 2
    assert len(app.inbox("user:1", tenant="b").list().items) == 1
    assert len(app.inbox("user:1").list().items) == 1
    b_inbox = app.inbox("user:1", tenant="b")
    with pytest.raises(NotFoundError):
        b_inbox.mark_read(a_items[0].id)
    with pytest.raises(NotFoundError):
        app.inbox("user:2", tenant="a").mark_read(a_items[0].id)
    assert app.inbox("user:1", tenant="a").get(a_items[0].id).read_at is None


def test_bad_inbox_arguments(app: Chimeway) -> None:
    with pytest.raises(InvalidInputError, match="limit"):
        app.inbox("user:1").list(limit=0)
    with pytest.raises(InvalidInputError, match="cursor"):
        app.inbox("user:1").list(cursor="not-an-id")
    with pytest.raises(InvalidInputError, match="recipient"):
        app.inbox("")


def test_transitions_inside_the_callers_session_roll_back(app: Chimeway) -> None:
    _notify(app, 1)
    item = app.inbox("user:1", tenant="acme").list().items[0]
    with Session(app.engine) as session:
        session.begin()
        assert app.inbox("user:1", tenant="acme", session=session).mark_read(item.id)
        session.rollback()
    assert app.inbox("user:1", tenant="acme").get(item.id).read_at is None
