"""The ``chimeway`` command line."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from chimeway.app import Chimeway
from chimeway.errors import ChimewayError, ConfigurationError
from chimeway.explain import format_explanation

__all__ = ["main"]

DATABASE_HELP = (
    "database URL (default: $CHIMEWAY_DATABASE_URL, else sqlite:///chimeway.db); "
    "ignored when --app is given"
)


def load_app(spec: str) -> Chimeway:
    """Import ``pkg.module:attribute`` and return the Chimeway app it names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"--app must look like 'package.module:app', got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"--app {spec!r}: cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attr, None)
    if callable(app) and not isinstance(app, Chimeway):
        app = app()
    if not isinstance(app, Chimeway):
        raise ConfigurationError(f"--app {spec!r} is a {type(app).__name__}, not a Chimeway app")
    return app


def _app(args: argparse.Namespace) -> Chimeway:
    if getattr(args, "app", None):
        return load_app(args.app)
    url = getattr(args, "database_url", None) or os.environ.get("CHIMEWAY_DATABASE_URL")
    return Chimeway(url)


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", metavar="MODULE:APP", help="import your Chimeway app (e.g. myproject.notify:app)")
    parser.add_argument("--database-url", metavar="URL", help=DATABASE_HELP)


def _queues(values: Sequence[str] | None) -> dict[str, int] | None:
    if not values:
        return None
    out: dict[str, int] = {}
    for value in values:
        name, _, limit = value.partition("=")
        try:
            out[name] = int(limit) if limit else 10
        except ValueError:
            raise ConfigurationError(f"--queue {value!r}: expected NAME=CONCURRENCY, e.g. chimeway_delivery=20") from None
    return out


def cmd_migrate(args: argparse.Namespace) -> int:
    app = _app(args)
    from chimeway.migrations import current_revision, head_revision

    with app.engine.connect() as conn:
        before = current_revision(conn)
    print(f"migrating {app.engine.url.render_as_string(hide_password=True)}: {before or 'empty'} → {head_revision()}")
    app.migrate()
    print("Chimeway's tables are up to date.")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    app = _app(args)
    explanation = app.explain(args.delivery_id)
    if args.json:
        print(json.dumps({
            "delivery_id": str(explanation.delivery_id), "status": explanation.status,
            "reason": explanation.reason, "channel": explanation.channel,
            "recipient_id": explanation.recipient_id, "notifier": explanation.notifier_key,
            "timeline": [{"at": t.at.isoformat(), "event": t.event, "detail": t.detail}
                         for t in explanation.timeline],
        }, indent=2, default=str))
    else:
        print(format_explanation(explanation))
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    app = _app(args)
    trace = app.trace(args.event_id)
    print(f"event {trace.event_id}  {trace.notifier_key}  key={trace.idempotency_key}"
          + (f"  tenant={trace.tenant}" if trace.tenant else ""))
    for delivery in trace.deliveries:
        print()
        print(format_explanation(delivery))
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    app = _app(args)
    count = app.recover(older_than=timedelta(seconds=args.older_than))
    print(f"re-drove {count} deliveries")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    queues = _queues(args.queue)
    names = ", ".join(f"{k}={v}" for k, v in (queues or {}).items()) or "all declared queues"
    print(f"chimeway worker on {app.engine.url.render_as_string(hide_password=True)}: {names} "
          "(Ctrl-C or SIGTERM stops it gracefully)", flush=True)
    ran = app.queue.run_worker(queues=queues, poll_interval=args.poll_interval,
                               shutdown_grace=args.shutdown_grace)
    print(f"worker stopped after running {ran} jobs", flush=True)
    # Jobs still running past the shutdown grace were released for another
    # worker; their threads must not keep this process alive.
    sys.stderr.flush()
    os._exit(0)


