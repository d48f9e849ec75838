"""``chimeway prune``: delete every row past its retention age now, with progress and a summary."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from typing import Any

from chimeway.cli._output import print_json, print_rows
from chimeway.cli._target import open_app

__all__ = ["add_prune_parser"]

PROGRESS_EVERY = 1.0


def cmd_prune(args: argparse.Namespace) -> int:
    app = open_app(args)
    started = time.monotonic()
    shown = started
    running: dict[str, int] = {}

    def progress(target: str, deleted: Mapping[str, int]) -> None:
        nonlocal shown
        running[target] = running.get(target, 0) + sum(deleted.values())
        if not args.json and time.monotonic() - shown >= PROGRESS_EVERY:
            shown = time.monotonic()
            print(f"… {sum(running.values())} rows deleted so far (now on {target})", flush=True)

    deleted = app.pruner.prune(app.clock.now(), on_batch=progress)
    elapsed = time.monotonic() - started
    if args.json:
        print_json({"deleted": deleted, "total": sum(deleted.values()), "seconds": round(elapsed, 3)})
        return 0
    rows = [{"table": table, "deleted": n} for table, n in sorted(deleted.items()) if n]
    print_rows(rows, "nothing is past its age")
    print(f"deleted {sum(deleted.values())} rows in {elapsed:.1f}s")
    return 0


def add_prune_parser(sub: Any, add_target: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``chimeway prune`` to the command line's subcommands."""
    p = sub.add_parser(
        "prune", help="delete every row past its retention age now",
        description="One full pass of the pruner every worker runs each minute: delete, in short "
                    "transactions, every row past its age (the app's Retention; the defaults "
                    "with --database-url alone), until none is left.")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_target(p)
    p.set_defaults(func=cmd_prune)
