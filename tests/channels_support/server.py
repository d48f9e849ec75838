"""A recording HTTP server on 127.0.0.1 that vendor fakes build on.

Each fake is a real ``ThreadingHTTPServer`` in a daemon thread, speaking
HTTP/1.1 with keep-alive so pooled clients reuse connections as they would
against the vendor. A fake checks what it receives (method, path, auth,
content type, body shape) and answers with the vendor's own success or error
bodies; anything it had to reject for shape is also listed in ``problems`` so
a test can assert the channel spoke the wire format correctly.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit


@dataclass
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    raw_path: str = ""

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


@dataclass
class Reply:
    """What the fake answers."""

    status: int
    body: bytes | str | Mapping[str, Any] | list[Any] = b""
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if isinstance(self.body, Mapping | list):
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
            return json.dumps(self.body).encode(), headers
        if isinstance(self.body, str):
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
            return self.body.encode(), headers
        return self.body, headers


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # 50 client threads open connections at once; the default backlog of 5 drops some.
    request_queue_size = 256
    fake: FakeServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; without TCP_NODELAY the
    # second waits on the client's delayed ACK (about 40 ms per request).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        request = Recorded(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            raw_path=self.path,
        )
        reply = self.server.fake.dispatch(request)
        payload, headers = reply.encoded()
        try:
            self.send_response(reply.status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (timeout tests); nothing to answer.
            self.close_connection = True

    do_POST = do_GET = do_PUT = do_DELETE = _dispatch


class FakeServer:
    """Base class: records requests, plays queued replies, else asks :meth:`handle`.

    Attributes:
        requests: every request received, in order (unless ``record`` is off).
        problems: wire-format mistakes the fake noticed.
        delay: seconds to sleep before answering (timeout tests).
    """

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.problems: list[str] = []
        self.delay = 0.0
        self.record = True
        self._queued: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def enqueue(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies`` (after the fake's own checks)."""
        with self._lock:
            self._queued.extend(replies)

    def problem(self, text: str) -> None:
        with self._lock:
            self.problems.append(text)

    def dispatch(self, request: Recorded) -> Reply:
        if self.record:
            with self._lock:
                self.requests.append(request)
        if self.delay:
            time.sleep(self.delay)
        rejected = self.check(request)
        if rejected is not None:
            return rejected
        with self._lock:
            queued = self._queued.popleft() if self._queued else None
        return queued if queued is not None else self.handle(request)

    def check(self, request: Recorded) -> Reply | None:
        """Vendor checks on auth and shape; a reply here wins over queued replies."""
        return None

    def handle(self, request: Recorded) -> Reply:
        return Reply(200, "ok")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def running(fake: FakeServer) -> Iterator[FakeServer]:
    """Generator helper for pytest fixtures: yield the fake, close it after."""
    try:
        yield fake
    finally:
        fake.close()
