"""Structured log records with stable event names.

Chimeway logs through the standard :mod:`logging` module, under loggers named
``chimeway.*``. Every record Chimeway emits about something that happened
carries a stable event name (``job.retry``, ``worker.started``, ...) and its
fields as attributes, so a JSON formatter can ship them as they are and a
text formatter can print them readably. Event names never change meaning;
fields may be added.

::

    import logging
    from chimeway.logs import JsonFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.getLogger("chimeway").addHandler(handler)
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = [
    "EVENT_ATTR",
    "FIELDS_ATTR",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "log_event",
]

EVENT_ATTR = "chimeway_event"
FIELDS_ATTR = "chimeway_fields"
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")


def log_event(
    logger: logging.Logger, level: int, event: str, message: str, /, *, exc_info: bool = False,
    **fields: Any,
) -> None:
    """Log ``message`` as the stable event ``event`` with its ``fields``.

    Costs one level check when the logger would drop the record.

    Args:
        logger: a ``chimeway.*`` logger.
        level: a :mod:`logging` level.
        event: the stable event name, e.g. ``"job.retry"``.
        message: the human-readable line.
        exc_info: attach the exception being handled (with its traceback).
        **fields: JSON-friendly values describing the event.
    """
    if logger.isEnabledFor(level):
        logger.log(level, "%s", message, exc_info=exc_info, stacklevel=2,
                   extra={EVENT_ATTR: event, FIELDS_ATTR: fields})


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``event``, ``message`` and the fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, EVENT_ATTR, None) or "log",
            "message": record.getMessage(),
        }
        for key, value in (getattr(record, FIELDS_ATTR, None) or {}).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL event: message`` on one line (plus a traceback when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, EVENT_ATTR, None)
        head = f"{_iso(record.created)} {record.levelname:<7} "
        line = head + (f"{event}: " if event else f"{record.name}: ") + record.getMessage()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send ``chimeway.*`` records at ``level`` and above to ``stream`` (default stderr).

    Used by the ``chimeway`` command; applications with their own logging
    setup attach :class:`JsonFormatter` or :class:`TextFormatter` themselves.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error``.
        fmt: ``text`` or ``json``.
        stream: where lines go.
    """
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger = logging.getLogger("chimeway")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level.upper()))
    logger.propagate = False

# A library stays quiet unless the application configures logging.
logging.getLogger("chimeway").addHandler(logging.NullHandler())
