"""Encryption at rest: what a notification says is stored as Fernet tokens.

Read back in clear only by a process that has the keys; keys rotate.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from chimeway import Chimeway, Notifier, Recipient
from chimeway.aio import create_async_engine
from chimeway.errors import ConfigurationError
from chimeway.reencrypt import sealed_columns
from chimeway.testing import FakeClock, RecordingChannel
from chimeway.workflow import deliver, wait

OLD, NEW = Fernet.generate_key(), Fernet.generate_key()
# Words that appear only in params, rendered messages and recipients.
PLAIN = ("Zanzibar", "Q7X9", "clinic.test")


class _Reset(Notifier):
    key = "test_encryption_reset"
    channels = ["in_app", "rec"]
    templates = {"in_app": {"title": "Reset for {{ name }}", "body": "code {{ code }}"},
                 "rec": {"body": "Use {{ code }}, {{ name }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=u, email=f"{u}@clinic.test") for u in params["users"]]


def _managers(params: Mapping[str, Any], recipient: Recipient) -> list[Recipient]:
    return [Recipient(id=f"{recipient.id}:boss{n}", email=f"boss{n}@clinic.test") for n in (1, 2)]


class _Journey(Notifier):
    key = "test_encryption_journey"
    templates = {"in_app": {"body": "hi {{ name }}"}, "rec": {"body": "still {{ name }}"}}
    # The escalation writes several notifications and deliveries in one batch.
    workflow = [deliver("in_app"), wait(minutes=30), deliver("rec", to=_managers)]

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=u, email=f"{u}@clinic.test") for u in params["users"]]


PARAMS = {"name": "Zanzibar", "code": "Q7X9", "users": ["u1", "u2"]}


def _stored(engine: sa.Engine) -> list[str]:
    """Every non-null encrypted column's stored text, read past Chimeway's column types."""
    out = []
    with engine.connect() as conn:
        for table, columns in sealed_columns():
            for column in columns:
                out += [v for v in conn.execute(sa.text(
                    f"SELECT CAST({column.name} AS TEXT) FROM {table.name} WHERE {column.name} IS NOT NULL"
                )).scalars() if v not in (None, "null")]
    return out


def _trigger(app: Chimeway, notifier: type[Notifier], key: str) -> Any:
    with Session(app.engine) as session, session.begin():
        return app.trigger(session, notifier, PARAMS, idempotency_key=key)


@pytest.fixture
def rec() -> RecordingChannel:
    return RecordingChannel()


@pytest.fixture
def make(any_engine: sa.Engine, rec: RecordingChannel) -> Iterator[Any]:
    apps: list[Chimeway] = []

    def make_app(keys: list[bytes] | None, clock: FakeClock | None = None) -> Chimeway:
        for app in apps:
            app.close()
        apps.append(Chimeway(engine=any_engine, clock=clock, channels={"rec": rec}, encryption_keys=keys))
        return apps[-1]

    yield make_app
    for app in apps:
        app.close()


def test_what_a_notification_says_is_stored_encrypted(make: Any, rec: RecordingChannel,
                                                       any_engine: sa.Engine) -> None:
    clock = FakeClock()
    app = make([NEW], clock)
    result = _trigger(app, _Reset, "r1")
    _trigger(app, _Journey, "j1")
    clock.advance(minutes=31)
    app.work()
    # Sent, shown and explained in clear inside the process...
    assert sorted(m.fields["body"] for m in rec.sent) == [
        "Use Q7X9, Zanzibar", "Use Q7X9, Zanzibar", *["still Zanzibar"] * 4]
    assert rec.sent[0].recipient.email.endswith("@clinic.test")
    titles = [i.content.get("title") for i in app.inbox("u1").list().items]
    assert "Reset for Zanzibar" in titles
    explanation = app.explain(result.delivery_ids[0])
    assert any(t.event == "rendered" and "title" in t.detail["fields"] for t in explanation.timeline)
    # ...while the database holds tokens only: events, deliveries (the
    # workflow's later steps too), recipients and inbox content.
    stored = _stored(any_engine)
    assert len(stored) >= 2 + 8 + 10 + 4
    assert all("fernet:" in text for text in stored)
    assert not [text for text in stored if any(word in text for word in PLAIN)]


def test_a_process_without_the_keys_cannot_read_them(make: Any) -> None:
    app = make([NEW])
    delivery_id = _trigger(app, _Reset, "r1").delivery_ids[0]
    app = make(None)
    with pytest.raises(ConfigurationError, match="encryption_keys"):
        app.explain(delivery_id)
    with pytest.raises(ConfigurationError, match="encryption_keys"):
        app.inbox("u1").list()


def test_keys_rotate(make: Any, any_engine: sa.Engine) -> None:
    app = make([OLD])
    _trigger(app, _Reset, "r1")
    app = make([NEW, OLD])  # the new key encrypts, the old one still decrypts
    assert app.inbox("u1").unread_count() == 1
    before = _stored(any_engine)
    assert app.reencrypt(batch=2) == 2 + 4 + 1  # notifications, deliveries, event
    assert not set(before) & set(_stored(any_engine))
    app = make([NEW])  # the old key can go
    assert app.inbox("u1").list().items[0].content["title"] == "Reset for Zanzibar"
    app = make([OLD])
    with pytest.raises(ConfigurationError, match="not in encryption_keys"):
        app.inbox("u1").list()


def test_turning_encryption_on_later_keeps_old_rows_readable(make: Any, any_engine: sa.Engine) -> None:
    app = make(None)
    _trigger(app, _Reset, "r1")
    assert any("Zanzibar" in text for text in _stored(any_engine))
    app = make([NEW])
    assert app.inbox("u1").list().items[0].content["title"] == "Reset for Zanzibar"
    app.reencrypt()
    assert not [text for text in _stored(any_engine) if any(word in text for word in PLAIN)]
    assert app.inbox("u1").list().items[0].content["title"] == "Reset for Zanzibar"


@pytest.mark.parametrize("keys", [[b"not-a-key"], [], "x" * 44])
def test_bad_keys_are_refused_naming_the_setting(tmp_path: Path, keys: Any) -> None:
    with pytest.raises(ConfigurationError, match="encryption_keys"):
        Chimeway(database_url=f"sqlite:///{tmp_path / 'k.db'}", encryption_keys=keys)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_async_callers_session_encrypts_too(sqlite_url: str, rec: RecordingChannel,
                                                     anyio_backend: str) -> None:
    # The app's own engine is not the caller's: each has its dialect to bind.
    engine = create_async_engine(sqlite_url.replace("sqlite:", "sqlite+aiosqlite:", 1))
    with Chimeway.from_async_engine(engine, channels={"rec": rec}, encryption_keys=[NEW]) as app:
        async with AsyncSession(engine) as session, session.begin():
            await app.trigger_async(session, _Reset, PARAMS, idempotency_key="a1")
        async with AsyncSession(engine) as session, session.begin():
            page = await app.inbox_async("u1", session=session).list()
        assert page.items[0].content["title"] == "Reset for Zanzibar"
        stored = _stored(app.engine)
    await engine.dispose()
    assert stored and not [text for text in stored if any(word in text for word in PLAIN)]
