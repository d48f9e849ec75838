"""Mobile push through Firebase Cloud Messaging's HTTP v1 API.

Authentication follows Google's service-account flow: a JWT assertion
signed (RS256) with the account's private key is exchanged at the token URI
for a short-lived OAuth2 access token, which is cached and shared by every
thread until shortly before it expires, and refreshed once when FCM answers
401.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from chimeway.channels._devices import combine_devices, data_object, token_hint
from chimeway.channels._http import HTTPChannel, classify_http, json_object, parse_retry_after
from chimeway.errors import ConfigurationError
from chimeway.values import DeliveryResult, Message, Recipient

__all__ = ["Push"]

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
DEFAULT_TOKEN_URL = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600
PERMANENT_FCM_CODES = frozenset(
    {"UNREGISTERED", "INVALID_ARGUMENT", "SENDER_ID_MISMATCH", "THIRD_PARTY_AUTH_ERROR"}
)
TEMPORARY_FCM_CODES = frozenset({"UNAVAILABLE", "INTERNAL", "QUOTA_EXCEEDED"})
# FCM answers INVALID_ARGUMENT for these data keys; refusing them at planning
# time gives a clearer reason than the provider's error.
_RESERVED_DATA_KEYS = frozenset({"from", "notification", "message_type", "collapse_key"})


def _load_service_account(source: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return dict(source)
    try:
        loaded = json.loads(Path(source).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"Push service_account file {source!s} cannot be read as JSON"
        ) from exc
    if not isinstance(loaded, dict):
        raise ConfigurationError("Push service_account file is not a JSON object")
    return loaded


def _data_field(raw: Any) -> dict[str, str]:
    """FCM's ``data`` is a string-to-string map; templates render JSON text."""
    value = data_object(raw)
    reserved = [
        str(k)
        for k in value
        if str(k) in _RESERVED_DATA_KEYS or str(k).startswith(("google", "gcm"))
    ]
    if reserved:
        raise ValueError(f"data uses key(s) FCM reserves: {', '.join(sorted(reserved))}")
    return {
        str(k): v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
        for k, v in value.items()
    }


class _AccessToken:
    __slots__ = ("refresh_at", "value")

    def __init__(self, value: str, refresh_at: float) -> None:
        self.value = value
        self.refresh_at = refresh_at


