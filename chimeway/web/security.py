"""Who may see the dashboard and who may act, and CSRF protection for every action.

Access is the application's decision: ``authorize(request)`` returns
``"admin"`` (see and act), ``"read"`` (see only) or ``None`` (refused).
Without a hook everyone is refused, with a page that says how to enable it.

Every action is a POST carrying a token that must match a cookie the
dashboard set (``SameSite=Strict``, so a cross-site form never carries it)
and be signed with the dashboard's secret; a request a browser marks as
cross-site, or whose ``Origin`` is another site, is refused before that.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Literal

from chimeway.web.http import Request

__all__ = ["ROLES", "Authorize", "CsrfGuard", "refuse_everyone"]

Role = Literal["admin", "read"]
Authorize = Callable[[Request], "Role | str | None"]
ROLES = ("admin", "read")
COOKIE = "chimeway_csrf"
FIELD = "csrf"


def refuse_everyone(request: Request) -> None:
    """The default ``authorize`` hook: nobody gets in until the application says who may."""
    return None


class CsrfGuard:
    """Issues and checks the per-browser token that every action must carry.

    Args:
        secret: signs tokens; give every process serving the dashboard the
            same secret (a random one per process otherwise).
    """

    def __init__(self, secret: bytes | str | None = None) -> None:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        self._key = hashlib.sha256(b"chimeway-dashboard-csrf:" + (secret or secrets.token_bytes(32))).digest()

    def _sign(self, nonce: str) -> str:
        return hmac.new(self._key, nonce.encode("ascii"), hashlib.sha256).hexdigest()[:32]

    def token_for(self, request: Request) -> tuple[str, bool]:
        """The browser's token, and whether it is new (a cookie must be set)."""
        current = request.cookies.get(COOKIE, "")
        if self._valid(current):
            return current, False
        nonce = secrets.token_hex(16)
        return f"{nonce}.{self._sign(nonce)}", True

    def cookie(self, token: str, path: str) -> str:
        return f"{COOKIE}={token}; Path={path or '/'}; HttpOnly; SameSite=Strict"

    def _valid(self, token: str) -> bool:
        nonce, _, mac = token.partition(".")
        if len(nonce) != 32 or not mac:
            return False
        try:
            bytes.fromhex(nonce)
        except ValueError:
            return False
        return hmac.compare_digest(mac, self._sign(nonce))

    def check(self, request: Request) -> str | None:
        """Why this POST must be refused, or ``None`` when it carries a good token from this site."""
        fetch_site = request.headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return f"cross-site request refused (Sec-Fetch-Site: {fetch_site})"
        origin = request.headers.get("origin")
        host = request.headers.get("host")
        if origin and (origin == "null" or (host and origin.split("://", 1)[-1] != host)):
            return f"request from another origin refused ({origin})"
        cookie = request.cookies.get(COOKIE, "")
        sent = (request.form.get(FIELD) or [""])[0]
        if not cookie or not sent:
            return "the form's security token is missing; reload the page and try again"
        if not hmac.compare_digest(cookie, sent) or not self._valid(sent):
            return "the form's security token does not match; reload the page and try again"
        return None
