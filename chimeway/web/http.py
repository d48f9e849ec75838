"""The dashboard's own small request and response types, shared by the WSGI and ASGI adapters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlencode

__all__ = ["MAX_BODY", "Request", "Response"]

MAX_BODY = 1_000_000


@dataclass(kw_only=True)
class Request:
    """One request to the dashboard, whatever server or framework it came through.

    ``authorize(request)`` hooks read ``headers``, ``cookies``, ``client`` and,
    for framework state (a logged-in user, a session), ``scope`` (ASGI) or
    ``environ`` (WSGI).

    Args:
        method: ``GET``, ``POST``, ...
        path: the path inside the dashboard, starting with ``/``.
        root: where the dashboard is mounted (``""`` at the site root).
        query_string: the raw query string.
        headers: header names in lower case.
        body: the request body (at most :data:`MAX_BODY` bytes are read).
        client: the client's address, when the server says.
        scope: the ASGI scope, under ASGI.
        environ: the WSGI environ, under WSGI.
    """

    method: str
    path: str
    root: str = ""
    query_string: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    client: str | None = None
    scope: Mapping[str, Any] | None = None
    environ: Mapping[str, Any] | None = None
    role: str | None = None

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.query_string, keep_blank_values=True)

    @property
    def form(self) -> dict[str, list[str]]:
        kind = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if self.method != "POST" or kind != "application/x-www-form-urlencoded":
            return {}
        return parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)

    @property
    def cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(self.headers.get("cookie", ""))
        except CookieError:
            return {}
        return {key: morsel.value for key, morsel in jar.items()}

    def arg(self, name: str) -> str | None:
        """A query parameter, stripped; ``None`` when missing or blank."""
        values = self.query.get(name)
        value = values[0].strip() if values else ""
        return value or None

    def field(self, name: str) -> str | None:
        """A form field, stripped; ``None`` when missing or blank."""
        values = self.form.get(name)
        value = values[0].strip() if values else ""
        return value or None

    def url(self, path: str, **params: Any) -> str:
        """An absolute path inside the dashboard, with the non-empty ``params``."""
        query = urlencode({k: v for k, v in params.items() if v not in (None, "")}, doseq=True)
        return self.root + path + (f"?{query}" if query else "")


@dataclass(kw_only=True)
class Response:
    """What the dashboard answers: status, headers and body."""

    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def html(cls, text: str, status: int = 200) -> Response:
        return cls(status=status, body=text.encode("utf-8"),
                   headers=[("content-type", "text/html; charset=utf-8")])

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status=status, body=text.encode("utf-8"),
                   headers=[("content-type", "text/plain; charset=utf-8")])

    @classmethod
    def redirect(cls, location: str) -> Response:
        # 303: the browser follows a POST's answer with a GET.
        return cls(status=303, headers=[("location", location)])

    def header(self, name: str, value: str) -> Response:
        self.headers.append((name, value))
        return self


REASONS = {200: "OK", 303: "See Other", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
           500: "Internal Server Error"}