class Push(HTTPChannel):
    """Send a notification to each of a recipient's device tokens with FCM.

    One request per token in ``recipient.push_tokens``. The delivery
    succeeds when at least one device accepted the message (the other
    devices' failures are named in the detail, so a dead token can be
    pruned); otherwise it is temporary if any device failed temporarily,
    and permanent if all failed permanently (``UNREGISTERED``: the token is
    gone; ``INVALID_ARGUMENT``: the token or payload is malformed).

    Fields read: ``title``, ``body`` (at least one), ``data`` (optional,
    a JSON object as text or a mapping; values become strings).

    Args:
        service_account: the service-account JSON as a dict, or a path to it.
        project_id: the Firebase project; defaults to the account's ``project_id``.
        base_url: the FCM API root.
        token_url: the OAuth2 token endpoint; defaults to the account's ``token_uri``.
        timeout: seconds for connect/read/write.
        client: an ``httpx.Client`` to use instead of a pooled one of its own.
    """

    def __init__(
        self,
        service_account: Mapping[str, Any] | str | os.PathLike[str],
        project_id: str | None = None,
        base_url: str = "https://fcm.googleapis.com",
        token_url: str | None = None,
        *,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url=base_url, timeout=timeout, client=client)
        account = _load_service_account(service_account)
        missing = [k for k in ("client_email", "private_key") if not account.get(k)]
        if missing:
            raise ConfigurationError(f"Push service_account lacks {', '.join(missing)}")
        try:
            key = serialization.load_pem_private_key(str(account["private_key"]).encode(), None)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                "Push service_account private_key is not a PEM RSA key"
            ) from exc
        if not isinstance(key, RSAPrivateKey):
            raise ConfigurationError("Push service_account private_key is not an RSA key")
        self._key = key
        self._key_id = account.get("private_key_id")
        self.client_email = str(account["client_email"])
        project = project_id or account.get("project_id")
        if not project:
            raise ConfigurationError("Push needs project_id= or a service account with project_id")
        self.project_id = str(project)
        self.token_url = token_url or account.get("token_uri") or DEFAULT_TOKEN_URL
        self._token: _AccessToken | None = None
        self._token_lock = threading.Lock()
        self._clock: Callable[[], float] = time.time

    def __repr__(self) -> str:
        return f"Push(project_id={self.project_id!r}, client_email={self.client_email!r})"

    def validate(self, fields: Mapping[str, Any], recipient: Recipient) -> str | None:
        """Refuse a message with no device to send to or nothing to show.

        Args:
            fields: the rendered fields.
            recipient: the recipient.
        """
        if not recipient.push_tokens:
            return "recipient has no push tokens"
        if not fields.get("title") and not fields.get("body"):
            return "push message needs a 'title' or 'body' field"
        try:
            _data_field(fields.get("data"))
        except ValueError as exc:
            return f"push 'data' field is not valid: {exc}"
        return None

    # -- access tokens -------------------------------------------------------

    def _assertion(self) -> str:
        now = int(self._clock())
        claims = {
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        headers = {"kid": str(self._key_id)} if self._key_id else None
        return jwt.encode(claims, self._key, algorithm="RS256", headers=headers)

    def _token_form(self) -> dict[str, str]:
        return {"grant_type": JWT_BEARER, "assertion": self._assertion()}

    def _read_token(
        self, response: httpx.Response | DeliveryResult
    ) -> _AccessToken | DeliveryResult:
        if isinstance(response, DeliveryResult):
            return response
        document = json_object(response)
        if response.status_code == 200 and isinstance(document, dict):
            value = document.get("access_token")
            expires_in = document.get("expires_in", 3600)
            if isinstance(value, str) and isinstance(expires_in, int | float):
                # Refresh early so a token never expires between check and use.
                margin = min(300.0, float(expires_in) / 2)
                return _AccessToken(value, self._clock() + float(expires_in) - margin)
            return DeliveryResult.temporary(
                "token endpoint answered without an access_token",
                error_class="oauth_invalid_response",
            )
        code = (
            str(document.get("error"))
            if isinstance(document, dict) and document.get("error")
            else None
        )
        description = document.get("error_description") if isinstance(document, dict) else None
        detail = "access token request refused"
        if code:
            detail += f": {code}" + (f" ({str(description)[:200]})" if description else "")
        result = classify_http(response, vendor_code=code, detail=detail)
        return DeliveryResult(
            outcome=result.outcome,
            detail=result.detail,
            error_class=f"oauth_{code}" if code else result.error_class,
            vendor_code=code,
            retry_after=result.retry_after,
        )

    def _fresh(self, stale: _AccessToken | None) -> _AccessToken | None:
        token = self._token
        if token is not None and token is not stale and token.refresh_at > self._clock():
            return token
        return None

    def access_token(self, *, stale: _AccessToken | None = None) -> _AccessToken | DeliveryResult:
        """The cached access token, fetching a new one when it is due or ``stale``."""
        token = self._fresh(stale)
        if token is not None:
            return token
        with self._token_lock:
            # Another thread may have refreshed while this one waited.
            token = self._fresh(stale)
            if token is not None:
                return token
            fetched = self._read_token(
                self.request("POST", self.token_url, data=self._token_form())
            )
            if isinstance(fetched, _AccessToken):
                self._token = fetched
            return fetched

    async def access_token_async(
        self, *, stale: _AccessToken | None = None
    ) -> _AccessToken | DeliveryResult:
        """Async twin of :meth:`access_token`; two coroutines refreshing at once may both fetch."""
        token = self._fresh(stale)
        if token is not None:
            return token
        fetched = self._read_token(
            await self.request_async("POST", self.token_url, data=self._token_form())
        )
        if isinstance(fetched, _AccessToken):
            self._token = fetched
        return fetched

    # -- sending -------------------------------------------------------------

    def _payload(self, message: Message, device: str) -> dict[str, Any]:
        notification = {
            name: str(message.fields[name])
            for name in ("title", "body")
            if message.fields.get(name)
        }
        data = _data_field(message.fields.get("data"))
        data.setdefault("chimeway_delivery_id", str(message.delivery_id))
        return {"message": {"token": device, "notification": notification, "data": data}}

    @property
    def _send_path(self) -> str:
        return f"/v1/projects/{self.project_id}/messages:send"

    def _send_one(self, message: Message, device: str) -> DeliveryResult:
        token = self.access_token()
        if isinstance(token, DeliveryResult):
            return token
        body = self._payload(message, device)
        response = self.request("POST", self._send_path, json=body, headers=_bearer(token))
        if isinstance(response, httpx.Response) and response.status_code == 401:
            token = self.access_token(stale=token)
            if isinstance(token, DeliveryResult):
                return token
            response = self.request("POST", self._send_path, json=body, headers=_bearer(token))
        return _classify(response, device)

    async def _send_one_async(self, message: Message, device: str) -> DeliveryResult:
        token = await self.access_token_async()
        if isinstance(token, DeliveryResult):
            return token
        body = self._payload(message, device)
        response = await self.request_async(
            "POST", self._send_path, json=body, headers=_bearer(token)
        )
        if isinstance(response, httpx.Response) and response.status_code == 401:
            token = await self.access_token_async(stale=token)
            if isinstance(token, DeliveryResult):
                return token
            response = await self.request_async(
                "POST", self._send_path, json=body, headers=_bearer(token)
            )
        return _classify(response, device)

    def _precheck(self, message: Message) -> DeliveryResult | None:
        if not message.recipient.push_tokens:
            return DeliveryResult.permanent(
                "recipient has no push tokens", error_class="no_push_tokens"
            )
        try:
            _data_field(message.fields.get("data"))
        except ValueError as exc:
            return DeliveryResult.permanent(f"push 'data' field: {exc}", error_class="invalid_data")
        return None

    def send(self, message: Message) -> DeliveryResult:
        """Send to every device token of the recipient, one request each.

        Args:
            message: the rendered message.
        """
        refused = self._precheck(message)
        if refused is not None:
            return refused
        return combine_devices(
            [self._send_one(message, device) for device in message.recipient.push_tokens]
        )

    async def send_async(self, message: Message) -> DeliveryResult:
        """Native async variant of :meth:`send`; devices are sent to concurrently.

        Args:
            message: the rendered message.
        """
        refused = self._precheck(message)
        if refused is not None:
            return refused
        # Fetch once up front so concurrent device sends share one token.
        token = await self.access_token_async()
        if isinstance(token, DeliveryResult):
            return token
        results = await asyncio.gather(
            *(self._send_one_async(message, device) for device in message.recipient.push_tokens)
        )
        return combine_devices(list(results))


def _bearer(token: _AccessToken) -> dict[str, str]:
    return {"authorization": f"Bearer {token.value}"}


def _classify(response: httpx.Response | DeliveryResult, device: str) -> DeliveryResult:
    if isinstance(response, DeliveryResult):
        return response
    document = json_object(response)
    if 200 <= response.status_code < 300:
        name = document.get("name") if isinstance(document, dict) else None
        return DeliveryResult.ok(provider_message_id=str(name) if name else None)
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return classify_http(response)
    fcm_code: str | None = None
    for detail in error.get("details") or ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("FcmError"):
            fcm_code = str(detail.get("errorCode") or "") or None
    code = fcm_code or (str(error.get("status")) if error.get("status") else None)
    text = str(error.get("message") or "")[:200]
    hint = token_hint(device)
    if code == "UNREGISTERED":
        return DeliveryResult.permanent(
            f"device token {hint} is no longer registered (UNREGISTERED): the app was "
            "uninstalled or the token expired; remove it",
            error_class="fcm_unregistered",
            vendor_code=code,
        )
    detail = f"device {hint}: {code}: {text}" if code else f"device {hint}: {text}"
    if code in TEMPORARY_FCM_CODES:
        return DeliveryResult.temporary(
            detail,
            error_class=f"fcm_{code.lower()}",
            vendor_code=code,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
    if code in PERMANENT_FCM_CODES:
        return DeliveryResult.permanent(detail, error_class=f"fcm_{code.lower()}", vendor_code=code)
    return classify_http(response, vendor_code=code, detail=detail)
