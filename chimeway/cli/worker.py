"""``chimeway worker``: run every queue the app uses, say what it runs and what it leaves; ``chimeway health``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from chimeway.app import Chimeway
from chimeway.cli._target import check_sqlite, load_app
from chimeway.db import mask_url
from chimeway.errors import ConfigurationError
from chimeway.logs import FORMATS, LEVELS, configure_logging, log_event

__all__ = ["add_worker_parser", "choose_queues"]

log = logging.getLogger("chimeway.worker")

DEFAULT_CONCURRENCY = 10
WAITING = ("available", "scheduled", "retryable")


def _parse_queue(value: str) -> tuple[str, int]:
    name, sep, limit = value.partition("=")
    example = "e.g. --queue chimeway_delivery=20"
    if not name:
        raise ConfigurationError(f"--queue {value!r}: expected NAME=CONCURRENCY, {example}")
    if not sep:
        return name, DEFAULT_CONCURRENCY
    try:
        count = int(limit)
    except ValueError:
        raise ConfigurationError(f"--queue {value!r}: CONCURRENCY must be a whole number, {example}") from None
    if count < 1:
        raise ConfigurationError(f"--queue {value!r}: CONCURRENCY must be at least 1, {example}")
    return name, count


def choose_queues(declared: Sequence[str], given: Sequence[str] | None, *, only: bool,
                  concurrency: int = DEFAULT_CONCURRENCY) -> dict[str, int]:
    """The queues a worker runs and their concurrency.

    Every declared queue runs (Chimeway's own among them) with ``concurrency``
    unless ``only`` limits the worker to the ``--queue`` ones; ``--queue``
    sets a queue's concurrency. A queue the app does not declare is an error.
    """
    chosen = {} if only else dict.fromkeys(sorted(declared), concurrency)
    for value in given or ():
        name, count = _parse_queue(value)
        if name not in declared:
            raise ConfigurationError(
                f"--queue {value!r}: the app declares no queue {name!r}; "
                f"its queues are {', '.join(sorted(declared))}"
            )
        chosen[name] = count
    if only and not chosen:
        raise ConfigurationError("--only needs at least one --queue NAME=CONCURRENCY")
    return chosen


def _served_elsewhere(app: Chimeway) -> set[str]:
    now = app.clock.now()
    cutoff = now - app.queue.stale_after
    return {
        queue for worker in app.queue.live_workers() if worker.heartbeat_at >= cutoff
        for queue in worker.queues
    }


def warn_unserved(app: Chimeway, chosen: Mapping[str, int]) -> list[str]:
    """Log a ``worker.unserved_queue`` warning for each queue with waiting jobs nobody runs."""
    counts = app.queue.counts()
    elsewhere = _served_elsewhere(app)
    warned = []
    for queue, row in sorted(counts.items()):
        waiting = sum(row.states.get(s, 0) for s in WAITING)
        if not waiting or queue in chosen or queue in elsewhere:
            continue
        declared = queue in app.queue.queues
        fix = (f"add --queue {queue}=N" if declared
               else "declare it in the app (its jobs' code lives there) and add --queue")
        log_event(log, logging.WARNING, "worker.unserved_queue",
                  f"queue {queue!r} has {waiting} job(s) waiting that this worker will not run "
                  f"and no live worker runs; {fix}",
                  queue=queue, waiting=waiting, declared=declared)
        warned.append(queue)
    return warned


def cmd_worker(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, args.log_format)
    app = load_app(args.app)
    args.shown_url = mask_url(app.engine.url)
    chosen = choose_queues(sorted(app.queue.queues), args.queue, only=args.only,
                           concurrency=args.concurrency)
    check_sqlite(app.engine.url, create=False)
    warn_unserved(app, chosen)
    names = ", ".join(f"{k}={v}" for k, v in chosen.items())
    log_event(log, logging.INFO, "worker.started",
              f"chimeway worker on {args.shown_url}: {names} (Ctrl-C or SIGTERM stops it gracefully)",
              database=args.shown_url, queues=chosen, node=app.queue.node, pid=os.getpid())
    ran = app.queue.run_worker(queues=chosen, poll_interval=args.poll_interval,
                               shutdown_grace=args.shutdown_grace)
    log_event(log, logging.INFO, "worker.stopped", f"worker stopped after running {ran} jobs", ran=ran)
    # Jobs still running past the shutdown grace were released for another
    # worker; their threads must not keep this process alive.
    for handler in logging.getLogger("chimeway").handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def cmd_health(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    args.shown_url = mask_url(app.engine.url)
    check_sqlite(app.engine.url, create=False)
    node = args.node or app.queue.node
    now = app.clock.now()
    beats = [w for w in app.queue.live_workers() if w.node == node]
    fresh = [w for w in beats if (now - w.heartbeat_at).total_seconds() <= args.max_age]
    if fresh:
        age = min((now - w.heartbeat_at).total_seconds() for w in fresh)
        print(f"ok: {len(fresh)} worker(s) on {node}, last heartbeat {age:.1f}s ago")
        return 0
    last = max((w.heartbeat_at for w in beats), default=None)
    seen = f"last heartbeat {(now - last).total_seconds():.0f}s ago" if last else "no heartbeat recorded"
    print(f"unhealthy: no worker on {node} has beaten in the last {args.max_age:g}s ({seen})")
    return 1


def add_log_options(parser: argparse.ArgumentParser, default_level: str = "info") -> None:
    parser.add_argument("--log-level", choices=LEVELS, default=default_level,
                        help=f"least severe log lines shown (default {default_level})")
    parser.add_argument("--log-format", choices=FORMATS, default="text",
                        help="text lines, or one JSON object per line (default text)")


def add_worker_parser(sub: Any) -> None:
    """Add ``chimeway worker`` to the top-level subparsers."""
    p = sub.add_parser(
        "worker", help="run a queue worker for your app",
        description="Runs every queue the app declares (Chimeway's own included) unless --only "
                    "is given; warns at start about queues with waiting jobs that nobody runs.")
    p.add_argument("--app", required=True, metavar="MODULE:APP",
                   help="your Chimeway app, e.g. myproject.notify:app")
    p.add_argument("--queue", action="append", metavar="NAME=N",
                   help="set a queue's concurrency; repeat for several")
    p.add_argument("--only", action="store_true",
                   help="run only the queues given with --queue")
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N",
                   help=f"concurrency of queues not given with --queue (default {DEFAULT_CONCURRENCY})")
    p.add_argument("--poll-interval", type=float, default=1.0, metavar="SECONDS")
    p.add_argument("--shutdown-grace", type=float, default=15.0, metavar="SECONDS",
                   help="how long running jobs get to finish on SIGTERM")
    add_log_options(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "health", help="exit 0 if a worker on this host has a fresh heartbeat (liveness probes)",
        description="Checks the workers table: exit 0 when a worker on this host (or --node) "
                    "beat within --max-age seconds, 1 otherwise; a database mistake exits 2.")
    p.add_argument("--app", required=True, metavar="MODULE:APP", help="your Chimeway app")
    p.add_argument("--node", help="the worker host name to look for (default: this host's)")
    p.add_argument("--max-age", type=float, default=30.0, metavar="SECONDS",
                   help="how old the last heartbeat may be (default 30; workers beat every 5)")
    p.set_defaults(func=cmd_health)
