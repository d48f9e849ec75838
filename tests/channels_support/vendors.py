"""Local fakes of the vendors' HTTP APIs, answering with their real bodies."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import secrets
import threading
import time
from collections import deque
from typing import Any

import jwt

from channels_support.server import FakeServer, Recorded, Reply

# -- Standard Webhooks receiver ------------------------------------------------


class FakeWebhookReceiver(FakeServer):
    """An endpoint that verifies Standard Webhooks signatures on its own.

    The check is written here independently of ``chimeway.channels.webhook``
    so a mistake in the channel's signing cannot hide behind the same code.
    """

    path = "/hooks/chimeway"

    def __init__(self, key: bytes | None) -> None:
        super().__init__()
        self.key = key

    @property
    def url(self) -> str:
        return self.base_url + self.path

    def check(self, request: Recorded) -> Reply | None:
        if request.method != "POST" or request.path != self.path:
            self.problem(f"unexpected {request.method} {request.path}")
            return Reply(404, "not found")
        if not request.headers.get("content-type", "").startswith("application/json"):
            self.problem("content-type is not application/json")
            return Reply(415, "unsupported media type")
        if self.key is None:
            return None
        msg_id = request.headers.get("webhook-id", "")
        ts = request.headers.get("webhook-timestamp", "")
        signatures = request.headers.get("webhook-signature", "").split()
        signed = f"{msg_id}.{ts}.".encode() + request.body
        expected = (
            "v1," + base64.b64encode(hmac.new(self.key, signed, hashlib.sha256).digest()).decode()
        )
        if not msg_id or not ts.isdigit() or expected not in signatures:
            self.problem("bad or missing webhook signature")
            return Reply(401, {"error": "invalid signature"})
        if abs(time.time() - int(ts)) > 300:
            self.problem("stale webhook-timestamp")
            return Reply(401, {"error": "stale timestamp"})
        return None

    def handle(self, request: Recorded) -> Reply:
        return Reply(204)


# -- Slack ---------------------------------------------------------------------


class FakeSlack(FakeServer):
    """Incoming webhooks under ``/services/...`` and the Web API under ``/api``."""

    hook_path = "/services/T0001/B0001/hooksecretXYZ123"
    token = "xoxb-test-secret-token"

    def __init__(self) -> None:
        super().__init__()
        self._ts = itertools.count(1)

    @property
    def webhook_url(self) -> str:
        return self.base_url + self.hook_path

    @property
    def api_url(self) -> str:
        return self.base_url + "/api"

    def check(self, request: Recorded) -> Reply | None:
        if request.method != "POST":
            self.problem(f"{request.method} instead of POST")
            return Reply(405, "invalid_method")
        if not request.headers.get("content-type", "").startswith("application/json"):
            self.problem("content-type is not application/json")
            return Reply(400, "invalid_payload")
        if request.path.startswith("/services/"):
            if request.path != self.hook_path:
                return Reply(404, "no_service")
            body = request.json()
            if not body.get("text") and not body.get("blocks"):
                self.problem("webhook body without text or blocks")
                return Reply(400, "no_text")
            return None
        if request.path == "/api/chat.postMessage":
            auth = request.headers.get("authorization")
            if not auth:
                return Reply(200, {"ok": False, "error": "not_authed"})
            if auth != f"Bearer {self.token}":
                return Reply(200, {"ok": False, "error": "invalid_auth"})
            body = request.json()
            if not body.get("channel"):
                self.problem("chat.postMessage without channel")
                return Reply(200, {"ok": False, "error": "channel_not_found"})
            if not body.get("text") and not body.get("blocks"):
                self.problem("chat.postMessage without text or blocks")
                return Reply(200, {"ok": False, "error": "no_text"})
            return None
        self.problem(f"unexpected path {request.path}")
        return Reply(404, {"ok": False, "error": "unknown_method"})

    def handle(self, request: Recorded) -> Reply:
        if request.path.startswith("/services/"):
            return Reply(200, "ok", {"Content-Type": "text/html"})
        body = request.json()
        ts = f"1503435956.{next(self._ts):06d}"
        return Reply(
            200,
            {
                "ok": True,
                "channel": body["channel"],
                "ts": ts,
                "message": {"type": "message", "text": body.get("text", ""), "ts": ts},
            },
        )


# -- Discord -------------------------------------------------------------------


class FakeDiscord(FakeServer):
    """``POST /api/webhooks/{id}/{token}`` with Discord's JSON errors."""

    webhook_id = "1234567890"
    webhook_token = "discord-hook-secret-abc"

    def __init__(self) -> None:
        super().__init__()
        self._ids = itertools.count(1100000000000000000)

    @property
    def webhook_url(self) -> str:
        return f"{self.base_url}/api/webhooks/{self.webhook_id}/{self.webhook_token}"

    def check(self, request: Recorded) -> Reply | None:
        parts = request.path.strip("/").split("/")
        if request.method != "POST" or len(parts) != 4 or parts[:2] != ["api", "webhooks"]:
            self.problem(f"unexpected {request.method} {request.path}")
            return Reply(404, {"message": "404: Not Found", "code": 0})
        if parts[2] != self.webhook_id:
            return Reply(404, {"message": "Unknown Webhook", "code": 10015})
        if parts[3] != self.webhook_token:
            return Reply(401, {"message": "Invalid Webhook Token", "code": 50027})
        if request.query.get("wait") != ["true"]:
            self.problem("wait=true missing: no message id would come back")
        if not request.headers.get("content-type", "").startswith("application/json"):
            self.problem("content-type is not application/json")
            return Reply(400, {"message": "Cannot send an empty message", "code": 50006})
        if not str(request.json().get("content", "")).strip():
            return Reply(400, {"message": "Cannot send an empty message", "code": 50006})
        return None

    def handle(self, request: Recorded) -> Reply:
        body = request.json()
        return Reply(
            200,
            {
                "id": str(next(self._ids)),
                "type": 0,
                "content": body["content"],
                "channel_id": "9876543210",
                "webhook_id": self.webhook_id,
                "author": {
                    "id": self.webhook_id,
                    "username": body.get("username", "Hook"),
                    "bot": True,
                },
                "timestamp": "2026-11-22T06:00:00.000000+00:00",
            },
        )


