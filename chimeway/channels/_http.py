"""Shared plumbing for channels that speak HTTP: one pooled client, one classifier.

``HTTPChannel``, ``classify_http`` and ``parse_retry_after`` are public as
``chimeway.channels.HTTPChannel`` etc.; this module is where they live.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC
from typing import Any

import httpx

from chimeway.channels.base import Channel
from chimeway.values import DeliveryResult

__all__ = [
    "HTTPChannel",
    "classify_http",
    "classify_transport_error",
    "json_object",
    "parse_retry_after",
]

# The largest hint a header can yield (30 days); anything above is an error
# or an attack, and timedelta arithmetic must stay finite.
RETRY_AFTER_CEILING = 30 * 24 * 3600.0

TEMPORARY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})

# Requests go out as separate header and body writes; with Nagle's algorithm
# the body waits for the peer's delayed ACK (~40 ms on Linux) on kept-alive
# connections.
NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]

# Request arguments the direct path (see ``HTTPChannel.request``) builds
# itself; anything else (``auth``, ``files``, ``cookies``...) goes through the
# client.
DIRECT_ARGS = frozenset({"content", "data", "json", "headers", "params"})


@functools.lru_cache(maxsize=1024)
def _parsed(url: str) -> httpx.URL:
    # Parsing a URL is a tenth of a request's cost; an endpoint is called many times.
    return httpx.URL(url)


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date).

    Never raises: a value that is neither (garbage, ``1e400``, a date past
    year 9999) gives ``None``, and a huge one is capped at
    :data:`RETRY_AFTER_CEILING`. The executor clamps further to the app's
    ``max_retry_after``.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except (ValueError, OverflowError):
        seconds = None
    if seconds is None:
        try:
            when = email.utils.parsedate_to_datetime(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = when.timestamp() - now()
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    if not math.isfinite(seconds):
        return RETRY_AFTER_CEILING if seconds > 0 else None
    return min(max(0.0, seconds), RETRY_AFTER_CEILING)


def classify_transport_error(exc: httpx.TransportError) -> DeliveryResult:
    """Timeouts, refused connections and protocol errors are worth retrying."""
    return DeliveryResult.temporary(
        f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
        error_class=type(exc).__name__,
    )


def classify_http(
    response: httpx.Response,
    *,
    provider_message_id: str | None = None,
    vendor_code: str | None = None,
    detail: str | None = None,
) -> DeliveryResult:
    """Map an HTTP response onto an outcome.

    2xx ⇒ succeeded; 408/425/429/5xx ⇒ temporary (``Retry-After`` honoured);
    any other status ⇒ permanent.
    """
    status = response.status_code
    if 200 <= status < 300:
        return DeliveryResult.ok(provider_message_id=provider_message_id)
    text = detail if detail is not None else _short_body(response)
    message = f"HTTP {status}: {text}" if text else f"HTTP {status}"
    if status in TEMPORARY_STATUSES or status >= 500:
        return DeliveryResult.temporary(
            message,
            error_class=f"http_{status}",
            vendor_code=vendor_code,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
    return DeliveryResult.permanent(message, error_class=f"http_{status}", vendor_code=vendor_code)


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The response body as a JSON object, or ``None`` when it is not one."""
    try:
        document = response.json()
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _short_body(response: httpx.Response, limit: int = 300) -> str:
    try:
        text = response.text
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        return ""
    text = " ".join(text.split())
    return text[:limit]


