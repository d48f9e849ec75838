"""A local APNs: HTTP/2 over TLS on 127.0.0.1, speaking Apple's wire format.

It accepts only HTTP/2 (ALPN ``h2``, as APNs does), checks each request the
way APNs does (``POST /3/device/<token>``, a bearer JWT signed ES256 with
the team's key, ``apns-topic``, ``apns-push-type``, a JSON body with
``aps``) and answers with APNs's statuses and ``{"reason": ...}`` bodies. The
device token chooses the answer:

- ``bad…`` → 400 ``BadDeviceToken``; ``gone…`` → 410 ``Unregistered``;
- ``busy…`` → 429 ``TooManyRequests`` with ``Retry-After: 120``;
- ``down…`` → 503 ``ServiceUnavailable``; ``oops…`` → 500 ``InternalServerError``;
- ``topic…`` → 400 ``DeviceTokenNotForTopic``;
- anything else → 200 with ``apns-id``.

A token listed in ``expired`` is answered 403 ``ExpiredProviderToken``.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from email_support.certs import TLSPair, self_signed

__all__ = ["ApnsRequest", "FakeApns"]

ANSWERS = {
    "bad": (400, "BadDeviceToken", {}),
    "gone": (410, "Unregistered", {}),
    "busy": (429, "TooManyRequests", {"retry-after": "120"}),
    "down": (503, "ServiceUnavailable", {}),
    "oops": (500, "InternalServerError", {}),
    "topic": (400, "DeviceTokenNotForTopic", {}),
}


@dataclass
class ApnsRequest:
    """One HTTP/2 request as the fake received it."""

    headers: dict[str, str]
    body: bytes
    connection: int
    stream_id: int
    token: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.headers.get(":path", "")

    def json(self) -> Any:
        return json.loads(self.body)


class FakeApns:
    """APNs on 127.0.0.1 over HTTP/2 + TLS; ``tls.client`` trusts its certificate.

    Args:
        public_key: the team key's public half (checks the JWT's signature).
        team_id / key_id / topic: what the tokens and requests must carry.
    """

    def __init__(self, public_key: EllipticCurvePublicKey, *, team_id: str, key_id: str, topic: str) -> None:
        self.public_key = public_key
        self.team_id = team_id
        self.key_id = key_id
        self.topic = topic
        self.tls: TLSPair = self_signed()
        self.tls.server.set_alpn_protocols(["h2"])
        self.requests: list[ApnsRequest] = []
        self.problems: list[str] = []
        self.expired: set[str] = set()
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="fake-apns")
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> FakeApns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the wire ---------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            raw.settimeout(10)
            sock = self.tls.server.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        with self._lock:
            self.connections += 1
            number = self.connections
        if sock.selected_alpn_protocol() != "h2":
            self.problems.append(f"connection {number} did not negotiate HTTP/2")
            sock.close()
            return
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        try:
            sock.sendall(conn.data_to_send())
            while not self._stop.is_set():
                try:
                    data = sock.recv(65535)
                except TimeoutError:
                    continue
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        streams[event.stream_id] = ({str(k): str(v) for k, v in event.headers}, bytearray())
                    elif isinstance(event, h2.events.DataReceived):
                        streams[event.stream_id][1].extend(event.data)
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        headers, body = streams.pop(event.stream_id)
                        request = ApnsRequest(headers=headers, body=bytes(body), connection=number,
                                              stream_id=event.stream_id)
                        self._respond(conn, event.stream_id, request)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        return
                sock.sendall(conn.data_to_send())
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        finally:
            sock.close()

    def _respond(self, conn: h2.connection.H2Connection, stream_id: int, request: ApnsRequest) -> None:
        status, reason, extra = self._answer(request)
        with self._lock:
            self.requests.append(request)
        apns_id = request.headers.get("apns-id") or str(uuid.uuid4())
        headers = [(":status", str(status)), ("apns-id", apns_id), *extra.items()]
        if reason is None:
            conn.send_headers(stream_id, headers, end_stream=True)
            return
        document: dict[str, Any] = {"reason": reason}
        if reason == "Unregistered":
            document["timestamp"] = int(time.time() * 1000)
        body = json.dumps(document).encode()
        conn.send_headers(stream_id, [*headers, ("content-type", "application/json"),
                                      ("content-length", str(len(body)))])
        conn.send_data(stream_id, body, end_stream=True)

    def _answer(self, request: ApnsRequest) -> tuple[int, str | None, dict[str, str]]:
        h = request.headers
        if h.get(":method") != "POST":
            return 405, "MethodNotAllowed", {}
        if not request.path.startswith("/3/device/"):
            return 404, "BadPath", {}
        device = request.path.removeprefix("/3/device/")
        auth = h.get("authorization", "")
        if not auth.startswith("bearer "):
            return 403, "MissingProviderToken", {}
        request.token = auth.removeprefix("bearer ")
        try:
            header = jwt.get_unverified_header(request.token)
            request.claims = jwt.decode(request.token, self.public_key, algorithms=["ES256"],
                                        options={"require": ["iss", "iat"]})
        except jwt.PyJWTError:
            return 403, "InvalidProviderToken", {}
        if header.get("kid") != self.key_id or request.claims.get("iss") != self.team_id:
            return 403, "InvalidProviderToken", {}
        if request.token in self.expired:
            return 403, "ExpiredProviderToken", {}
        if h.get("apns-topic") != self.topic:
            return 400, "BadTopic" if h.get("apns-topic") else "MissingTopic", {}
        if h.get("apns-push-type") not in ("alert", "background"):
            return 400, "InvalidPushType", {}
        try:
            uuid.UUID(h.get("apns-id", ""))
            payload = request.json()
        except ValueError:
            return 400, "BadMessageId" if "apns-id" in h else "PayloadEmpty", {}
        if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            self.problems.append(f"stream {request.stream_id}: no aps dictionary")
            return 400, "PayloadEmpty", {}
        if len(request.body) > 4096:
            return 413, "PayloadTooLarge", {}
        for prefix, (status, reason, extra) in ANSWERS.items():
            if device.startswith(prefix):
                return status, reason, extra
        return 200, None, {}