def discord_rate_limited(retry_after: float) -> Reply:
    return Reply(
        429,
        {"message": "You are being rate limited.", "retry_after": retry_after, "global": False},
        {"Retry-After": str(int(retry_after) + 1), "X-RateLimit-Scope": "user"},
    )


# -- Teams (Workflows) ---------------------------------------------------------


class FakeTeams(FakeServer):
    """A Power Automate HTTP trigger: signed URL, Adaptive Card body, 202."""

    flow_path = "/workflows/4f1c0e2a/triggers/manual/paths/invoke"
    sig = "teams-sig-secret-QWERTY"

    @property
    def webhook_url(self) -> str:
        return (
            f"{self.base_url}{self.flow_path}?api-version=1&sp=%2Ftriggers%2Fmanual%2Frun"
            f"&sv=1.0&sig={self.sig}"
        )

    def check(self, request: Recorded) -> Reply | None:
        if request.method != "POST" or request.path != self.flow_path:
            self.problem(f"unexpected {request.method} {request.path}")
            return Reply(
                404,
                {"error": {"code": "WorkflowNotFound", "message": "The workflow was not found."}},
            )
        if request.query.get("sig") != [self.sig]:
            return Reply(
                401,
                {
                    "error": {
                        "code": "DirectApiAuthorizationRequired",
                        "message": "The request must be authenticated only by Shared Access scheme.",
                    }
                },
            )
        if not request.headers.get("content-type", "").startswith("application/json"):
            self.problem("content-type is not application/json")
        body = request.json()
        attachments = body.get("attachments") if isinstance(body, dict) else None
        ok = (
            body.get("type") == "message"
            and isinstance(attachments, list)
            and len(attachments) == 1
            and attachments[0].get("contentType") == "application/vnd.microsoft.card.adaptive"
            and attachments[0].get("content", {}).get("type") == "AdaptiveCard"
            and isinstance(attachments[0]["content"].get("body"), list)
        )
        if not ok:
            self.problem("body is not a message with one adaptive card")
            return Reply(
                400,
                {
                    "error": {
                        "code": "TriggerInputSchemaMismatch",
                        "message": "The input body for trigger 'manual' of type 'Request' did not match its schema definition.",
                    }
                },
            )
        return None

    def handle(self, request: Recorded) -> Reply:
        return Reply(202, b"", {"x-ms-workflow-run-id": secrets.token_hex(8)})


# -- Twilio --------------------------------------------------------------------


def twilio_error(
    code: int, message: str, status: int, headers: dict[str, str] | None = None
) -> Reply:
    return Reply(
        status,
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        headers or {},
    )


