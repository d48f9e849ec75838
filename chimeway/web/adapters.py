"""Serving the dashboard under WSGI (Flask, Django, any WSGI server) and ASGI (FastAPI, Starlette, Litestar)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from chimeway.web.http import MAX_BODY, REASONS, Request, Response

__all__ = ["asgi_call", "wsgi_call"]

Handler = Callable[[Request], Response]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _too_big() -> Response:
    return Response.text("request body too large", 413)


def wsgi_call(handle: Handler, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer one WSGI request with ``handle``."""
    headers = {
        key[5:].replace("_", "-").lower(): str(value)
        for key, value in environ.items() if key.startswith("HTTP_")
    }
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = str(environ[key])
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if length > MAX_BODY or length < 0:
        response = _too_big()
    else:
        body = environ["wsgi.input"].read(length) if length else b""
        path = environ.get("PATH_INFO", "") or "/"
        # PEP 3333 hands the path over as latin-1 decoded bytes.
        path = path.encode("latin-1").decode("utf-8", "replace")
        response = handle(Request(
            method=str(environ.get("REQUEST_METHOD", "GET")).upper(), path=path,
            root=str(environ.get("SCRIPT_NAME", "")).rstrip("/"),
            query_string=str(environ.get("QUERY_STRING", "")), headers=headers, body=body,
            client=environ.get("REMOTE_ADDR"), environ=environ,
        ))
    start_response(f"{response.status} {REASONS.get(response.status, '')}".strip(), response.headers)
    return [response.body]


async def asgi_call(handle: Handler, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one ASGI HTTP request with ``handle``, run off the event loop (it uses blocking I/O)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = b""
    too_big = False
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            too_big = True
        if not message.get("more_body"):
            break
    if too_big:
        response = _too_big()
    else:
        root = str(scope.get("root_path", "")).rstrip("/")
        path = str(scope.get("path", "/"))
        # Starlette's Mount keeps the full path in scope["path"] and the prefix in root_path.
        if (root and path.startswith(root + "/")) or path == root:
            path = path[len(root):]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        client = scope.get("client")
        request = Request(
            method=str(scope.get("method", "GET")).upper(), path=path or "/", root=root,
            query_string=bytes(scope.get("query_string", b"")).decode("latin-1"), headers=headers,
            body=body, client=str(client[0]) if client else None, scope=scope,
        )
        response = await asyncio.get_running_loop().run_in_executor(None, handle, request)
    await send({"type": "http.response.start", "status": response.status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]})
    await send({"type": "http.response.body", "body": response.body})
