"""Public helpers for testing code that uses Chimeway.

- :class:`FakeClock`: pass ``clock=FakeClock()`` to ``Chimeway`` and move time
  with ``advance()`` instead of sleeping.
- :class:`RecordingChannel`: a channel that keeps every message it was given
  (``.sent``) and can be told to fail.
- :func:`channel_contract`: checks a custom channel honours the ``Channel``
  contract (results, error classification, no secrets in details).
- Oban's testing vocabulary for jobs: :func:`assert_enqueued`,
  :func:`refute_enqueued`, :func:`all_enqueued`, :func:`perform_job`,
  :func:`drain` and :func:`inline_jobs`. Each takes the ``Chimeway`` app (or
  a ``JobQueue``) first.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from chimeway.channels.base import Channel
from chimeway.clock import utc
from chimeway.errors import ConfigurationError, InvalidInputError
from chimeway.queue import JobHandle, JobQueue, JobSummary
from chimeway.queue.args import check_args
from chimeway.queue.draining import DrainResult
from chimeway.testing_contract import ContractReport, ContractViolation, channel_contract
from chimeway.values import DeliveryResult, Message, Recipient

__all__ = [
    "ContractReport",
    "ContractViolation",
    "DrainResult",
    "FakeClock",
    "Performed",
    "RecordingChannel",
    "all_enqueued",
    "assert_enqueued",
    "channel_contract",
    "drain",
    "inline_jobs",
    "perform_job",
    "refute_enqueued",
]


class FakeClock:
    """A clock that only moves when told to.

    Args:
        start: the initial time (default: 2026-01-01 09:00 UTC).
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = utc(start) if start is not None else datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move time forward by ``delta`` (or ``timedelta(**kwargs)``); returns the new time."""
        step = delta if delta is not None else timedelta(**kwargs)
        if step < timedelta(0):
            raise ValueError("a FakeClock only moves forward")
        with self._lock:
            self._now += step
            return self._now

    def set(self, when: datetime) -> None:
        """Jump to ``when`` (forward only)."""
        when = utc(when)
        with self._lock:
            if when < self._now:
                raise ValueError("a FakeClock only moves forward")
            self._now = when


class RecordingChannel(Channel):
    """Keeps every message it is given; succeeds unless told otherwise.

    Args:
        respond: optional function deciding each result (e.g. fail the first
            two attempts); default: always succeed.
        required_fields: fields that ``validate()`` insists on.

    Attributes:
        sent: messages that were delivered successfully, in order.
        calls: every message ``send`` was called with, including failures.
    """

    def __init__(
        self,
        respond: Callable[[Message], DeliveryResult] | None = None,
        *,
        required_fields: tuple[str, ...] = (),
    ) -> None:
        self._respond = respond
        self.sent: list[Message] = []
        self.calls: list[Message] = []
        self._lock = threading.Lock()
        self._required = required_fields

    def validate(self, fields: Mapping[str, Any], recipient: Recipient) -> str | None:
        missing = [name for name in self._required if not fields.get(name)]
        return f"missing required field(s): {', '.join(missing)}" if missing else None

    def send(self, message: Message) -> DeliveryResult:
        result = self._respond(message) if self._respond is not None else DeliveryResult.ok(
            provider_message_id=f"rec-{message.delivery_id}"
        )
        with self._lock:
            self.calls.append(message)
            if result.outcome == "succeeded":
                self.sent.append(message)
        return result

    def clear(self) -> None:
        """Forget everything recorded so far."""
        with self._lock:
            self.sent.clear()
            self.calls.clear()


# --- jobs: Oban's testing vocabulary ------------------------------------------

Worker = JobHandle | Callable[..., Any] | str


def _queue(target: Any) -> JobQueue:
    if isinstance(target, JobQueue):
        return target
    queue = getattr(target, "queue", None)
    if isinstance(queue, JobQueue):
        return queue
    raise ConfigurationError(f"expected a Chimeway app or a JobQueue, got {type(target).__name__}")


def _handle(q: JobQueue, worker: Worker) -> JobHandle | None:
    if isinstance(worker, JobHandle):
        return worker
    handles = q.handles
    if isinstance(worker, str):
        return handles.get(worker)
    return next((h for h in handles.values() if h.fn is worker), None)


def _worker_name(q: JobQueue, worker: Worker) -> str:
    handle = _handle(q, worker)
    if handle is not None:
        return handle.name
    if isinstance(worker, str):
        return worker
    if callable(worker):
        return f"{worker.__module__}.{worker.__qualname__}"
    raise InvalidInputError(f"worker must be a job handle, a function or a worker name, got {worker!r}")


def _json(args: Mapping[str, Any]) -> dict[str, Any]:
    plain: dict[str, Any] = json.loads(json.dumps(check_args(args)))
    return plain


def _contains(actual: Any, expected: Any) -> bool:
    # Oban's args match: every key given must be there with a matching value;
    # nested objects match the same way, other values must be equal.
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and _contains(actual[key], value) for key, value in expected.items())
    return bool(actual == expected)


def _seconds(value: float | timedelta, name: str) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise InvalidInputError(f"{name} must be seconds or a timedelta, got {value!r}")


def _matching(
    target: Any, worker: Worker | None, args: Mapping[str, Any] | None, queue: str | None,
    scheduled_in: float | timedelta | None, delta: float | timedelta,
) -> tuple[list[JobSummary], list[JobSummary], dict[str, Any]]:
    q = _queue(target)
    wanted: dict[str, Any] = {}
    name = None
    if worker is not None:
        name = wanted["worker"] = _worker_name(q, worker)
    if queue is not None:
        wanted["queue"] = queue
    expected = None
    if args is not None:
        expected = wanted["args"] = _json(args)
    due = None
    tolerance = _seconds(delta, "delta")
    if scheduled_in is not None:
        wanted["scheduled_in"] = _seconds(scheduled_in, "scheduled_in")
        due = q.clock.now() + timedelta(seconds=wanted["scheduled_in"])
    waiting = q.enqueued()
    found = [
        job for job in waiting
        if (name is None or job.worker == name) and (queue is None or job.queue == queue)
        and (expected is None or _contains(job.args, expected))
        and (due is None or abs((job.scheduled_at - due).total_seconds()) <= tolerance)
    ]
    return found, waiting, wanted


def _listing(jobs: list[JobSummary], limit: int = 20) -> str:
    if not jobs:
        return "  (none)"
    lines = [f"  {j.worker} on {j.queue} args={j.args} scheduled_at={j.scheduled_at.isoformat()}"
             for j in jobs[:limit]]
    if len(jobs) > limit:
        lines.append(f"  ... and {len(jobs) - limit} more")
    return "\n".join(lines)


def all_enqueued(
    target: Any, *, worker: Worker | None = None, args: Mapping[str, Any] | None = None,
    queue: str | None = None,
) -> list[JobSummary]:
    """Jobs waiting to run (``available`` or ``scheduled``) that match, oldest first.

    Args:
        target: the ``Chimeway`` app or a ``JobQueue``.
        worker: a job handle, a registered function or a worker name.
        args: a subset of the job's args (nested objects match the same way).
        queue: the queue name.
    """
    return _matching(target, worker, args, queue, None, 0.0)[0]


def assert_enqueued(
    target: Any, *, worker: Worker | None = None, args: Mapping[str, Any] | None = None,
    queue: str | None = None, scheduled_in: float | timedelta | None = None,
    delta: float | timedelta = 1.0,
) -> JobSummary:
    """Assert a matching job waits to run (``available`` or ``scheduled``); returns the first match.

    Args:
        target: the ``Chimeway`` app or a ``JobQueue``.
        worker: a job handle, a registered function or a worker name.
        args: a subset of the job's args (nested objects match the same way).
        queue: the queue name.
        scheduled_in: seconds (or a timedelta) from the clock's now until the job is due.
        delta: how far ``scheduled_in`` may be off, in seconds (default 1).

    Raises:
        AssertionError: no waiting job matches; the message lists the waiting jobs.
    """
    found, waiting, wanted = _matching(target, worker, args, queue, scheduled_in, delta)
    if not found:
        raise AssertionError(f"expected a job matching {wanted} to be enqueued; "
                             f"enqueued jobs:\n{_listing(waiting)}")
    return found[0]


def refute_enqueued(
    target: Any, *, worker: Worker | None = None, args: Mapping[str, Any] | None = None,
    queue: str | None = None, scheduled_in: float | timedelta | None = None,
    delta: float | timedelta = 1.0,
) -> None:
    """Assert no matching job waits to run; the options are :func:`assert_enqueued`'s.

    Raises:
        AssertionError: some job matches; the message lists them.
    """
    found, _, wanted = _matching(target, worker, args, queue, scheduled_in, delta)
    if found:
        raise AssertionError(f"expected no job matching {wanted} to be enqueued; found:\n{_listing(found)}")


@dataclass(frozen=True, kw_only=True)
class Performed:
    """What :func:`perform_job` saw: the state a worker would give the job, and why.

    Args:
        state: ``completed``, ``cancelled``, ``scheduled`` (snoozed),
            ``retryable`` (failed, attempts left) or ``discarded`` (failed on
            the last attempt).
        value: what the function returned (``None`` when it raised).
        error: the error a worker would record (cancel reason, snooze, failure).
        exception: the exception raised or returned, if any.
        scheduled_at: when a snoozed or retryable job would run again.
    """

    state: str
    value: Any = None
    error: str | None = None
    exception: BaseException | None = None
    scheduled_at: datetime | None = None


def perform_job(
    target: Any, worker: Worker, args: Mapping[str, Any] | None = None, *, attempt: int = 1,
    max_attempts: int | None = None, queue: str | None = None,
) -> Performed:
    """Run one job function exactly as a worker would, without enqueueing it.

    The args are checked as ``enqueue`` checks them and pass through JSON; a
    ``job`` parameter gets a ``JobInfo``; raising or returning ``Cancel``,
    ``Snooze``, ``Retry`` or another exception gives the outcome a worker
    would record. Job telemetry callbacks see the run.

    Args:
        target: the ``Chimeway`` app or a ``JobQueue``.
        worker: a job handle, a registered function or a registered worker name.
        args: the job's arguments.
        attempt: the attempt to run it as (from 1), e.g. the last one.
        max_attempts: defaults to the job's.
        queue: defaults to the job's.

    Raises:
        ConfigurationError: the worker is not registered.
        ParamsNotJSONError: the args are not JSON.
    """
    q = _queue(target)
    handle = _handle(q, worker)
    if handle is None or q.handles.get(handle.name) is not handle:
        raise ConfigurationError(f"worker {worker!r} is not a job registered on this queue")
    result = q.perform(handle, args or {}, attempt=attempt, max_attempts=max_attempts, queue=queue)
    return Performed(state=result.state, value=result.value, error=result.error,
                     exception=result.exception, scheduled_at=result.values.get("scheduled_at"))


def drain(
    target: Any, queues: Iterable[str] | str | None = None, *, with_scheduled: bool | datetime = True,
) -> DrainResult:
    """Run every job of the queues in this thread until none is left; returns how they ended.

    Jobs the drained jobs enqueue run too; each job runs at most once per
    drain (one that fails or snoozes is counted and left as a worker leaves
    it). Unlike ``app.work()``, scheduled and retryable jobs run before their
    time unless ``with_scheduled=False``.

    Args:
        target: the ``Chimeway`` app or a ``JobQueue``.
        queues: a queue name or names (default: every declared queue).
        with_scheduled: run jobs scheduled for later too (``True``), those due
            by a given datetime, or only jobs already due (``False``).
    """
    return _queue(target).drain(queues, with_scheduled=with_scheduled)


@contextmanager
def inline_jobs(target: Any) -> Iterator[None]:
    """Run your own jobs right after the transaction that enqueued them commits.

    Inside the block, a job of your workers that is due runs in the
    committing thread as soon as its transaction commits, through the queue
    as a worker would run it (its row shows the outcome); a rollback runs
    nothing. Chimeway's own jobs (deliveries, workflows, signals) are left to
    ``app.work()``, and scheduled jobs wait for their time.

    Args:
        target: the ``Chimeway`` app or a ``JobQueue``.
    """
    q = _queue(target)
    before = q.inline
    q.inline = True
    try:
        yield
    finally:
        q.inline = before
