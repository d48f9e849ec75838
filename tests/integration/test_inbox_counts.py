"""Unread counts kept by the database: exact under every writer, under concurrency, after a migration.

``chimeway_inbox_counts`` is changed only by triggers on
``chimeway_notifications``. Each test compares it with a fresh
``count(*)`` over the notifications after every kind of write: planning and
delivery, the inbox's transitions, a caller's own SQL, deletes (direct and
cascaded), the pruner; a missing trigger or a wrong delta shows up as a
difference for some recipient.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from chimeway import Chimeway, Notifier, Recipient, Retention
from chimeway.db import create_engine, insert_rows
from chimeway.migrations import upgrade
from chimeway.models import events_table, inbox_counts_table, notifications_table
from chimeway.testing import FakeClock

COUNTED = "inbox_at IS NOT NULL AND read_at IS NULL AND archived_at IS NULL"


class Note(Notifier):
    key = "count_note"
    channels = ["in_app"]
    templates = {"in_app": {"title": "n{{ n }}", "body": "for {{ recipient.id }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=uid) for uid in params["to"]]


def fresh(conn: sa.Connection) -> dict[tuple[str, str], int]:
    """Unread items per (tenant, recipient), counted from the notifications themselves."""
    n = notifications_table
    rows = conn.execute(
        sa.select(n.c.tenant, n.c.recipient_id, sa.func.count())
        .where(n.c.inbox_at.is_not(None), n.c.read_at.is_(None), n.c.archived_at.is_(None))
        .group_by(n.c.tenant, n.c.recipient_id)
    ).all()
    return {(t, r): int(k) for t, r, k in rows}


def kept(conn: sa.Connection) -> dict[tuple[str, str], int]:
    """The maintained counts, each the sum of its rows (zeros left out: a recipient whose items all went)."""
    c = inbox_counts_table
    rows = conn.execute(sa.select(c.c.tenant, c.c.recipient_id, sa.func.sum(c.c.unread))
                        .group_by(c.c.tenant, c.c.recipient_id)).all()
    assert all(k >= 0 for _, _, k in rows), rows
    return {(t, r): int(k) for t, r, k in rows if k}


def assert_exact(engine: sa.Engine) -> dict[tuple[str, str], int]:
    with engine.connect() as conn:
        expected = fresh(conn)
        assert kept(conn) == expected
    return expected


def send(app: Chimeway, key: str, to: list[str], tenant: str | None = None, n: int = 0) -> Any:
    with Session(app.engine) as session, session.begin():
        return app.trigger(session, Note, {"to": to, "n": n}, idempotency_key=key, tenant=tenant)


def test_every_writer_keeps_the_count_exact(any_engine: sa.Engine) -> None:
    clock = FakeClock()
    app = Chimeway(engine=any_engine, clock=clock, retention=Retention(events=timedelta(days=30)))
    # Planning and in-app delivery, several recipients per trigger, two tenants.
    for i in range(4):
        send(app, f"a{i}", ["user:1", "user:2", "user:3"], tenant="acme", n=i)
        send(app, f"b{i}", ["user:1"], n=i)
    assert assert_exact(any_engine) == {("acme", "user:1"): 4, ("acme", "user:2"): 4,
                                        ("acme", "user:3"): 4, ("", "user:1"): 4}
    one = app.inbox("user:1", tenant="acme")
    assert one.unread_count() == 4 and app.inbox("user:1").unread_count() == 4
    assert app.inbox("nobody", tenant="acme").unread_count() == 0      # no row: none

    first, second, third, fourth = one.list().items
    assert one.mark_seen(first.id) is True                              # seen is still unread
    assert one.mark_read(first.id) is True and one.mark_read(first.id) is False
    assert one.archive(second.id) is True and one.archive(second.id) is False
    assert one.archive(first.id) is True                                # read, then archived: no change
    assert one.unread_count() == 2
    assert_exact(any_engine)
    assert app.inbox("user:2", tenant="acme").mark_all_read() == 4
    assert app.inbox("user:2", tenant="acme").unread_count() == 0
    assert_exact(any_engine)

    # The caller's transaction: its own change counts inside it, and a rollback undoes it.
    with Session(any_engine) as session:
        session.begin()
        mine = app.inbox("user:1", tenant="acme", session=session)
        mine.mark_read(third.id)
        assert mine.unread_count() == 1
        session.rollback()
    assert one.unread_count() == 2

    # The caller's own SQL: unread again, unarchived, moved to another recipient, deleted.
    n = notifications_table
    with any_engine.begin() as conn:
        conn.execute(sa.update(n).where(n.c.id == first.id).values(read_at=None))          # archived: still 0
        conn.execute(sa.update(n).where(n.c.id == second.id).values(archived_at=None))     # unread again: +1
        conn.execute(sa.update(n).where(n.c.tenant == "acme", n.c.recipient_id == "user:2")
                     .values(read_at=None, seen_at=None))                                   # 4 unread again
        conn.execute(sa.update(n).where(n.c.id == third.id).values(recipient_id="user:9"))  # moves a count
    assert one.unread_count() == 2 and app.inbox("user:9", tenant="acme").unread_count() == 1
    assert_exact(any_engine)
    with any_engine.begin() as conn:
        conn.execute(sa.delete(n).where(n.c.id == fourth.id))
        event_id = conn.execute(sa.select(n.c.event_id).where(n.c.id == second.id)).scalar_one()
        conn.execute(sa.delete(events_table).where(events_table.c.id == event_id))  # cascades to notifications
    assert_exact(any_engine)

    # Many rows for many recipients in one statement (PostgreSQL: one INSERT ... SELECT).
    now = clock.now()
    rows = [{"id": uuid.uuid4(), "event_id": event_id_of(any_engine), "tenant": "bulk", "recipient_id": f"r{i % 7}",
             "recipient": {"id": f"r{i % 7}"}, "notifier_key": "count_note", "category": None, "created_at": now,
             "inbox_at": now, "inbox_content": {"title": "x"}, "seen_at": None,
             "read_at": now if i % 5 == 0 else None, "archived_at": None} for i in range(70)]
    with any_engine.begin() as conn:
        insert_rows(conn, n, rows)
    assert app.inbox("r1", tenant="bulk").unread_count() == 8
    assert_exact(any_engine)

    # The pruner: every event past its age goes, with its inbox items.
    clock.advance(timedelta(days=31))
    send(app, "late", ["user:1"], tenant="acme")
    with any_engine.begin() as conn:
        conn.execute(sa.delete(n).where(n.c.tenant == "bulk"))
    assert app.prune()["chimeway_events"] > 0
    assert assert_exact(any_engine) == {("acme", "user:1"): 1}
    if any_engine.dialect.name == "postgresql":
        with any_engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE chimeway_notifications CASCADE"))
        assert assert_exact(any_engine) == {}
    app.close()


def event_id_of(engine: sa.Engine) -> uuid.UUID:
    with engine.connect() as conn:
        return uuid.UUID(str(conn.execute(sa.select(events_table.c.id).limit(1)).scalar_one()))


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'migrated.db'}"
    return str(request.getfixturevalue("pg_empty_url"))


def test_the_migration_counts_what_is_already_there(empty_url: str) -> None:
    engine = create_engine(empty_url)
    upgrade(engine, "0012")
    app = Chimeway(engine=engine)
    for i in range(3):
        send(app, f"old{i}", ["user:1", "user:2"], tenant="acme")
    first = app.inbox("user:1", tenant="acme").list().items[0]
    app.inbox("user:1", tenant="acme").mark_read(first.id)
    app.migrate()
    assert assert_exact(engine) == {("acme", "user:1"): 2, ("acme", "user:2"): 3}
    app.inbox("user:2", tenant="acme").mark_all_read()
    send(app, "new", ["user:2"], tenant="acme")
    assert app.inbox("user:2", tenant="acme").unread_count() == 1
    assert_exact(engine)
    app.close()
    engine.dispose()


def _installed(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return list(conn.execute(sa.text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'chimeway_inbox_count%' "
                "ORDER BY name")).all())
        return list(conn.execute(sa.text(
            "SELECT t.tgname, pg_get_triggerdef(t.oid), p.prosrc FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
            "WHERE t.tgname LIKE 'chimeway_inbox_count%' ORDER BY t.tgname")).all())


def test_create_all_installs_the_same_triggers_as_the_migration(
    empty_url: str, request: pytest.FixtureRequest
) -> None:
    created_url = (str(request.getfixturevalue("sqlite_url")) if empty_url.startswith("sqlite")
                   else str(request.getfixturevalue("pg_url")))
    migrated, created = create_engine(empty_url), create_engine(created_url)
    Chimeway(engine=migrated).migrate()
    names = {"sqlite": 3, "postgresql": 4}[migrated.dialect.name]
    assert len(_installed(migrated)) == names
    assert _installed(migrated) == _installed(created)
    migrated.dispose()
    created.dispose()


@pytest.mark.postgres
def test_a_schema_of_chimewayss_own(pg_empty_url: str) -> None:
    engine = create_engine(pg_empty_url)
    app = Chimeway(engine=engine, schema="notify")
    app.migrate()
    send(app, "s1", ["user:1", "user:2"])
    with Session(engine) as session, session.begin():     # the caller's session: public on its search_path
        app.trigger(session, Note, {"to": ["user:1"], "n": 2}, idempotency_key="s2")
    inbox = app.inbox("user:1")
    assert inbox.unread_count() == 2
    with Session(engine) as session, session.begin():
        app.inbox("user:1", session=session).mark_all_read()
    assert inbox.unread_count() == 0 and app.inbox("user:2").unread_count() == 1
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM notify.chimeway_inbox_counts")).scalar() == 2
        assert conn.execute(sa.text("SELECT to_regclass('public.chimeway_inbox_counts')")).scalar() is None
    app.close()
    engine.dispose()


@pytest.mark.postgres
def test_a_writer_never_waits_for_a_count_row_another_transaction_holds(pg_url: str) -> None:
    engine = create_engine(pg_url)
    app = Chimeway(engine=engine)
    send(app, "x", ["user:1"])
    send(app, "y", ["user:1"])
    send(app, "z", ["user:1"])
    first, second, third = (item.id for item in app.inbox("user:1").list().items)
    n, c = notifications_table, inbox_counts_table

    def rows() -> list[int]:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(c.c.unread).where(c.c.recipient_id == "user:1")
                                     .order_by(c.c.slot)).scalars())

    with engine.connect() as holder:
        holder.begin()
        holder.execute(sa.update(n).where(n.c.id == first).values(read_at=sa.func.now()))    # holds the count row
        with engine.connect() as other:
            other.begin()
            other.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))   # waiting for the held row would fail
            other.execute(sa.update(n).where(n.c.id == second).values(read_at=sa.func.now()))
            other.commit()
        assert rows() == [3, -1]                                         # a row of its own beside the held one
        assert app.inbox("user:1").unread_count() == 2
        holder.commit()
    assert rows() == [2, -1] and app.inbox("user:1").unread_count() == 1
    app.inbox("user:1").mark_read(third)                                 # the next writer folds them into one
    assert rows() == [0]
    assert_exact(engine)
    app.close()
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_a_snapshot_transaction_is_not_failed_by_a_count_changed_since_its_snapshot(pg_url: str, level: str) -> None:
    engine = create_engine(pg_url)
    app = Chimeway(engine=engine)
    send(app, "x", ["user:1"])
    send(app, "y", ["user:1"])
    first, second = (item.id for item in app.inbox("user:1").list().items)
    with Session(engine.execution_options(isolation_level=level)) as session, session.begin():
        assert app.inbox("user:1", session=session).unread_count() == 2          # its snapshot, before:
        app.inbox("user:1").mark_read(first)                                     # another transaction's change
        assert app.inbox("user:1", session=session).mark_read(second) is True
        assert app.inbox("user:1", session=session).unread_count() == 1          # its own change, on its snapshot
    assert app.inbox("user:1").unread_count() == 0
    assert_exact(engine)
    app.close()
    engine.dispose()


@pytest.fixture
def pg_app(pg_url: str) -> Iterator[Chimeway]:
    engine = create_engine(pg_url, pool_size=20, max_overflow=10)
    app = Chimeway(engine=engine)
    yield app
    app.close()
    engine.dispose()


@pytest.mark.postgres
def test_racing_triggers_and_reads_leave_every_count_exact_without_deadlocks(
    pg_app: Chimeway, caplog: pytest.LogCaptureFixture
) -> None:
    app = pg_app
    caplog.set_level(logging.WARNING, logger="chimeway")
    recipients = [f"user:{i}" for i in range(4)]
    writers, readers, rounds = 6, 3, 12
    start = threading.Barrier(writers + readers)
    errors: list[BaseException] = []

    def trigger(w: int) -> None:
        rng = random.Random(w)
        start.wait()
        for i in range(rounds):
            to = recipients[:]
            rng.shuffle(to)                                 # each trigger takes the recipients in its own order
            send(app, f"w{w}-{i}", to, tenant="race", n=i)

    def read(r: int) -> None:
        rng = random.Random(100 + r)
        start.wait()
        for _ in range(rounds):
            inbox = app.inbox(rng.choice(recipients), tenant="race")
            if rng.random() < 0.3:
                inbox.mark_all_read()
            else:
                for item in inbox.list(limit=3, unread_only=True).items:
                    inbox.mark_read(item.id)

    def guarded(work: Any, arg: int) -> None:
        try:
            work(arg)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(trigger, w)) for w in range(writers)]
    threads += [threading.Thread(target=guarded, args=(read, r)) for r in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    # The executor retries a recording that failed (a deadlock among them) after logging a warning.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    with app.engine.connect() as conn:
        statuses = conn.execute(sa.text("SELECT status, count(*) FROM chimeway_deliveries GROUP BY status")).all()
    assert dict(statuses) == {"succeeded": writers * rounds * len(recipients)}
    counts = assert_exact(app.engine)
    for recipient in recipients:
        assert app.inbox(recipient, tenant="race").unread_count() == counts.get(("race", recipient), 0)
