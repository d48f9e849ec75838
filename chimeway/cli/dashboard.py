"""``chimeway dashboard``: serve the dashboard on its own, with the standard library's HTTP server."""

from __future__ import annotations

import argparse
import logging
import os
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from chimeway.app import Chimeway
from chimeway.cli._target import check_sqlite, load_app, load_attr
from chimeway.cli.worker import add_log_options
from chimeway.db import mask_url
from chimeway.errors import ConfigurationError
from chimeway.logs import configure_logging, log_event

__all__ = ["add_dashboard_parser"]

log = logging.getLogger("chimeway.web")


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log_event(log, logging.DEBUG, "dashboard.request", format % args, client=self.client_address[0])


def build_dashboard(args: argparse.Namespace) -> Any:
    from chimeway.web import Dashboard

    target = load_attr(args.app, "--app")
    if isinstance(target, Dashboard):
        if args.authorize or args.open:
            raise ConfigurationError("--app names a Dashboard, which has its own authorize; "
                                     "drop --authorize/--open or name the Chimeway app instead")
        return target
    app: Chimeway = target if isinstance(target, Chimeway) else load_app(args.app)
    if args.authorize and args.open:
        raise ConfigurationError("give --authorize or --open, not both")
    authorize = None
    if args.authorize:
        authorize = load_attr(args.authorize, "--authorize")
        if not callable(authorize):
            raise ConfigurationError(f"--authorize {args.authorize!r} is not a function")
    elif args.open:
        role = args.open
        authorize = lambda request: role  # noqa: E731 - the whole policy is one constant
    return Dashboard(app, authorize=authorize, secret=args.secret or os.environ.get("CHIMEWAY_DASHBOARD_SECRET"))


def cmd_dashboard(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    dashboard = build_dashboard(args)
    args.shown_url = mask_url(dashboard.app.engine.url)
    check_sqlite(dashboard.app.engine.url, create=False)
    with dashboard.app.engine.connect():
        pass  # a database mistake is reported now, not on the first page view
    server = make_server(args.host, args.port, dashboard.wsgi, server_class=_ThreadingServer,
                         handler_class=_QuietHandler)
    host, port = str(server.server_address[0]), int(server.server_address[1])
    access = (f"anyone who reaches it is {args.open}" if args.open else
              "access decided by " + (args.authorize or "the dashboard's authorize hook"))
    log_event(log, logging.INFO, "dashboard.started",
              f"Chimeway dashboard for {args.shown_url} on http://{host}:{port}/ ({access}; Ctrl-C stops it)",
              host=str(host), port=int(port), database=args.shown_url)
    if not args.open and not args.authorize:
        log_event(log, logging.WARNING, "dashboard.closed",
                  "no --authorize or --open given: every request will be refused; "
                  "pass --open admin (or read) to let in whoever reaches this address")
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def add_dashboard_parser(sub: Any) -> None:
    """Add ``chimeway dashboard`` to the top-level subparsers."""
    p = sub.add_parser("dashboard", help="serve the web dashboard for your app",
                       description="Serve the dashboard on its own. Without --authorize or --open every "
                                   "request is refused.")
    p.add_argument("--app", required=True, metavar="MODULE:APP",
                   help="your Chimeway app, or a chimeway.web.Dashboard, e.g. myproject.notify:app")
    p.add_argument("--authorize", metavar="MODULE:FUNCTION",
                   help="authorize(request) -> 'admin' | 'read' | None decides each request")
    p.add_argument("--open", choices=("admin", "read"),
                   help="give this role to everyone who reaches the address (keep --host local)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--secret", help="signs form tokens (default $CHIMEWAY_DASHBOARD_SECRET, else random)")
    add_log_options(p)
    p.set_defaults(func=cmd_dashboard)
