"""Fakes of Postmark, SendGrid and Resend, answering as the real APIs do.

Request and error shapes follow the vendors' published API references:

* Postmark ``POST /email``: ``X-Postmark-Server-Token``; 200 with
  ``{"To", "SubmittedAt", "MessageID", "ErrorCode": 0, "Message": "OK"}``;
  401 with ErrorCode 10 for a bad token; 422 with ErrorCode 300 (invalid
  request) or 406 (inactive recipient).
* SendGrid ``POST /v3/mail/send``: Bearer key; 202 with an empty body and
  ``X-Message-Id``; 400 with ``{"errors": [{"message", "field", "help"}]}``;
  401 for a bad key.
* Resend ``POST /emails``: Bearer key; 200 with ``{"id"}``; errors as
  ``{"statusCode", "name", "message"}`` (401 ``missing_api_key``, 403
  ``invalid_api_key``, 422 ``validation_error``, 429 ``rate_limit_exceeded``).
  A repeated ``Idempotency-Key`` returns the first response.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from email_support.http import FakeHTTP, Reply, Request


def _is_json(request: Request) -> bool:
    return (request.header("content-type") or "").startswith("application/json")


class FakePostmark(FakeHTTP):
    """Postmark's single-email endpoint."""

    def __init__(self, token: str = "pm-server-token") -> None:
        self.token = token
        self.inactive: set[str] = set()
        self.sent: list[dict[str, Any]] = []
        super().__init__()

    def answer(self, request: Request) -> Reply:
        if request.method != "POST" or request.path != "/email":
            return Reply(404, {"ErrorCode": 404, "Message": "Not found"})
        if request.header("x-postmark-server-token") != self.token:
            return Reply(
                401,
                {"ErrorCode": 10, "Message": "Request does not contain a valid Server token."},
            )
        if not _is_json(request):
            return Reply(415, {"ErrorCode": 409, "Message": "JSON data required."})
        body = request.json()
        missing = [k for k in ("From", "To", "Subject") if not body.get(k)]
        if missing or not (body.get("TextBody") or body.get("HtmlBody")):
            return Reply(
                422,
                {
                    "ErrorCode": 300,
                    "Message": f"Invalid email request: missing {missing or 'body'}",
                },
            )
        headers = body.get("Headers", [])
        if not isinstance(headers, list) or not all(set(h) == {"Name", "Value"} for h in headers):
            return Reply(422, {"ErrorCode": 300, "Message": "Invalid 'Headers' value."})
        metadata = body.get("Metadata", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            return Reply(422, {"ErrorCode": 300, "Message": "Invalid 'Metadata' value."})
        if any(address in body["To"] for address in self.inactive):
            return Reply(
                422,
                {
                    "ErrorCode": 406,
                    "Message": "You tried to send to a recipient that has been marked as inactive.",
                },
            )
        self.sent.append(body)
        return Reply(
            200,
            {
                "To": body["To"],
                "SubmittedAt": datetime.now(UTC).isoformat(),
                "MessageID": str(uuid.uuid4()),
                "ErrorCode": 0,
                "Message": "OK",
            },
        )


class FakeSendGrid(FakeHTTP):
    """SendGrid's v3 mail send endpoint."""

    def __init__(self, api_key: str = "SG.test-key") -> None:
        self.api_key = api_key
        self.sent: list[dict[str, Any]] = []
        super().__init__()

    @staticmethod
    def _error(message: str, field: str | None) -> Reply:
        return Reply(400, {"errors": [{"message": message, "field": field, "help": None}]})

    def answer(self, request: Request) -> Reply:
        if request.method != "POST" or request.path != "/v3/mail/send":
            return Reply(404, {"errors": [{"message": "not found", "field": None, "help": None}]})
        if request.header("authorization") != f"Bearer {self.api_key}":
            return Reply(
                401,
                {
                    "errors": [
                        {
                            "message": "The provided authorization grant is invalid, expired, or revoked",
                            "field": None,
                            "help": None,
                        }
                    ]
                },
            )
        body = request.json()
        personalizations = body.get("personalizations")
        if not isinstance(personalizations, list) or not personalizations:
            return self._error("You must have at least one personalization.", "personalizations")
        for p in personalizations:
            if not p.get("to") or not all(isinstance(t, dict) and t.get("email") for t in p["to"]):
                return self._error(
                    "Each to object must at least have an email address.", "personalizations.0.to"
                )
            if any(not isinstance(v, str) for v in p.get("custom_args", {}).values()):
                return self._error(
                    "custom_args values must be strings.", "personalizations.0.custom_args"
                )
        if not isinstance(body.get("from"), dict) or not body["from"].get("email"):
            return self._error("The from object must be provided for every email send.", "from")
        if not body.get("subject"):
            return self._error("The subject is required.", "subject")
        content = body.get("content")
        if not isinstance(content, list) or not content:
            return self._error(
                "Unless a valid template_id is provided, the content parameter is required.",
                "content",
            )
        if content[0].get("type") != "text/plain" and any(
            c.get("type") == "text/plain" for c in content
        ):
            return self._error("If present, text/plain content must be first.", "content")
        self.sent.append(body)
        return Reply(202, b"", {"X-Message-Id": uuid.uuid4().hex[:22]})


class FakeResend(FakeHTTP):
    """Resend's send-email endpoint."""

    def __init__(self, api_key: str = "re_test_key") -> None:
        self.api_key = api_key
        self.sent: list[dict[str, Any]] = []
        self._idempotent: dict[str, str] = {}
        super().__init__()

    def answer(self, request: Request) -> Reply:
        if request.method != "POST" or request.path != "/emails":
            return Reply(404, {"statusCode": 404, "name": "not_found", "message": "Not found"})
        auth = request.header("authorization")
        if not auth:
            return Reply(
                401,
                {
                    "statusCode": 401,
                    "name": "missing_api_key",
                    "message": "Missing API key in the authorization header",
                },
            )
        if auth != f"Bearer {self.api_key}":
            return Reply(
                403, {"statusCode": 403, "name": "invalid_api_key", "message": "API key is invalid"}
            )
        body = request.json()
        for name in ("from", "to", "subject"):
            if not body.get(name):
                return Reply(
                    422,
                    {
                        "statusCode": 422,
                        "name": "validation_error",
                        "message": f"Missing `{name}` field.",
                    },
                )
        if not (body.get("html") or body.get("text")):
            return Reply(
                422,
                {
                    "statusCode": 422,
                    "name": "validation_error",
                    "message": "Missing `html` or `text` field.",
                },
            )
        for tag in body.get("tags", []):
            if set(tag) != {"name", "value"}:
                return Reply(
                    422,
                    {
                        "statusCode": 422,
                        "name": "validation_error",
                        "message": "Invalid `tags` field.",
                    },
                )
        key = request.header("idempotency-key")
        if key and key in self._idempotent:
            return Reply(200, {"id": self._idempotent[key]})
        email_id = str(uuid.uuid4())
        if key:
            self._idempotent[key] = email_id
        self.sent.append(body)
        return Reply(200, {"id": email_id})
