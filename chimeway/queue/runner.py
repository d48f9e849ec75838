"""Running one claimed job and turning what happened into the row's next state.

This module decides outcomes only; it never touches the database.

A job function may *return* an exception instead of raising it (Oban's
``{:error, reason}``, ``{:cancel, reason}`` and ``{:snooze, seconds}``):
``return Cancel("gone")`` cancels, ``return Snooze(60)`` snoozes,
``return Retry(...)`` or any other returned ``Exception`` fails the attempt,
exactly as raising it would.

A chunk function may also give a ``concurrent.futures.Future`` as a job's
outcome: that job's result comes when the future resolves (:class:`Later`),
and a worker keeps its slot taken until then, while the chunk's other jobs
finish at once.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from chimeway.queue.outcomes import Cancel, JobInfo, Retry, Snooze
from chimeway.queue.registry import JobHandle

__all__ = ["Claimed", "Later", "Result", "crashed", "outcome_of", "run_chunk", "run_job", "settle"]

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


@dataclass(frozen=True)
class Later:
    """A chunk's job whose outcome is still on its way: ``future`` resolves to it.

    ``started`` is when the chunk's call began (``time.perf_counter()``), for
    the job's duration.
    """

    future: Future[Any]
    started: float


def outcome_of(future: Future[Any]) -> Any:
    """What a resolved future gives as a job's outcome: its value, or the exception it holds."""
    exc = future.exception()
    if exc is None:
        return future.result()
    return exc if isinstance(exc, Exception) else RuntimeError(f"{type(exc).__name__}: {exc}")


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

    A chunk function (registered with ``chunk=``) is called with this job alone.

    Args:
        job: the claimed job.
        handles: registered workers by name.
        now: the clock.
        backoff: seconds to wait after a failed attempt number.
    """
    info = job.info
    handle = handles.get(info.worker)
    if handle is None:
        return _unregistered(job, now, backoff)
    if handle.chunk is not None:
        result = run_chunk([job], handles, now, backoff)[0]
        if isinstance(result, Later):
            # Run on its own (a drain, a test): wait for it here.
            return settle(job, outcome_of(result.future), time.perf_counter() - result.started, now, backoff)
        return result
    kwargs = dict(info.args)
    if handle.takes_job:
        kwargs["job"] = info
    started = time.perf_counter()
    try:
        value = handle.fn(**kwargs)
    except Exception as exc:
        value = exc
    return settle(job, value, time.perf_counter() - started, now, backoff)


def run_chunk(
    jobs: Sequence[Claimed],
    handles: Mapping[str, JobHandle],
    now: Callable[[], datetime],
    backoff: Callable[[int], float],
) -> list[Result | Later]:
    """Call a chunk function once with several jobs of its worker; one result per job, in order.

    The function returns one outcome per job, in the order given: a value
    (the job completes), an exception (as if that job's function had
    returned it: ``Cancel``, ``Snooze``, ``Retry`` or a failure), or a
    ``Future`` of either (the job's result comes later: :class:`Later`). An
    exception it raises, or a list of the wrong length, is every job's outcome.

    Args:
        jobs: claimed jobs of one worker.
        handles: registered workers by name.
        now: the clock.
        backoff: seconds to wait after a failed attempt number.
    """
    handle = handles.get(jobs[0].info.worker)
    if handle is None or handle.chunk is None:
        return [run_job(job, handles, now, backoff) for job in jobs]
    started = time.perf_counter()
    try:
        values = list(handle.fn([job.info for job in jobs]))
        if len(values) != len(jobs):
            raise TypeError(f"chunk function {handle.name!r} returned {len(values)} outcomes for {len(jobs)} jobs")
    except Exception as exc:
        values = [exc] * len(jobs)
    duration = time.perf_counter() - started
    return [Later(value, started) if isinstance(value, Future) else settle(job, value, duration, now, backoff)
            for job, value in zip(jobs, values, strict=True)]


def settle(job: Claimed, value: Any, duration: float, now: Callable[[], datetime],
           backoff: Callable[[int], float]) -> Result:
    """The result of a run that returned ``value`` (an ``Exception`` if it failed or raised one)."""
    if not isinstance(value, Exception):
        return Result("completed", {}, duration, value=value)
    info = job.info
    at = now()
    if isinstance(value, Cancel):
        return Result("cancelled", {"cancelled_at": at}, duration, value.reason,
                      entry=_entry(info, at, f"cancelled: {value.reason}", None), exception=value)
    if isinstance(value, Snooze):
        values = {"scheduled_at": at + timedelta(seconds=value.seconds), "attempt": info.attempt - 1}
        return Result("scheduled", values, duration, str(value), exception=value)
    if isinstance(value, Retry):
        return _fail(job, at, f"Retry: {value.reason}", value, backoff, duration, after=value.after)
    return _fail(job, at, f"{type(value).__name__}: {value}", value, backoff, duration)


def _unregistered(job: Claimed, now: Callable[[], datetime], backoff: Callable[[int], float]) -> Result:
    error = f"worker {job.info.worker!r} is not registered on this node; job discarded"
    return _fail(job, now(), error, None, backoff, 0.0, discard=True)


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
