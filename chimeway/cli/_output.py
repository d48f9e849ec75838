"""Printing tables and JSON for the command line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

__all__ = ["age", "print_json", "print_rows", "short"]


def print_rows(rows: Sequence[dict[str, Any]], empty: str) -> None:
    """Print dicts as aligned columns (keys of the first row), or ``empty``."""
    if not rows:
        print(empty)
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys).rstrip())
    for row in rows:
        print("  ".join(str(row.get(k, "")).ljust(widths[k]) for k in keys).rstrip())


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON (datetimes and ids as strings)."""
    print(json.dumps(value, indent=2, default=_plain, ensure_ascii=False))


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def short(text: str | None, width: int = 70) -> str:
    """``text`` on one line, cut to ``width`` characters."""
    if not text:
        return ""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def age(at: datetime | None, now: datetime) -> str:
    """How long ago ``at`` was, in the largest sensible unit (``"3m"``, ``"2h"``)."""
    if at is None:
        return "-"
    seconds = (now - at).total_seconds()
    suffix = " ago" if seconds >= 0 else " from now"
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}{suffix}"
    return f"{int(seconds)}s{suffix}"