def cmd_jobs(args: argparse.Namespace) -> int:
    app = _app(args)
    if args.action == "retry":
        if args.discarded:
            print(f"retried {app.queue.retry_discarded()} discarded jobs")
            return 0
        if args.id is None:
            raise ConfigurationError("chimeway jobs retry needs a job ID or --discarded")
        ok = app.queue.retry(args.id)
        print(f"job {args.id} {'made available again' if ok else 'was not retryable'}")
        return 0 if ok else 1
    if args.action == "cancel":
        if args.id is None:
            raise ConfigurationError("chimeway jobs cancel needs a job ID")
        ok = app.queue.cancel(args.id)
        print(f"job {args.id} {'cancelled' if ok else 'could not be cancelled (already finished?)'}")
        return 0 if ok else 1
    counts = app.queue.counts()
    states = ["available", "scheduled", "executing", "retryable", "completed", "discarded", "cancelled"]
    print(f"{'queue':<22}" + "".join(f"{s:>11}" for s in states) + f"{'oldest due':>13}")
    for name in sorted(counts):
        row = counts[name]
        age = "-" if row.oldest_available_age is None else f"{row.oldest_available_age:.1f}s"
        print(f"{name:<22}" + "".join(f"{row.states.get(s, 0):>11}" for s in states) + f"{age:>13}")
    return 0


def _print_rows(rows: Sequence[dict[str, Any]], empty: str) -> None:
    if not rows:
        print(empty)
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for row in rows:
        print("  ".join(str(row.get(k, "")).ljust(widths[k]) for k in keys))


def cmd_cron(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    lister = getattr(app, "cron_schedules", None)
    if lister is None:
        raise ConfigurationError("this version of Chimeway has no cron schedules")
    _print_rows([dict(r) for r in lister()], "no cron schedules are registered")
    return 0


def cmd_triggers(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    lister = getattr(app, "record_triggers_status", None)
    if lister is None:
        raise ConfigurationError("this version of Chimeway has no record triggers")
    _print_rows([dict(r) for r in lister()], "no record triggers are registered")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chimeway",
        description="Durable, explainable notifications in your own database.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("migrate", help="create or upgrade Chimeway's tables")
    _add_target(p)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("explain", help="why a delivery has its status")
    p.add_argument("delivery_id")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_target(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("trace", help="an event's notifications and deliveries, explained")
    p.add_argument("event_id")
    _add_target(p)
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("recover", help="re-drive deliveries left pending or failed and due")
    p.add_argument("--older-than", type=float, default=300.0, metavar="SECONDS",
                   help="how old a pending delivery must be (default 300)")
    _add_target(p)
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("worker", help="run a queue worker for your app")
    p.add_argument("--app", required=True, metavar="MODULE:APP", help="your Chimeway app, e.g. myproject.notify:app")
    p.add_argument("--queue", action="append", metavar="NAME=N",
                   help="a queue and its concurrency; repeat for several (default: every queue, 10 each)")
    p.add_argument("--poll-interval", type=float, default=1.0, metavar="SECONDS")
    p.add_argument("--shutdown-grace", type=float, default=15.0, metavar="SECONDS",
                   help="how long running jobs get to finish on SIGTERM")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("jobs", help="job counts per queue and state; retry or cancel jobs")
    p.add_argument("action", nargs="?", choices=["list", "retry", "cancel"], default="list")
    p.add_argument("id", nargs="?", type=int, help="job id for retry/cancel")
    p.add_argument("--discarded", action="store_true", help="with retry: retry every discarded job")
    _add_target(p)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("cron", help="registered cron schedules and their next run times")
    p.add_argument("--app", required=True, metavar="MODULE:APP")
    p.set_defaults(func=cmd_cron)

    p = sub.add_parser("triggers", help="registered record triggers and the rows pending")
    p.add_argument("--app", required=True, metavar="MODULE:APP")
    p.set_defaults(func=cmd_triggers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``chimeway`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ChimewayError as exc:
        print(f"chimeway: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
