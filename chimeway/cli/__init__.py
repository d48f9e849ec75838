"""The ``chimeway`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from chimeway.cli._output import print_json, print_rows
from chimeway.cli._target import ENV_SCHEMA, describe_failure, load_app, open_app
from chimeway.cli.dashboard import add_dashboard_parser
from chimeway.cli.jobs import add_jobs_parser
from chimeway.cli.prune import add_prune_parser
from chimeway.cli.worker import add_worker_parser
from chimeway.errors import ConfigurationError
from chimeway.explain import Explanation, format_explanation
from chimeway.queue import JobSummary

__all__ = ["build_parser", "load_app", "main"]

DATABASE_HELP = (
    "database URL (default: $CHIMEWAY_DATABASE_URL, else sqlite:///chimeway.db); "
    "ignored when --app is given"
)


def _add_target(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument("--app", metavar="MODULE:APP", default=default,
                        help="import your Chimeway app (e.g. myproject.notify:app)")
    parser.add_argument("--database-url", metavar="URL", default=default, help=DATABASE_HELP)
    parser.add_argument("--schema", metavar="NAME", default=default,
                        help=f"the PostgreSQL schema Chimeway's tables are in, with --database-url "
                             f"(or ${ENV_SCHEMA}); an --app brings its own")


def cmd_migrate(args: argparse.Namespace) -> int:
    app = open_app(args, create=True)
    from chimeway.migrations import current_revision, head_revision

    with app.engine.connect() as conn:
        before = current_revision(conn)
    print(f"migrating {args.shown_url}: {before or 'empty'} → {head_revision()}")
    app.migrate()
    print("Chimeway's tables are up to date.")
    return 0


def _job_lines(jobs: Sequence[JobSummary]) -> list[str]:
    lines = []
    for job in jobs:
        error = f" — last error: {job.last_error}" if job.last_error and job.state != "completed" else ""
        lines.append(f"  job      {job.id} [{job.state}] attempt {job.attempt}/{job.max_attempts} "
                     f"on {job.queue}{error}  (chimeway jobs show {job.id})")
    return lines


def _explanation_json(x: Explanation, jobs: Sequence[JobSummary]) -> dict[str, Any]:
    return {
        "delivery_id": x.delivery_id, "event_id": x.event_id, "notification_id": x.notification_id,
        "status": x.status, "reason": x.reason, "channel": x.channel,
        "recipient_id": x.recipient_id, "notifier": x.notifier_key, "tenant": x.tenant,
        "attempts": x.attempts,
        "jobs": [{"id": j.id, "state": j.state, "queue": j.queue, "attempt": j.attempt,
                  "max_attempts": j.max_attempts, "last_error": j.last_error} for j in jobs],
        "timeline": [{"at": t.at, "event": t.event, "detail": t.detail} for t in x.timeline],
    }


def cmd_explain(args: argparse.Namespace) -> int:
    app = open_app(args)
    explanation = app.explain(args.delivery_id)
    jobs = app.queue.for_delivery(explanation.delivery_id)
    if args.json:
        print_json(_explanation_json(explanation, jobs))
    else:
        print("\n".join([format_explanation(explanation), *_job_lines(jobs)]))
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    app = open_app(args)
    trace = app.trace(args.event_id)
    jobs = {d.delivery_id: app.queue.for_delivery(d.delivery_id) for d in trace.deliveries}
    if args.json:
        print_json({
            "event_id": trace.event_id, "notifier": trace.notifier_key, "tenant": trace.tenant,
            "idempotency_key": trace.idempotency_key, "actor": trace.actor,
            "created_at": trace.created_at, "notifications": list(trace.notifications),
            "deliveries": [_explanation_json(d, jobs[d.delivery_id]) for d in trace.deliveries],
        })
        return 0
    print(f"event {trace.event_id}  {trace.notifier_key}  key={trace.idempotency_key}"
          + (f"  tenant={trace.tenant}" if trace.tenant else ""))
    for delivery in trace.deliveries:
        print()
        print("\n".join([format_explanation(delivery), *_job_lines(jobs[delivery.delivery_id])]))
    return 0


RECOVER_NEEDS_APP = (
    "chimeway recover needs --app MODULE:APP: it re-sends deliveries through your app's channels "
    "and dispatcher, which a bare database URL does not have. Running workers recover by "
    "themselves; see guides/dispatchers.md"
)


def cmd_recover(args: argparse.Namespace) -> int:
    if not getattr(args, "app", None):
        raise ConfigurationError(RECOVER_NEEDS_APP)
    app = open_app(args)
    report = app.recover_report(older_than=timedelta(seconds=args.older_than))
    print(f"re-drove {report.redriven} deliveries"
          + (f" ({report.lease_expired} whose send lease had run out)" if report.lease_expired else ""))
    if report.exhausted:
        print(f"cancelled {report.exhausted} whose lease ran out on their last attempt")
    for channel, count in sorted(report.skipped.items()):
        print(f"left {count} alone on channel {channel!r}: this app does not configure it")
    return 0


def cmd_cron(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    print_rows([dict(r) for r in app.cron_schedules()], "no cron schedules are registered")
    return 0


def cmd_triggers(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    print_rows([dict(r) for r in app.record_triggers_status()], "no record triggers are registered")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``chimeway`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="chimeway",
        description="Durable, explainable notifications in your own database.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("migrate", help="create or upgrade Chimeway's tables")
    _add_target(p)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("explain", help="why a delivery has its status (and the job that carried it)")
    p.add_argument("delivery_id")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_target(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("trace", help="an event's notifications and deliveries, explained")
    p.add_argument("event_id")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_target(p)
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("recover", help="re-drive deliveries a crash left behind (needs --app)",
                       description="Re-drive deliveries left behind: sends whose lease ran out, pending "
                                   "deliveries older than --older-than, failed and deferred ones now due. "
                                   "Deliveries on channels the app does not configure are left alone.")
    p.add_argument("--older-than", type=float, default=300.0, metavar="SECONDS",
                   help="how old a pending delivery must be (default 300)")
    p.add_argument("--app", metavar="MODULE:APP",
                   help="import your Chimeway app (e.g. myproject.notify:app); required")
    p.add_argument("--database-url", metavar="URL", help="not enough on its own: recover needs --app")
    p.set_defaults(func=cmd_recover)

    add_worker_parser(sub)
    add_jobs_parser(sub, _add_target)
    add_prune_parser(sub, _add_target)
    add_dashboard_parser(sub)

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
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = describe_failure(exc, getattr(args, "shown_url", None))
        if message is None:
            raise
        print(f"chimeway: error: {message}", file=sys.stderr)
        return 2
