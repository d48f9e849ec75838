"""The plugin interface, and the threads a worker runs its plugins on.

A plugin is periodic work every worker of a queue does besides running jobs:
rescuing dead workers' jobs, pruning, firing cron ticks, re-driving
deliveries. It has a ``name``, an ``interval`` and a ``run(now)`` that does
one pass and says how much it did. A worker runs each plugin on its own
thread, so a slow pass never holds up claiming jobs or another plugin, and
a pass that raises is logged and tried again later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from chimeway import telemetry
from chimeway.clock import Clock
from chimeway.errors import ConfigurationError
from chimeway.logs import log_event

__all__ = ["Periodic", "Plugin", "PluginThreads", "check_plugins"]

log = logging.getLogger("chimeway.queue")

# After a failed pass the next one waits longer each time (a database that is
# down would otherwise log a traceback every second), up to this.
MAX_FAILURE_DELAY = 60.0


@runtime_checkable
class Plugin(Protocol):
    """Periodic work a worker does besides running jobs (Oban's plugins).

    ``run(now)`` does one pass at ``now`` (the queue clock's time) and
    returns how many things it handled (jobs rescued, rows pruned, ticks
    fired); it must be safe to call from several workers at once.
    """

    @property
    def name(self) -> str:
        """A stable name, unique among a queue's plugins (``"pruner"``)."""
        ...

    @property
    def interval(self) -> timedelta:
        """How long a worker waits between two passes."""
        ...

    def run(self, now: datetime) -> int:
        """One pass at ``now``; returns how many things it handled."""
        ...


class Periodic:
    """A plugin made of a function: ``fn()`` every ``interval``.

    Args:
        name: the plugin's name.
        interval: time between calls.
        fn: does one pass; an ``int`` it returns is what the pass handled.
    """

    def __init__(self, name: str, interval: timedelta, fn: Callable[[], object]) -> None:
        self.name = name
        self.interval = interval
        self.fn = fn

    def __repr__(self) -> str:
        return f"<Periodic {self.name} every {self.interval.total_seconds():g}s>"

    def run(self, now: datetime) -> int:
        """Call the function once; returns its result when that is an ``int``, else 0."""
        handled = self.fn()
        return handled if isinstance(handled, int) and not isinstance(handled, bool) else 0


def check_plugins(plugins: Iterable[Plugin]) -> tuple[Plugin, ...]:
    """Validate a list of plugins: each has a name, a positive interval and ``run``; names are unique.

    Args:
        plugins: the plugins.

    Raises:
        ConfigurationError: naming the plugin at fault.
    """
    chosen = tuple(plugins)
    seen: set[str] = set()
    for plugin in chosen:
        if not isinstance(plugin, Plugin):
            raise ConfigurationError(
                f"plugins: {plugin!r} is not a plugin (it needs name, interval and run(now))")
        name = plugin.name
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"plugins: {plugin!r} needs a non-empty string name, got {name!r}")
        if name in seen:
            raise ConfigurationError(f"plugins: two plugins are named {name!r}; names must be unique")
        seen.add(name)
        interval = plugin.interval
        if not isinstance(interval, timedelta) or interval <= timedelta(0):
            raise ConfigurationError(
                f"plugins: {name!r} needs a positive timedelta interval, got {interval!r}")
    return chosen


class PluginThreads:
    """Run plugins, each on its own daemon thread, until stopped.

    Args:
        plugins: the plugins to run.
        clock: gives the ``now`` each pass runs at.
        owner: the worker's id, for log lines.
        intervals: seconds between passes, by plugin name, overriding the
            plugin's own interval.
        first_delays: seconds before a plugin's first pass, by name (default 0:
            at once).
        halt: once this is set no new pass starts (the worker is stopping:
            a cron tick fired now would wait for the next worker).
    """

    def __init__(
        self,
        plugins: Sequence[Plugin],
        clock: Clock,
        *,
        owner: str,
        intervals: Mapping[str, float] | None = None,
        first_delays: Mapping[str, float] | None = None,
        halt: threading.Event | None = None,
    ) -> None:
        self.clock = clock
        self.owner = owner
        self.stop = threading.Event()
        self.halt = halt or self.stop
        overrides = dict(intervals or {})
        delays = dict(first_delays or {})
        self._threads = [
            threading.Thread(
                target=self._loop,
                args=(plugin, overrides.get(plugin.name, plugin.interval.total_seconds()),
                      delays.get(plugin.name, 0.0)),
                name=f"chimeway-plugin-{plugin.name}", daemon=True,
            )
            for plugin in plugins
        ]

    def start(self) -> None:
        """Start every plugin's thread."""
        for thread in self._threads:
            thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads and wait (up to ``timeout`` seconds in all) for passes under way."""
        self.stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _loop(self, plugin: Plugin, interval: float, first_delay: float) -> None:
        failures = 0
        wait = first_delay
        while not self.stop.wait(wait) and not self.halt.is_set():
            started = time.monotonic()
            if run_once(plugin, self.clock.now(), owner=self.owner):
                failures = 0
                wait = interval
            else:
                failures += 1
                wait = min(interval * 2 ** (failures - 1), max(interval, MAX_FAILURE_DELAY))
            wait = max(0.0, started + wait - time.monotonic())


def run_once(plugin: Plugin, now: datetime, *, owner: str) -> bool:
    """Run one pass of ``plugin``; log its failure instead of raising. Returns whether it succeeded."""
    started = time.perf_counter()
    try:
        with telemetry.span("chimeway.plugin", **{"chimeway.plugin": plugin.name}):
            handled = plugin.run(now)
    except Exception as exc:
        log_event(log, logging.ERROR, "worker.plugin_failed",
                  f"worker {owner}: plugin {plugin.name!r} failed: {type(exc).__name__}: {exc}",
                  exc_info=True, worker_id=owner, plugin=plugin.name, error=type(exc).__name__)
        return False
    log_event(log, logging.DEBUG, "worker.plugin_ran",
              f"worker {owner}: plugin {plugin.name!r} handled {handled}",
              worker_id=owner, plugin=plugin.name, handled=handled,
              duration=round(time.perf_counter() - started, 6))
    return True
