"""``chimeway jobs``: counts per queue, listings, one job in full, and actions on jobs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from chimeway.cli._output import age, print_json, print_rows, short
from chimeway.cli._target import open_app
from chimeway.errors import ConfigurationError
from chimeway.jsonvalues import redact
from chimeway.queue import JOB_STATES, JobFilter, JobSummary

__all__ = ["add_jobs_parser"]


def _summary_json(job: JobSummary, *, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": job.id, "state": job.state, "queue": job.queue, "worker": job.worker,
        "args": redact(job.args), "attempt": job.attempt, "max_attempts": job.max_attempts,
        "priority": job.priority, "inserted_at": job.inserted_at, "scheduled_at": job.scheduled_at,
        "attempted_at": job.attempted_at, "attempted_by": job.attempted_by,
        "finished_at": job.finished_at, "last_error": job.last_error,
    }
    if full:
        out["errors"] = list(job.errors)
        out["meta"] = job.meta
    return out


def cmd_counts(args: argparse.Namespace) -> int:
    app = open_app(args)
    counts = app.queue.counts()
    if args.json:
        print_json({q: {"states": dict(row.states), "oldest_due_seconds": row.oldest_available_age}
                    for q, row in counts.items()})
        return 0
    print(f"{'queue':<22}" + "".join(f"{s:>11}" for s in JOB_STATES) + f"{'oldest due':>13}")
    for name in sorted(counts):
        row = counts[name]
        oldest = "-" if row.oldest_available_age is None else f"{row.oldest_available_age:.1f}s"
        print(f"{name:<22}" + "".join(f"{row.states.get(s, 0):>11}" for s in JOB_STATES) + f"{oldest:>13}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    app = open_app(args)
    where = JobFilter(queue=args.queue, state=args.state, worker=args.worker, args_text=args.args)
    jobs = app.queue.list_jobs(where, limit=args.limit, before_id=args.before)
    if args.json:
        print_json([_summary_json(j) for j in jobs])
        return 0
    now = app.clock.now()
    print_rows([
        {"id": j.id, "state": j.state, "queue": j.queue, "worker": j.worker,
         "attempt": f"{j.attempt}/{j.max_attempts}", "enqueued": age(j.inserted_at, now),
         "last error": short(j.last_error, 60)}
        for j in jobs
    ], "no jobs match")
    if len(jobs) == args.limit:
        print(f"(first {args.limit}; next page: --before {jobs[-1].id})")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    app = open_app(args)
    job = app.queue.details(args.id)
    if args.json:
        print_json(_summary_json(job, full=True))
        return 0
    now = app.clock.now()
    when = {"enqueued": job.inserted_at, "due": job.scheduled_at, "attempted": job.attempted_at,
            "finished": job.finished_at}
    print(f"job {job.id}  [{job.state}]  {job.worker} on queue {job.queue}")
    print(f"  attempt   {job.attempt}/{job.max_attempts}  priority {job.priority}")
    for label, at in when.items():
        if at is not None:
            print(f"  {label:<9} {at.isoformat(timespec='seconds')} ({age(at, now)})")
    if job.attempted_by:
        print(f"  ran on    {job.attempted_by}")
    print(f"  args      {redact(job.args)}")
    if job.meta:
        print(f"  meta      {job.meta}")
    if not job.errors:
        print("  errors    none")
    for entry in job.errors:
        print(f"  attempt {entry.get('attempt')} at {entry.get('at')}: {entry.get('error')}")
        trace = str(entry.get("traceback") or "").rstrip()
        for line in trace.splitlines():
            print(f"      {line}")
    return 0


def _selection(args: argparse.Namespace, verb: str) -> JobFilter:
    if getattr(args, "discarded", False):
        if args.ids:
            raise ConfigurationError(f"chimeway jobs {verb}: give job ids or --discarded, not both")
        return JobFilter(state="discarded")
    if not args.ids:
        raise ConfigurationError(f"chimeway jobs {verb} needs one or more job ids"
                                 + (" or --discarded" if verb == "retry" else ""))
    return JobFilter(ids=tuple(args.ids))


def _act(verb: str, done: str, act: Callable[[Any, JobFilter], int]) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        where = _selection(args, verb)
        app = open_app(args)
        if where.ids is not None:
            for job_id in where.ids:
                app.queue.details(job_id)  # an unknown id is an error naming it
        count = act(app.queue, where)
        print(f"{done} {count} job(s)")
        wanted = len(where.ids) if where.ids is not None else count
        return 0 if count == wanted else 1

    return command


def add_jobs_parser(sub: Any, add_target: Callable[..., None]) -> None:
    """Add ``chimeway jobs ...`` to the top-level subparsers."""
    jobs = sub.add_parser(
        "jobs", help="job counts per queue; list, show, retry, cancel or delete jobs",
        description="Without an action: job counts per queue and state.")
    add_target(jobs)
    jobs.add_argument("--json", action="store_true", help="print JSON")
    jobs.set_defaults(func=cmd_counts)
    actions = jobs.add_subparsers(dest="action", metavar="ACTION")

    p = actions.add_parser("list", help="jobs with ids, attempts and last error, newest first")
    p.add_argument("--queue", help="only this queue")
    p.add_argument("--state", choices=JOB_STATES, help="only this state")
    p.add_argument("--worker", help="only jobs of this worker name (e.g. chimeway.deliver)")
    p.add_argument("--args", metavar="TEXT", help="only jobs whose JSON args contain TEXT "
                   "(searches the newest 100,000 jobs)")
    p.add_argument("--limit", type=int, default=50, help="how many (default 50, at most 1000)")
    p.add_argument("--before", type=int, metavar="ID", help="only jobs older than job ID (next page)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    add_target(p, suppress=True)
    p.set_defaults(func=cmd_list)

    p = actions.add_parser("show", help="one job with every attempt's error and traceback")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    add_target(p, suppress=True)
    p.set_defaults(func=cmd_show)

    verbs: list[tuple[str, str, str, Callable[[Any, JobFilter], int]]] = [
        ("retry", "re-armed", "make finished, retryable or scheduled jobs due now",
         lambda q, w: q.retry_many(w)),
        ("cancel", "cancelled", "cancel jobs that have not finished", lambda q, w: q.cancel_many(w)),
        ("delete", "deleted", "delete jobs that are not executing", lambda q, w: q.delete_many(w)),
    ]
    for verb, done, text, act in verbs:
        p = actions.add_parser(verb, help=text)
        p.add_argument("ids", nargs="*", type=int, metavar="ID")
        if verb == "retry":
            p.add_argument("--discarded", action="store_true", help="every discarded job")
        add_target(p, suppress=True)
        p.set_defaults(func=_act(verb, done, act))
