"""OpenTelemetry spans and metrics, and log lines for delivery outcomes.

With ``opentelemetry-api`` installed (``pip install 'chimeway[otel]'``),
Chimeway reports through whatever tracer and meter providers the
application configures; without it every hook is one ``if ENABLED`` that
is false. With the API installed but no provider configured (or a no-op
one), nothing records: each hook asks :func:`tracing` / :func:`metering`
at call time, a look at the global provider, and builds no span, no
attribute and no measurement. Applications usually configure the SDK after
importing their libraries, so the answer is never cached: a provider set
later is used from the next call on. Names are stable:

Spans (attributes carry the ids):
    ``chimeway.trigger`` → ``chimeway.plan`` → ``chimeway.policy`` /
    ``chimeway.workflow`` → ``chimeway.dispatch``; ``chimeway.job`` around
    every job a worker runs; ``chimeway.attempt`` around every provider call.

Metrics:
    ``chimeway.deliveries`` (counter: outcomes by ``status`` and ``channel``),
    ``chimeway.send.duration`` (histogram, seconds, by ``channel`` and ``outcome``),
    ``chimeway.job.queue_latency`` (histogram, seconds from due to start, by ``queue``),
    ``chimeway.jobs`` (counter: job runs by ``queue`` and final ``state``),
    ``chimeway.queue.depth`` (gauge by ``queue`` and ``state``, after
    :func:`observe_queue_depth`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Protocol

from chimeway.logs import log_event

try:
    from opentelemetry import metrics as _metrics
    from opentelemetry import trace as _trace
    from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, Status, StatusCode
except ImportError:  # the optional extra is not installed: every hook is a no-op
    _trace = None  # type: ignore[assignment]
    _metrics = None  # type: ignore[assignment]

__all__ = [
    "ENABLED",
    "CountsJobs",
    "attempt",
    "attempt_async",
    "job_finished",
    "job_span",
    "metering",
    "observe_queue_depth",
    "observing",
    "recorded",
    "span",
    "traced",
    "tracing",
    "trigger",
]

log = logging.getLogger("chimeway.deliveries")

ENABLED: bool = _trace is not None
"""Whether ``opentelemetry-api`` is importable (see :func:`tracing` and :func:`metering` for
whether anything records)."""

_NULL = nullcontext()

if ENABLED:
    # The API hands out a proxy until the application sets a provider; a
    # proxy or a no-op provider records nothing.
    _SILENT_TRACERS: tuple[type, ...] = (ProxyTracerProvider, NoOpTracerProvider)
    _silent_meters: list[type] = [_metrics.NoOpMeterProvider]
    try:
        from opentelemetry.metrics._internal import _ProxyMeterProvider
    except ImportError:  # another API release: treat its proxy as a provider that records
        pass
    else:
        _silent_meters.append(_ProxyMeterProvider)
    _SILENT_METERS: tuple[type, ...] = tuple(_silent_meters)
    # Proxies: they follow providers the application sets later.
    _tracer = _trace.get_tracer("chimeway")
    _meter = _metrics.get_meter("chimeway")
    _deliveries = _meter.create_counter(
        "chimeway.deliveries", unit="{delivery}", description="Delivery outcomes by status and channel")
    _send_duration = _meter.create_histogram(
        "chimeway.send.duration", unit="s", description="Time a channel took to send one delivery")
    _queue_latency = _meter.create_histogram(
        "chimeway.job.queue_latency", unit="s", description="Time from a job being due to its start")
    _jobs = _meter.create_counter(
        "chimeway.jobs", unit="{job}", description="Job runs by queue and the state they ended in")


def tracing() -> bool:
    """Whether spans would be recorded now: the API is installed and a real tracer provider is set."""
    return ENABLED and not isinstance(_trace.get_tracer_provider(), _SILENT_TRACERS)


def metering() -> bool:
    """Whether measurements would be recorded now: the API is installed and a real meter provider is set."""
    return ENABLED and not isinstance(_metrics.get_meter_provider(), _SILENT_METERS)


def observing() -> bool:
    """Whether spans or measurements would be recorded now (see :func:`tracing`, :func:`metering`)."""
    return tracing() or metering()


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, str | bool | int | float):
            out[key] = value
        elif isinstance(value, list | tuple):
            out[key] = [str(v) for v in value]
        else:
            out[key] = str(value)
    return out


@contextmanager
def _span(name: str, attributes: Mapping[str, Any]) -> Iterator[Any]:
    with _tracer.start_as_current_span(name, attributes=_clean(attributes)) as current:
        yield current


def span(name: str, **attributes: Any) -> Any:
    """A context manager for a span named ``name`` (a no-op without OpenTelemetry).

    Args:
        name: the stable span name.
        **attributes: ids and names; ``None`` values are left out.
    """
    if not tracing():
        return _NULL
    return _span(name, attributes)


def traced(name: str, fn: Callable[..., Any], **attributes: Any) -> Callable[..., Any]:
    """``fn`` wrapped in a span named ``name`` (``fn`` itself without OpenTelemetry).

    Args:
        name: the stable span name.
        fn: the function to wrap.
        **attributes: attributes every call's span carries.
    """
    if not ENABLED:
        return fn

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not tracing():
            return fn(*args, **kwargs)
        with _span(name, attributes):
            return fn(*args, **kwargs)

    return wrapper


def set_attributes(current: Any, **attributes: Any) -> None:
    """Add attributes to a span from :func:`span` (ignored without OpenTelemetry)."""
    if current is not None and tracing():
        current.set_attributes(_clean(attributes))


def job_span(job_id: int, worker: str, queue: str, attempt: int, waited: float) -> Any:
    """The span around one job run; records how long it waited after becoming due."""
    if not ENABLED:
        return _NULL
    if metering():
        _queue_latency.record(max(0.0, waited), {"queue": queue})
    if not tracing():
        return _NULL
    return _span("chimeway.job", {"chimeway.job.id": job_id, "chimeway.job.worker": worker,
                                  "chimeway.job.queue": queue, "chimeway.job.attempt": attempt})


def job_finished(current: Any, queue: str, state: str, error: str | None) -> None:
    """Count a job run by the state it ended in, and mark its span failed on an error."""
    if not ENABLED:
        return
    if metering():
        _jobs.add(1, {"queue": queue, "state": state})
    if current is not None:
        current.set_attribute("chimeway.job.state", state)
        if state in ("retryable", "discarded"):
            current.set_status(Status(StatusCode.ERROR, error or state))


MAX_IDS = 100


def trigger(run: Callable[..., Sequence[Any]], notifier: Any, requests: Sequence[Any], *args: Any) -> Any:
    """Run a trigger inside a ``chimeway.trigger`` span carrying the event and delivery ids.

    Callers check :func:`tracing` first; without a tracer that records, they call ``run`` directly.
    """
    attributes = {"chimeway.notifier": getattr(notifier, "key", str(notifier)), "chimeway.requests": len(requests)}
    with _span("chimeway.trigger", attributes) as current:
        results = run(*args, notifier, requests)
        current.set_attributes(_clean({
            "chimeway.event.ids": [str(r.event_id) for r in results][:MAX_IDS],
            "chimeway.delivery.ids": [str(d) for r in results for d in r.delivery_ids][:MAX_IDS],
            "chimeway.duplicates": sum(1 for r in results if r.duplicate),
        }))
        return results


def attempt(send: Callable[[Any], Any], item: Any) -> Any:
    """Make one provider call (``send(item)``) inside a ``chimeway.attempt`` span; record its duration.

    Callers check :func:`observing` first; without anything that records, they call ``send`` directly.
    """
    with _attempt_span(item) as current:
        started = time.perf_counter()
        result = send(item)
        _attempt_done(current, item, result, time.perf_counter() - started)
        return result


async def attempt_async(send: Callable[[Any], Awaitable[Any]], item: Any) -> Any:
    """:func:`attempt` for a coroutine: ``await send(item)`` inside the same span and measurement."""
    with _attempt_span(item) as current:
        started = time.perf_counter()
        result = await send(item)
        _attempt_done(current, item, result, time.perf_counter() - started)
        return result


def _attempt_span(item: Any) -> Any:
    if not tracing():
        return _NULL
    message = item.message
    return _span("chimeway.attempt", {
        "chimeway.delivery.id": str(message.delivery_id), "chimeway.event.id": str(message.event_id),
        "chimeway.channel": message.channel, "chimeway.attempt": message.attempt})


def _attempt_done(current: Any, item: Any, result: Any, seconds: float) -> None:
    outcome = str(getattr(result, "outcome", "unknown"))
    if metering():
        _send_duration.record(seconds, {"channel": item.message.channel, "outcome": outcome})
    if current is not None:
        current.set_attribute("chimeway.outcome", outcome)
        if outcome != "succeeded":
            current.set_status(Status(StatusCode.ERROR, str(getattr(result, "detail", None) or outcome)))


def recorded(outcomes: Iterable[Any], sent: Sequence[Any] = ()) -> None:
    """Count recorded delivery outcomes and log the ones an operator must see.

    ``delivery.failed`` (a temporary failure, retried later) is logged at
    WARNING, ``delivery.cancelled`` (permanent, bounced or out of attempts) at
    ERROR; successes are only counted.

    Args:
        outcomes: ``DeliveryOutcome`` values.
        sent: the attempts they record (for each delivery's channel).
    """
    outcomes = list(outcomes)
    warn = log.isEnabledFor(logging.WARNING) and any(o.status in ("failed", "cancelled") for o in outcomes)
    count = metering()
    if not (count or warn):
        return
    channels = {item.claimed.message.delivery_id: item.claimed.message.channel for item in sent}
    for outcome in outcomes:
        status = outcome.status
        channel = channels.get(outcome.delivery_id)
        if count:
            _deliveries.add(1, {"status": status, **({"channel": channel} if channel else {})})
        if warn and status in ("failed", "cancelled"):
            detail = getattr(outcome.result, "detail", None)
            log_event(log, logging.WARNING if status == "failed" else logging.ERROR, f"delivery.{status}",
                      f"delivery {outcome.delivery_id} {status} after attempt {outcome.attempt}: {detail}",
                      delivery_id=str(outcome.delivery_id), status=status, attempt=outcome.attempt,
                      channel=channel, detail=detail,
                      retry_at=outcome.retry_at.isoformat() if outcome.retry_at else None)


class _StateCounts(Protocol):
    @property
    def states(self) -> Mapping[str, int]: ...


class CountsJobs(Protocol):
    """What :func:`observe_queue_depth` reads: ``JobQueue.counts()``."""

    def counts(self) -> Mapping[str, _StateCounts]: ...


def observe_queue_depth(queue: CountsJobs) -> bool:
    """Report ``chimeway.queue.depth`` (jobs by queue and state) when the meter collects.

    Call it in one process (a worker, say): each collection counts the jobs
    table. Returns whether OpenTelemetry is there to report to.

    Args:
        queue: the app's job queue (``app.queue``).
    """
    if not ENABLED:
        return False
    from opentelemetry.metrics import CallbackOptions, Observation

    def observe(_: CallbackOptions) -> Iterable[Observation]:
        try:
            counts = queue.counts()
        except Exception:
            logging.getLogger("chimeway.telemetry").warning("could not count jobs for chimeway.queue.depth",
                                                            exc_info=True)
            return []
        return [Observation(n, {"queue": name, "state": state})
                for name, row in counts.items() for state, n in row.states.items()]

    _meter.create_observable_gauge("chimeway.queue.depth", callbacks=[observe], unit="{job}",
                                   description="Jobs by queue and state")
    return True
