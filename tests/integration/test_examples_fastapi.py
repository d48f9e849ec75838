"""The FastAPI example against a real PostgreSQL (psycopg async), through httpx's ASGI transport."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

from fastapi_app.main import create_app, prepare
from http_apps import serve_asgi

from chimeway.models import events_table

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def api(pg_empty_url: str) -> AsyncIterator[FastAPI]:
    url = make_url(pg_empty_url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    api = create_app(url)
    # httpx's ASGI transport sends no lifespan events: run the startup step here.
    await prepare(api.state.engine, api.state.chimeway)
    yield api
    api.state.chimeway.close()
    await api.state.engine.dispose()


@pytest.fixture
async def client(api: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://test") as client:
        yield client


async def _users(client: httpx.AsyncClient, *names: str) -> dict[str, int]:
    ids = {}
    for name in names:
        response = await client.post("/users", json={"username": name})
        assert response.status_code == 201, response.text
        ids[name] = response.json()["id"]
    return ids


async def _comment(client: httpx.AsyncClient, author: int, body: str) -> dict[str, Any]:
    response = await client.post("/comments", json={"author_id": author, "body": body},
                                 headers={"X-Request-ID": "req-1"})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


async def test_a_mention_lands_in_the_inbox_and_can_be_read(client: httpx.AsyncClient) -> None:
    ids = await _users(client, "alice", "bob", "carol")
    posted = await _comment(client, ids["alice"], "hi @bob and @carol, not @nobody or @alice")
    assert posted["mentioned"] == ["bob", "carol"]

    inbox = (await client.get(f"/users/{ids['bob']}/inbox")).json()
    assert inbox["unread"] == 1
    [item] = inbox["items"]
    assert item["title"] == "@alice mentioned you"
    assert item["url"] == f"/comments/{posted['id']}"
    assert (await client.get(f"/users/{ids['alice']}/inbox")).json()["items"] == []

    read = await client.post(f"/users/{ids['bob']}/inbox/{item['id']}/read")
    assert read.json() == {"changed": True}
    again = await client.post(f"/users/{ids['bob']}/inbox/{item['id']}/read")
    assert again.json() == {"changed": False}
    assert (await client.get(f"/users/{ids['bob']}/inbox")).json()["unread"] == 0
    # carol's copy is hers alone
    assert (await client.post(f"/users/{ids['carol']}/inbox/{item['id']}/read")).status_code == 404
    assert (await client.get(f"/users/{ids['carol']}/inbox")).json()["unread"] == 1


async def test_inbox_pages_with_a_cursor(client: httpx.AsyncClient) -> None:
    ids = await _users(client, "ann", "ben")
    for n in range(5):
        await _comment(client, ids["ann"], f"comment {n} for @ben")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await client.get(f"/users/{ids['ben']}/inbox", params=params)).json()
        seen += [item["body"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [f"comment {n} for @ben" for n in reversed(range(5))]
    bad = await client.get(f"/users/{ids['ben']}/inbox", params={"cursor": "not-a-cursor"})
    assert bad.status_code == 400


async def test_a_failed_request_leaves_no_notification(api: FastAPI, client: httpx.AsyncClient) -> None:
    ids = await _users(client, "dan")
    missing = await client.post("/comments", json={"author_id": 999, "body": "hey @dan"})
    assert missing.status_code == 404
    no_mentions = await _comment(client, ids["dan"], "talking to myself @dan")
    assert no_mentions["mentioned"] == [] and no_mentions["event_id"] is None
    with api.state.chimeway.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events_table)).scalar_one() == 0


async def test_a_taken_username_is_a_409_with_a_message(client: httpx.AsyncClient) -> None:
    await _users(client, "zoe")
    again = await client.post("/users", json={"username": "zoe"})
    assert again.status_code == 409
    assert again.json() == {"detail": "username 'zoe' is already taken"}
    assert (await client.post("/users", json={"username": "yan"})).status_code == 201


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Server-Sent Events from a response's lines: (event, data)."""
    event, data = "message", ""
    async for line in lines:
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            data += line[len("data: "):]
        elif line == "" and data:
            yield event, json.loads(data)
            event, data = "message", ""


async def test_an_open_event_stream_receives_a_read(api: FastAPI, client: httpx.AsyncClient) -> None:
    ids = await _users(client, "eve", "fay")
    await _comment(client, ids["eve"], "ping @fay")
    [item] = (await client.get(f"/users/{ids['fay']}/inbox")).json()["items"]
    with serve_asgi(api) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as browser, browser.stream(
            "GET", f"/users/{ids['fay']}/inbox/changes"
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = _events(response.aiter_lines())
            # A generous bound that only a broken stream reaches; reads arrive in milliseconds.
            with anyio.fail_after(10):
                assert await anext(events) == ("snapshot", {"unread": 1})
                read = await client.post(f"/users/{ids['fay']}/inbox/{item['id']}/read")
                assert read.json() == {"changed": True}
                assert await anext(events) == ("read", {"unread": 0, "id": item["id"], "read": True,
                                                        "archived": False, "title": "@eve mentioned you"})
                await _comment(client, ids["eve"], "again @fay")
                kind, data = await anext(events)
                assert (kind, data["unread"], data["read"]) == ("new", 1, False)