class HTTPChannel(Channel):
    """Base class for a channel that calls an HTTP API: pooled clients, classification, Retry-After.

    Subclasses implement :meth:`send` with :meth:`request` (a transport error
    comes back as a temporary ``DeliveryResult`` instead of raising) and
    :meth:`classify` (2xx succeeded; 408/425/429/5xx temporary with the
    ``Retry-After`` hint; other statuses permanent)::

        class Pager(HTTPChannel):
            required_fields = ("body",)

            def send(self, message: Message) -> DeliveryResult:
                response = self.request("POST", "/pages", json={"text": message.fields["body"]})
                if isinstance(response, DeliveryResult):
                    return response
                return self.classify(response)

    Connections are pooled per thread (``client``) and per event loop
    (``async_client``); ``close()`` releases them.

    Args:
        base_url: the provider's API root (point it at a local server in tests).
        timeout: seconds for connect/read/write/pool.
        client: an ``httpx.Client`` to use instead of creating one.
        headers: extra headers sent with every request.
        http2: speak HTTP/2 (needs the ``h2`` package: ``chimeway[apns]``).
        verify: TLS verification: ``True`` (the system's CAs), an
            ``ssl.SSLContext`` (e.g. trusting a test server's certificate).
    """

    def __init__(
        self,
        *,
        base_url: str = "",
        timeout: float = 10.0,
        client: httpx.Client | None = None,
        headers: Mapping[str, str] | None = None,
        http2: bool = False,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.http2 = http2
        self.verify = verify
        self._shared_client = client
        self._headers = dict(headers or {})
        # One client per thread when we own it: a single httpx.Client shared by
        # many worker threads serializes on its pool lock and costs about twice
        # the CPU per request.
        self._local = threading.local()
        self._owned: list[httpx.Client] = []
        self._owned_lock = threading.Lock()
        self._async_clients: dict[int, httpx.AsyncClient] = {}
        self._timeouts = httpx.Timeout(timeout).as_dict()

    @property
    def client(self) -> httpx.Client:
        """This thread's pooled ``httpx.Client`` (or the one passed as ``client=``)."""
        if self._shared_client is not None:
            return self._shared_client
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            limits = httpx.Limits(max_connections=20, max_keepalive_connections=10)
            transport = httpx.HTTPTransport(limits=limits, socket_options=NO_DELAY, http2=self.http2,
                                            verify=self.verify)
            client = httpx.Client(timeout=self.timeout, headers=self._headers, limits=limits, transport=transport)
            self._local.client = client
            self._local.transport = transport
            with self._owned_lock:
                self._owned.append(client)
        return client

    @property
    def async_client(self) -> httpx.AsyncClient:
        # An AsyncClient belongs to the event loop it was first used on.
        loop = id(asyncio.get_running_loop())
        client = self._async_clients.get(loop)
        if client is None:
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=50)
            client = httpx.AsyncClient(
                timeout=self.timeout,
                headers=self._headers,
                limits=limits,
                transport=httpx.AsyncHTTPTransport(limits=limits, socket_options=NO_DELAY, http2=self.http2,
                                                   verify=self.verify),
            )
            self._async_clients[loop] = client
        return client

    def url(self, path: str) -> str:
        """``base_url`` joined with ``path``."""
        return f"{self.base_url}{path}"

    def classify(
        self,
        response: httpx.Response,
        *,
        provider_message_id: str | None = None,
        vendor_code: str | None = None,
        detail: str | None = None,
    ) -> DeliveryResult:
        """The outcome an HTTP response means (see :func:`classify_http`).

        Args:
            response: the provider's response.
            provider_message_id: the provider's id for the message, kept on success.
            vendor_code: the provider's own error code, if it gave one.
            detail: a short explanation to record instead of the response body.
        """
        return classify_http(response, provider_message_id=provider_message_id,
                             vendor_code=vendor_code, detail=detail)

    @staticmethod
    def retry_after(response: httpx.Response) -> float | None:
        """Seconds the response's ``Retry-After`` asks to wait, or ``None`` (see :func:`parse_retry_after`)."""
        return parse_retry_after(response.headers.get("retry-after"))

    def request(self, method: str, path_or_url: str, **kwargs: Any) -> httpx.Response | DeliveryResult:
        """Make one request; a transport error comes back as a temporary result.

        The response is read in full and closed. A request with only
        ``content``, ``data``, ``json``, ``headers`` and ``params`` goes
        straight to this thread's connection pool, with the client's headers:
        no cookie jar (a provider's ``Set-Cookie`` is never sent back, so one
        recipient's endpoint cannot plant state in another's requests), no
        redirects (never followed, as with the client), no auth flow. That
        halves the per-request cost of httpx. Other arguments, and a
        ``client=`` passed in, go through ``httpx.Client.request``.
        """
        url = path_or_url if "://" in path_or_url else self.url(path_or_url)
        try:
            if self._shared_client is None and kwargs.keys() <= DIRECT_ARGS:
                return self._direct(method, url, kwargs)
            return self.client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            return classify_transport_error(exc)

    def _direct(self, method: str, url: str, kwargs: dict[str, Any]) -> httpx.Response:
        client = self.client
        transport: httpx.HTTPTransport = self._local.transport
        headers = client.headers
        extra = kwargs.pop("headers", None)
        if extra:
            headers = headers.copy()
            headers.update(extra)
        request = httpx.Request(method, _parsed(url), headers=headers, extensions={"timeout": self._timeouts}, **kwargs)
        response = transport.handle_request(request)
        try:
            response.read()
        finally:
            response.close()
        response.request = request
        return response

    async def request_async(
        self, method: str, path_or_url: str, **kwargs: Any
    ) -> httpx.Response | DeliveryResult:
        """Async twin of :meth:`request` over a pooled ``httpx.AsyncClient``."""
        url = path_or_url if "://" in path_or_url else self.url(path_or_url)
        try:
            return await self.async_client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            return classify_transport_error(exc)

    def close(self) -> None:
        with self._owned_lock:
            owned, self._owned = self._owned, []
        for client in owned:
            client.close()
        self._local = threading.local()
        # Async clients can only be closed on their own loop; dropping them
        # releases their sockets.
        self._async_clients.clear()
