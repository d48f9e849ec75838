"""``Dashboard``: routing, access checks, CSRF, templates and static files."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from chimeway.errors import ChimewayError, NotFoundError
from chimeway.jsonvalues import redact
from chimeway.logs import log_event
from chimeway.web import deliveries, jobs, overview, schedules, workflows
from chimeway.web.adapters import Receive, Scope, Send, asgi_call, wsgi_call
from chimeway.web.http import Request, Response
from chimeway.web.security import ROLES, Authorize, CsrfGuard, refuse_everyone

if TYPE_CHECKING:
    from chimeway.app import Chimeway

__all__ = ["Dashboard", "View"]

log = logging.getLogger("chimeway.web")

STATIC = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8"}
SECURITY_HEADERS = [
    ("content-security-policy", "default-src 'self'; script-src 'self'; style-src 'self'; "
     "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
]
NOT_ENABLED = (
    "The Chimeway dashboard refuses everyone until your application says who may use it. "
    "Pass an authorize function: Dashboard(app, authorize=lambda request: \"admin\" if "
    "is_staff(request) else None). It returns \"admin\" (see and act), \"read\" (see only) "
    "or None (refused); read request.headers, request.cookies, request.scope (ASGI) or "
    "request.environ (WSGI) to decide."
)
FLASH = {
    "retried": "{n} job(s) made due again.",
    "cancelled": "{n} job(s) cancelled.",
    "deleted": "{n} job(s) deleted.",
    "paused": "Queue {name} paused: workers stop claiming from it within one poll.",
    "resumed": "Queue {name} resumed.",
    "resent": "Delivery sent again.",
    "run_cancelled": "{n} workflow run(s) cancelled.",
}


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Callable[..., Response]


class View:
    """What a page handler gets: the app, the request and rendering helpers."""

    def __init__(self, dashboard: Dashboard, request: Request, csrf_token: str) -> None:
        self.dashboard = dashboard
        self.app: Chimeway = dashboard.app
        self.request = request
        self.csrf_token = csrf_token

    @property
    def can_act(self) -> bool:
        return self.request.role == "admin"

    def url(self, path: str, **params: Any) -> str:
        return self.request.url(path, **params)

    def render(self, template: str, status: int = 200, **context: Any) -> Response:
        flash_code = self.request.arg("flash")
        flash = None
        if flash_code in FLASH:
            try:
                flash = FLASH[flash_code].format(n=int(self.request.arg("n") or 0),
                                                 name=self.request.arg("name") or "")
            except ValueError:
                flash = None
        html = self.dashboard.templates.get_template(template).render(
            view=self, request=self.request, can_act=self.can_act, csrf=self.csrf_token,
            now=self.app.clock.now(), flash=flash, title=self.dashboard.title,
            refresh=self.dashboard.refresh_seconds, **context,
        )
        return Response.html(html, status)

    def back(self, path: str, **params: Any) -> Response:
        return Response.redirect(self.url(path, **params))


def _ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "—"
    seconds = ((now or datetime.now(value.tzinfo)) - value).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            text = f"{int(seconds // size)}{unit}"
            break
    else:
        text = f"{int(seconds)}s"
    return f"in {text}" if future else f"{text} ago"


def _when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


class Dashboard:
    """The operator's dashboard, served by your ASGI or WSGI application or on its own.

    Mount it in FastAPI/Starlette (``api.mount("/chimeway", dashboard)``), in
    Flask or any WSGI app (``DispatcherMiddleware(app.wsgi_app, {"/chimeway":
    dashboard})``), or run ``chimeway dashboard --app pkg.mod:app``.

    Args:
        app: your Chimeway app.
        authorize: ``authorize(request) -> "admin" | "read" | None``; the
            default refuses everyone.
        secret: signs the CSRF tokens; give every process the same one
            (default: the app's ``secret`` if set, else random per process).
        title: shown in the header.
        refresh_seconds: how often pages refresh their live parts (0: never).
    """

    def __init__(
        self,
        app: Chimeway,
        *,
        authorize: Authorize | None = None,
        secret: bytes | str | None = None,
        title: str = "Chimeway",
        refresh_seconds: int = 5,
    ) -> None:
        self.app = app
        self.authorize: Authorize = authorize or refuse_everyone
        self.csrf = CsrfGuard(secret if secret is not None else getattr(app, "secret", None))
        self.title = title
        self.refresh_seconds = refresh_seconds
        self.templates = Environment(
            loader=PackageLoader("chimeway.web", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        )
        self.templates.filters.update(ago=_ago, when=_when, redact=redact, short=lambda v: str(v)[:8])
        self.routes: list[Route] = []
        for register in (overview.register, jobs.register, deliveries.register, workflows.register,
                         schedules.register):
            register(self)

    def route(self, method: str, path: str) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
        """Register a handler for ``path`` (``{name}`` matches one segment, ``{name:int}`` digits)."""
        regex = re.sub(r"\{(\w+)(:int)?\}",
                       lambda m: f"(?P<{m.group(1)}>{'[0-9]+' if m.group(2) else '[^/]+'})", path)
        pattern = re.compile(f"^{regex}$")

        def add(handler: Callable[..., Response]) -> Callable[..., Response]:
            self.routes.append(Route(method, pattern, handler))
            return handler

        return add

    # --- serving ------------------------------------------------------------------

    def __call__(self, *args: Any) -> Any:
        """Be a WSGI app (two arguments) or an ASGI app (three) as the server expects."""
        if len(args) == 3:
            return self.asgi(*args)
        return self.wsgi(*args)

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """The WSGI application."""
        return wsgi_call(self.handle, environ, start_response)

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI application."""
        await asgi_call(self.handle, scope, receive, send)

    def handle(self, request: Request) -> Response:
        """Answer one request (used by both adapters)."""
        if request.path.startswith("/static/"):
            return self._static(request.path[len("/static/"):])
        token, fresh = self.csrf.token_for(request)
        response = self._dispatch(request, token)
        response.headers.extend(SECURITY_HEADERS)
        response.header("cache-control", "no-store")
        if fresh:
            response.header("set-cookie", self.csrf.cookie(token, request.root or "/"))
        return response

    def _page(self, request: Request, token: str, status: int, heading: str, message: str) -> Response:
        return View(self, request, token).render("message.html", status=status, heading=heading,
                                                 message=message)

    def _dispatch(self, request: Request, token: str) -> Response:
        try:
            role = self.authorize(request)
        except Exception:
            log.exception("the dashboard's authorize hook failed; refusing the request")
            role = None
        if role not in ROLES:
            log_event(log, logging.INFO, "dashboard.refused", f"dashboard refused {request.method} {request.path}",
                      path=request.path, client=request.client, hook_default=self.authorize is refuse_everyone)
            message = NOT_ENABLED if self.authorize is refuse_everyone else "You may not use this dashboard."
            request.role = None
            return self._page(request, token, 403, "Access refused", message)
        request.role = str(role)
        allowed = [r for r in self.routes if r.pattern.match(request.path)]
        if not allowed:
            return self._page(request, token, 404, "Not found", f"Nothing here: {request.path}")
        route = next((r for r in allowed if r.method == request.method), None)
        if route is None:
            return self._page(request, token, 405, "Method not allowed", f"{request.method} is not accepted here.")
        if request.method == "POST":
            if request.role != "admin":
                log_event(log, logging.WARNING, "dashboard.forbidden", f"read-only user posted to {request.path}",
                          path=request.path, client=request.client)
                return self._page(request, token, 403, "Read-only access",
                                  "Your access is read-only: actions are for admins.")
            problem = self.csrf.check(request)
            if problem:
                log_event(log, logging.WARNING, "dashboard.csrf_refused", f"{problem}: {request.path}",
                          path=request.path, client=request.client)
                return self._page(request, token, 403, "Request refused", problem)
        params = route.pattern.match(request.path).groupdict()  # type: ignore[union-attr]
        view = View(self, request, token)
        try:
            response = route.handler(view, **params)
        except NotFoundError as exc:
            return self._page(request, token, 404, "Not found", str(exc))
        except ChimewayError as exc:
            return self._page(request, token, 400, "Cannot do that", str(exc))
        if request.method == "POST":
            log_event(log, logging.INFO, "dashboard.action", f"dashboard action {request.path}",
                      path=request.path, client=request.client)
        return response

    def _static(self, name: str) -> Response:
        kind = STATIC.get(name)
        if kind is None:
            return Response.text("not found", 404)
        body = resources.files("chimeway.web").joinpath("static", name).read_bytes()
        return Response(body=body, headers=[("content-type", kind), ("cache-control", "max-age=300"),
                                            ("x-content-type-options", "nosniff")])