class FakeTwilio(FakeServer):
    """``POST /2010-04-01/Accounts/{sid}/Messages.json`` with basic auth."""

    account_sid = "AC" + "0" * 31 + "1"
    auth_token = "twilio-auth-secret-0123456789"

    def __init__(self) -> None:
        super().__init__()
        self._n = itertools.count(1)

    @property
    def messages_path(self) -> str:
        return f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"

    def check(self, request: Recorded) -> Reply | None:
        if request.method != "POST" or request.path != self.messages_path:
            self.problem(f"unexpected {request.method} {request.path}")
            return twilio_error(20404, "The requested resource was not found", 404)
        expected = (
            "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        )
        if request.headers.get("authorization") != expected:
            return twilio_error(20003, "Authenticate", 401)
        if request.headers.get("content-type") != "application/x-www-form-urlencoded":
            self.problem(f"content-type {request.headers.get('content-type')!r}")
        form = request.form()
        to = form.get("To", "")
        if not (to.startswith("+") and to[1:].isdigit()):
            return twilio_error(21211, f"The 'To' number {to} is not a valid phone number.", 400)
        if not form.get("From") and not form.get("MessagingServiceSid"):
            self.problem("neither From nor MessagingServiceSid")
            return twilio_error(21603, "The 'From' phone number is required.", 400)
        if not form.get("Body"):
            return twilio_error(21602, "Message body is required.", 400)
        return None

    def handle(self, request: Recorded) -> Reply:
        form = request.form()
        sid = f"SM{next(self._n):032x}"
        return Reply(
            201,
            {
                "account_sid": self.account_sid,
                "api_version": "2010-04-01",
                "body": form["Body"],
                "date_created": "Sun, 22 Nov 2026 06:00:00 +0000",
                "direction": "outbound-api",
                "error_code": None,
                "error_message": None,
                "from": form.get("From"),
                "messaging_service_sid": form.get("MessagingServiceSid"),
                "num_segments": "1",
                "price": None,
                "sid": sid,
                "status": "queued",
                "to": form["To"],
                "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
            },
        )


# -- FCM -----------------------------------------------------------------------


def fcm_error(
    http: int,
    status: str,
    message: str,
    fcm_code: str | None,
    headers: dict[str, str] | None = None,
) -> Reply:
    error: dict[str, Any] = {"code": http, "message": message, "status": status}
    if fcm_code:
        error["details"] = [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": fcm_code}
        ]
    return Reply(http, {"error": error}, headers or {})


class FakeFcm(FakeServer):
    """Google's token endpoint (``/token``) and FCM's ``messages:send``.

    The token endpoint verifies the RS256 assertion against the service
    account's public key, issuer, audience and scope before issuing a token.
    """

    scope = "https://www.googleapis.com/auth/firebase.messaging"

    def __init__(self, project_id: str, client_email: str, public_key: Any) -> None:
        super().__init__()
        self.project_id = project_id
        self.client_email = client_email
        self.public_key = public_key
        self.expires_in = 3599
        self.unregistered: set[str] = set()
        self.token_requests = 0
        self.token_replies: deque[Reply] = deque()
        self._valid: set[str] = set()
        self._tlock = threading.Lock()
        self._n = itertools.count(1)

    @property
    def token_url(self) -> str:
        return self.base_url + "/token"

    def revoke_tokens(self) -> None:
        """Make every issued access token answer 401, as after a key rotation."""
        with self._tlock:
            self._valid.clear()

    def check(self, request: Recorded) -> Reply | None:
        if request.method != "POST":
            self.problem(f"{request.method} {request.path}")
            return Reply(405, "method not allowed")
        if request.path == "/token":
            return self._token(request)
        if request.path != f"/v1/projects/{self.project_id}/messages:send":
            self.problem(f"unexpected path {request.path}")
            return fcm_error(404, "NOT_FOUND", "Requested entity was not found.", None)
        auth = request.headers.get("authorization", "")
        with self._tlock:
            valid = auth.startswith("Bearer ") and auth[7:] in self._valid
        if not valid:
            return fcm_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
                None,
            )
        body = request.json()
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("token"), str):
            self.problem("message.token missing")
            return fcm_error(
                400, "INVALID_ARGUMENT", "Recipient of the message is not set.", "INVALID_ARGUMENT"
            )
        data = message.get("data", {})
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            self.problem("data values must be strings")
            return fcm_error(
                400, "INVALID_ARGUMENT", "Invalid JSON payload received.", "INVALID_ARGUMENT"
            )
        if message["token"] in self.unregistered:
            return fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
        return None

    def _token(self, request: Recorded) -> Reply:
        form = request.form()
        self.token_requests += 1
        if self.token_replies:
            return self.token_replies.popleft()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            self.problem("wrong grant_type")
            return Reply(
                400,
                {"error": "unsupported_grant_type", "error_description": "Invalid grant_type: "},
            )
        try:
            claims = jwt.decode(
                form.get("assertion", ""),
                self.public_key,
                algorithms=["RS256"],
                audience=self.token_url,
            )
        except jwt.PyJWTError:
            return Reply(
                400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            )
        if claims.get("iss") != self.client_email or claims.get("scope") != self.scope:
            self.problem(f"assertion claims {claims}")
            return Reply(
                400,
                {
                    "error": "invalid_scope",
                    "error_description": "Invalid OAuth scope or ID token audience provided.",
                },
            )
        if claims["exp"] - claims["iat"] > 3600:
            self.problem("assertion lives longer than an hour")
        token = "ya29." + secrets.token_urlsafe(24)
        with self._tlock:
            self._valid.add(token)
        return Reply(
            200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}
        )

    def handle(self, request: Recorded) -> Reply:
        return Reply(
            200,
            {
                "name": f"projects/{self.project_id}/messages/0:{next(self._n):016x}%31bd1c9631bd1c96"
            },
        )
