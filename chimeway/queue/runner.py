"""Running one claimed job and turning what happened into the row's next state.

This module decides outcomes only; it never touches the database.

A job function may *return* an exception instead of raising it (Oban's
``{:error, reason}``, ``{:cancel, reason}`` and ``{:snooze, seconds}``):
``return Cancel("gone")`` cancels, ``return Snooze(60)`` snoozes,
``return Retry(...)`` or any other returned ``Exception`` fails the attempt,
exactly as raising it would.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from chimeway.queue.outcomes import Cancel, JobInfo, Retry, Snooze
from chimeway.queue.registry import JobHandle

__all__ = ["Claimed", "Result", "crashed", "run_job"]

TRACEBACK_FRAMES = 4
TRACEBACK_CHARS = 2000


@dataclass(frozen=True)
class Claimed:
    """A job this node has claimed (state ``executing``, attempt already counted).

    ``observed``: whether telemetry records this run, decided once per claim
    (``None``: decide when it runs).
    """

    info: JobInfo
    priority: int
    observed: bool | None = None


@dataclass(frozen=True)
class Result:
    """The outcome of one run: the state to write and the columns that go with it.

    ``entry`` is appended to the row's ``errors``, and a snooze (state
    ``scheduled``) counts itself in the row's ``meta``, by the statement that
    records the outcome: a claim never reads either column.
    """

    state: str
    values: dict[str, Any] = field(default_factory=dict)
    duration: float = 0.0
    error: str | None = None
    entry: dict[str, Any] | None = None
    # What the function returned, or the exception that ended it (for tests
    # that run one job by hand; the queue itself records only the above).
    value: Any = None
    exception: BaseException | None = None


def _entry(info: JobInfo, now: datetime, error: str, exc: BaseException | None) -> dict[str, Any]:
    tb = ""
    if exc is not None:
        tb = "".join(traceback.format_exception(exc, limit=-TRACEBACK_FRAMES))[-TRACEBACK_CHARS:]
    return {"attempt": info.attempt, "at": now.isoformat(), "error": error, "traceback": tb}


def run_job(
    job: Claimed,
    handles: Mapping[str, JobHandle],
    now: Callable[[], datetime],
    backoff: Callable[[int], float],
) -> Result:
    """Call the job's function and decide the job's next state.

    Args:
        job: the claimed job.
        handles: registered workers by name.
        now: the clock.
        backoff: seconds to wait after a failed attempt number.
    """
    info = job.info
    handle = handles.get(info.worker)
    if handle is None:
        error = f"worker {info.worker!r} is not registered on this node; job discarded"
        return _fail(job, now(), error, None, backoff, 0.0, discard=True)
    kwargs = dict(info.args)
    if handle.takes_job:
        kwargs["job"] = info
    started = time.perf_counter()
    try:
        value = handle.fn(**kwargs)
        if isinstance(value, Exception):
            raise value
    except Cancel as exc:
        at = now()
        return Result("cancelled", {"cancelled_at": at}, time.perf_counter() - started, exc.reason,
                      entry=_entry(info, at, f"cancelled: {exc.reason}", None), exception=exc)
    except Snooze as exc:
        at = now()
        values = {"scheduled_at": at + timedelta(seconds=exc.seconds), "attempt": info.attempt - 1}
        return Result("scheduled", values, time.perf_counter() - started, str(exc), exception=exc)
    except Retry as exc:
        duration = time.perf_counter() - started
        return _fail(job, now(), f"Retry: {exc.reason}", exc, backoff, duration, after=exc.after)
    except Exception as exc:
        duration = time.perf_counter() - started
        return _fail(job, now(), f"{type(exc).__name__}: {exc}", exc, backoff, duration)
    return Result("completed", {}, time.perf_counter() - started, value=value)


def _fail(
    job: Claimed,
    at: datetime,
    error: str,
    exc: BaseException | None,
    backoff: Callable[[int], float],
    duration: float,
    *,
    after: float | None = None,
    discard: bool = False,
) -> Result:
    info = job.info
    entry = _entry(info, at, error, exc)
    if discard or info.attempt >= info.max_attempts:
        return Result("discarded", {"discarded_at": at}, duration, error, entry=entry, exception=exc)
    delay = max(backoff(info.attempt), after or 0.0)
    return Result("retryable", {"scheduled_at": at + timedelta(seconds=delay)}, duration, error,
                  entry=entry, exception=exc)


def crashed(job: Claimed, at: datetime, exc: BaseException, backoff: Callable[[int], float]) -> Result:
    """The outcome of a run that escaped as a ``BaseException`` (``SystemExit`` and kin)."""
    return _fail(job, at, f"{type(exc).__name__}: {exc}", exc, backoff, 0.0)
