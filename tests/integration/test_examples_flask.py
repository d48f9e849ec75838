"""The Flask example on Flask-SQLAlchemy's session, on PostgreSQL and SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

from flask_app.main import create_app, db, init_db

from chimeway.models import events_table


@pytest.fixture(params=["sqlite", "postgres"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Flask]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'mentions.db'}"
    else:
        url = str(request.getfixturevalue("pg_empty_url"))
    app = create_app(url)
    app.config["TESTING"] = True
    with app.app_context():
        init_db()
    yield app
    with app.app_context():
        app.extensions["chimeway"].close()
        db.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _users(client: FlaskClient, *names: str) -> dict[str, int]:
    ids = {}
    for name in names:
        response = client.post("/users", json={"username": name})
        assert response.status_code == 201, response.text
        ids[name] = response.get_json()["id"]
    return ids


def _comment(client: FlaskClient, author: int, body: str) -> dict[str, Any]:
    response = client.post("/comments", json={"author_id": author, "body": body})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.get_json()
    return data


def test_a_mention_lands_in_the_inbox_and_can_be_read(client: FlaskClient) -> None:
    ids = _users(client, "alice", "bob", "carol")
    posted = _comment(client, ids["alice"], "hi @bob and @carol, not @nobody or @alice")
    assert posted["mentioned"] == ["bob", "carol"]

    inbox = client.get(f"/users/{ids['bob']}/inbox").get_json()
    assert inbox["unread"] == 1
    [item] = inbox["items"]
    assert item["title"] == "@alice mentioned you"
    assert item["url"] == f"/comments/{posted['id']}"
    assert client.get(f"/users/{ids['alice']}/inbox").get_json()["items"] == []

    assert client.post(f"/users/{ids['bob']}/inbox/{item['id']}/read").get_json() == {"changed": True}
    assert client.post(f"/users/{ids['bob']}/inbox/{item['id']}/read").get_json() == {"changed": False}
    assert client.get(f"/users/{ids['bob']}/inbox").get_json()["unread"] == 0
    assert client.post(f"/users/{ids['carol']}/inbox/{item['id']}/read").status_code == 404
    assert client.get(f"/users/{ids['carol']}/inbox").get_json()["unread"] == 1


def test_inbox_pages_with_a_cursor(client: FlaskClient) -> None:
    ids = _users(client, "ann", "ben")
    for n in range(5):
        _comment(client, ids["ann"], f"comment {n} for @ben")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get(f"/users/{ids['ben']}/inbox", query_string=query).get_json()
        seen += [item["body"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [f"comment {n} for @ben" for n in reversed(range(5))]
    assert client.get(f"/users/{ids['ben']}/inbox", query_string={"cursor": "x"}).status_code == 400


def test_a_request_that_fails_after_the_trigger_leaves_nothing(app: Flask, client: FlaskClient) -> None:
    ids = _users(client, "dan", "eve")

    # The commit fails after the trigger ran: the request's session rolls back.
    original = db.session.commit
    calls: list[int] = []

    def failing_commit() -> None:
        calls.append(1)
        raise RuntimeError("the database went away")

    db.session.commit = failing_commit  # type: ignore[method-assign]
    try:
        app.config["PROPAGATE_EXCEPTIONS"] = False
        response = client.post("/comments", json={"author_id": ids["dan"], "body": "hey @eve"})
    finally:
        db.session.commit = original  # type: ignore[method-assign]
    assert response.status_code == 500 and calls
    assert client.get(f"/users/{ids['eve']}/inbox").get_json()["items"] == []
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(events_table)) == 0


def test_a_taken_username_is_a_409_with_a_message(client: FlaskClient) -> None:
    _users(client, "zoe")
    again = client.post("/users", json={"username": "zoe"})
    assert again.status_code == 409
    assert again.get_json() == {"error": "username 'zoe' is already taken"}
    # The session was rolled back: the next request works.
    assert client.post("/users", json={"username": "yan"}).status_code == 201


def test_init_db_says_what_it_did_and_keeps_the_file_where_it_is_run(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "flask_app.main:create_app", "init-db"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(examples), "DATABASE_URL": "sqlite:///mentions.db"},
    )
    assert done.returncode == 0, done.stderr
    database = tmp_path / "mentions.db"
    assert done.stdout.strip() == (
        f"Created the example's tables and migrated Chimeway's in sqlite:///{database}")
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        assert {"example_users", "chimeway_events"} <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
