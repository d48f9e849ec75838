"""The worker loop: claim into free slots, run on threads, acknowledge in batches.

One thread (the caller's) owns the loop; each queue has a thread pool of its
concurrency. The loop wakes when a NOTIFY names one of its queues, when a job
finishes, or when the poll interval passes, whichever comes first. Periodic
work (the heartbeat, rescues, pruning, cron) runs as plugins, each on a
thread of its own. The worker reaches the queue only through
:class:`QueueEngine`, the public engine methods of ``JobQueue``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from queue import Empty, SimpleQueue
from types import FrameType
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from chimeway.clock import Clock
from chimeway.logs import log_event
from chimeway.queue.listener import Listener
from chimeway.queue.plugins.base import Plugin, PluginThreads
from chimeway.queue.plugins.heartbeat import Heartbeat
from chimeway.queue.runner import Claimed, Later, Result, crashed

__all__ = ["Claims", "QueueEngine", "Worker"]

log = logging.getLogger("chimeway.queue")

# Completions are acknowledged together: at most this many per UPDATE, and
# none waits longer than ACK_DELAY seconds for company.
ACK_BATCH = 100
ACK_DELAY = 0.005
STOP_CHECK = 0.25
REFILL_DELAY = 0.002
# An outcome the database cannot take is retried this long (a short outage)
# before the job is left to the lifeline.
RECORD_PATIENCE = 60.0


class Claims(Protocol):
    """One worker's claims (``JobQueue.claimer``)."""

    def claim(self, queue: str, limit: int, *, acks: Sequence[int] = ...) -> list[Claimed]: ...

    def close(self) -> None: ...


class QueueEngine(Protocol):
    """The public ``JobQueue`` methods a worker runs on."""

    engine: Engine
    clock: Clock
    notify: bool
    backoff: Callable[[int], float]

    def new_worker_id(self, kind: str = ...) -> str: ...

    def register_worker(self, worker_id: str, queues: Mapping[str, int]) -> None: ...

    def heartbeat(self, worker_id: str, queues: Mapping[str, int] | None = ..., *,
                  now: datetime | None = ...) -> None: ...

    def unregister_worker(self, worker_id: str) -> None: ...

    def paused_queues(self) -> Iterable[str]: ...

    def claimer(self, by: str) -> Claims: ...

    def execute(self, job: Claimed) -> Result: ...

    def chunk_size(self, worker: str) -> int | None: ...

    def execute_chunk(self, jobs: Sequence[Claimed]) -> list[Result | Later]: ...

    def settle_later(self, job: Claimed, later: Later) -> Result: ...

    def record(self, job: Claimed, result: Result, by: str, *, retry_for: float = ...) -> bool: ...

    def complete(self, ids: Sequence[int], by: str) -> None: ...

    def release(self, by: str) -> int: ...


class Worker:
    """One node's worker over some queues; see :meth:`JobQueue.run_worker`.

    Args:
        jobs: the queue to work.
        queues: queue name -> concurrency.
        poll_interval: seconds between polls.
        shutdown_grace: seconds running jobs get on shutdown.
        stop_event: set to stop.
        heartbeat_interval: seconds between heartbeats.
        plugins: periodic work to run besides jobs, each on its own thread.
        intervals: seconds between a plugin's passes, by name, overriding its own.
    """

    def __init__(
        self,
        jobs: QueueEngine,
        queues: Mapping[str, int],
        *,
        poll_interval: float = 1.0,
        shutdown_grace: float = 15.0,
        stop_event: threading.Event | None = None,
        heartbeat_interval: float = 5.0,
        plugins: Sequence[Plugin] = (),
        intervals: Mapping[str, float] | None = None,
    ) -> None:
        self.jobs = jobs
        self.limits = dict(queues)
        self.poll_interval = poll_interval
        self.shutdown_grace = shutdown_grace
        self.stop = stop_event or threading.Event()
        self.id = jobs.new_worker_id("worker")
        self.ran = 0
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._running = dict.fromkeys(self.limits, 0)
        self._more = dict.fromkeys(self.limits, True)
        self._acks: list[int] = []
        self._first_ack = 0.0
        self._refill_at = {q: n - max(1, n // 2) for q, n in self.limits.items()}
        self._free_since: dict[str, float | None] = dict.fromkeys(self.limits)
        # The heartbeat is what keeps this worker's jobs from being rescued:
        # it is not optional, and its first beat is the registration itself.
        beat = Heartbeat(jobs, self.id, self.limits, interval=timedelta(seconds=heartbeat_interval))
        self.plugins: tuple[Plugin, ...] = (beat, *plugins)
        self._plugins = PluginThreads(self.plugins, jobs.clock, owner=self.id, intervals=intervals,
                                      first_delays={beat.name: heartbeat_interval}, halt=self.stop)
        self._paused: frozenset[str] = frozenset()
        self._paused_checked = float("-inf")
        self._claimer = jobs.claimer(self.id)
        self._pools = {q: _Slots(n, f"chimeway-{q}", self._run) for q, n in self.limits.items()}

    # --- wake-ups -------------------------------------------------------------------

    def _notified(self, queue: str) -> None:
        if queue in self._more:
            self._more[queue] = True
            self._wake.set()

    def _poll_all(self) -> None:
        for queue in self._more:
            self._more[queue] = True
        self._wake.set()

    # --- running jobs -----------------------------------------------------------------

    def _run(self, unit: Claimed | list[Claimed]) -> None:
        # A unit is one job, or a chunk: jobs of one chunk function run in one call.
        jobs = unit if isinstance(unit, list) else [unit]
        queue = jobs[0].info.queue
        acked: list[int] = []
        handled = later = 0
        try:
            results = self.jobs.execute_chunk(unit) if isinstance(unit, list) else [self.jobs.execute(unit)]
            for job, result in zip(jobs, results, strict=True):
                if isinstance(result, Later):
                    # Its slot stays taken until its outcome comes.
                    later += 1
                    result.future.add_done_callback(partial(self._run_later, job, result))
                elif result.state == "completed":
                    acked.append(job.info.id)
                else:
                    self.jobs.record(job, result, self.id, retry_for=RECORD_PATIENCE)
                handled += 1
        except BaseException as exc:
            self._crashed(jobs[handled:], exc)
        finally:
            self._finished(queue, acked, len(jobs) - later)

    def _run_later(self, job: Claimed, later: Later, _future: Any) -> None:
        # On whichever thread resolved the job's future.
        acked: list[int] = []
        try:
            result = self.jobs.settle_later(job, later)
            if result.state == "completed":
                acked.append(job.info.id)
            else:
                self.jobs.record(job, result, self.id, retry_for=RECORD_PATIENCE)
        except BaseException as exc:
            self._crashed([job], exc)
        finally:
            self._finished(job.info.queue, acked, 1)

    def _crashed(self, jobs: Sequence[Claimed], exc: BaseException) -> None:
        # Recorded as a failed attempt: left executing, the job would wait
        # for this worker to die before anything retried it.
        for job in jobs:
            log_event(log, logging.ERROR, "job.crash", f"worker thread failed on job {job.info.id}",
                      exc_info=True, job_id=job.info.id, queue=job.info.queue, worker_id=self.id)
            self.jobs.record(job, crashed(job, self.jobs.clock.now(), exc, self.jobs.backoff), self.id,
                             retry_for=RECORD_PATIENCE)

    def _finished(self, queue: str, acked: list[int], count: int) -> None:
        """``count`` jobs of ``queue`` are done (``acked`` of them completed): free their slots."""
        if not count:
            return
        with self._lock:
            pending = len(self._acks)
            if acked:
                if not pending:
                    self._first_ack = time.monotonic()
                self._acks.extend(acked)
            before = self._running[queue]
            after = self._running[queue] = before - count
            if self._free_since[queue] is None:
                self._free_since[queue] = time.monotonic()
            self.ran += count
            # Wake the loop only when there is something for it to do:
            # start the ack timer, ship a full ack batch, or refill slots.
            wake = (
                (acked and (not pending or pending < ACK_BATCH <= len(self._acks)))
                or len(acked) < count
                or (self._more[queue] and any(after <= mark < before for mark in (
                    self.limits[queue] - 1, self._refill_at[queue])))
                or after == 0
            )
        if wake:
            self._wake.set()

    def _units(self, claimed: list[Claimed]) -> list[Claimed | list[Claimed]]:
        """Claimed jobs as they run: alone, or in chunks for chunk functions."""
        units: list[Claimed | list[Claimed]] = []
        filling: dict[str, list[Claimed]] = {}
        for job in claimed:
            worker = job.info.worker
            size = self.jobs.chunk_size(worker)
            if size is None:
                units.append(job)
                continue
            chunk = filling.get(worker)
            if chunk is None:
                chunk = filling[worker] = []
                units.append(chunk)
            chunk.append(job)
            if len(chunk) >= size:
                del filling[worker]
        return units

    def _refill_deadline(self) -> float:
        with self._lock:
            return min(
                (since + REFILL_DELAY for q, since in self._free_since.items()
                 if since is not None and self._more[q]),
                default=float("inf"),
            )

    def _ack_deadline(self) -> float:
        with self._lock:
            return self._first_ack + ACK_DELAY if self._acks else float("inf")

    def _take_acks(self, *, force: bool = False) -> list[int]:
        with self._lock:
            if not self._acks:
                return []
            due = len(self._acks) >= ACK_BATCH or time.monotonic() >= self._first_ack + ACK_DELAY
            if not (due or force):
                return []
            ids, self._acks = self._acks, []
            return ids

    def _return_acks(self, ids: list[int]) -> None:
        with self._lock:
            if not self._acks:
                self._first_ack = time.monotonic()
            self._acks[:0] = ids

    def _flush_acks(self, *, force: bool = False) -> None:
        ids = self._take_acks(force=force)
        if not ids:
            return
        try:
            self.jobs.complete(ids, self.id)
        except BaseException:
            self._return_acks(ids)
            raise

    def _claim_into_free_slots(self) -> None:
        self._check_paused()
        for queue, limit in self.limits.items():
            if not self._more[queue] or queue in self._paused:
                continue
            with self._lock:
                running = self._running[queue]
                since = self._free_since[queue]
            free = limit - running
            # Refill in batches: once half the slots are free, or REFILL_DELAY
            # after the first one freed. Short jobs then share one claim
            # instead of paying one each; long jobs leave a slot idle for
            # no more than the delay.
            if free <= 0 or (running > self._refill_at[queue] and since is not None
                             and time.monotonic() < since + REFILL_DELAY):
                continue
            acks = self._take_acks(force=True)
            try:
                claimed = self._claimer.claim(queue, free, acks=acks)
            except BaseException:
                self._return_acks(acks)
                raise
            # A short batch means the queue is drained: wait for a NOTIFY or
            # the next poll instead of asking again after every completion.
            self._more[queue] = len(claimed) == free
            with self._lock:
                self._running[queue] += len(claimed)
                self._free_since[queue] = (
                    None if self._running[queue] >= limit else time.monotonic()
                )
            self._pools[queue].submit(self._units(claimed))

    def _check_paused(self) -> None:
        # Once per poll interval, so a pause or resume takes effect within one poll.
        now = time.monotonic()
        if now < self._paused_checked + self.poll_interval:
            return
        self._paused_checked = now
        paused = frozenset(self.jobs.paused_queues()) & frozenset(self.limits)
        if paused != self._paused:
            for queue in paused ^ self._paused:
                event = "queue.paused" if queue in paused else "queue.resumed"
                log_event(log, logging.INFO, event, f"worker {self.id}: queue {queue!r} "
                          + ("paused" if queue in paused else "resumed"), worker_id=self.id, queue=queue)
                self._more[queue] = True
            self._paused = paused

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        """Work until stopped; returns the number of jobs run."""
        restore = self._install_signals()
        listener: Listener | None = None
        listener_stop = threading.Event()
        try:
            self.jobs.register_worker(self.id, self.limits)
            self._plugins.start()
            if self.jobs.notify:
                listener = Listener(self.jobs.engine, self._notified, self._poll_all,
                                    listener_stop)
                listener.start()
            self._loop()
        finally:
            listener_stop.set()
            self._plugins.close()
            self._shutdown()
            if listener is not None:
                listener.join(timeout=2.0)
            restore()
        return self.ran

    def _loop(self) -> None:
        next_poll = time.monotonic() + self.poll_interval
        failures = 0
        while not self.stop.is_set():
            self._wake.clear()
            try:
                self._claim_into_free_slots()
                self._flush_acks()
                failures = 0
            except sa.exc.SQLAlchemyError as exc:
                # The database went away (restart, failover, terminated
                # backend): the pool replaces broken connections; back off
                # and go round again.
                failures += 1
                pause = min(0.05 * 2**failures, 2.0)
                log_event(log, logging.WARNING, "worker.database_error",
                          f"worker {self.id}: database error ({type(exc).__name__}); "
                          f"retrying in {pause:.2f}s", worker_id=self.id, error=type(exc).__name__)
                self.stop.wait(pause)
                self._poll_all()
                continue
            now = time.monotonic()
            timeout = max(0.0, min(next_poll, self._ack_deadline(), self._refill_deadline()) - now)
            # A caller's stop_event cannot wake us, so never sleep long past it.
            timeout = min(timeout, STOP_CHECK)
            self._wake.wait(timeout)
            if time.monotonic() >= next_poll:
                self._poll_all()
                next_poll = time.monotonic() + self.poll_interval

    def _busy(self) -> int:
        with self._lock:
            return sum(self._running.values())

    def _shutdown(self) -> None:
        deadline = time.monotonic() + self.shutdown_grace
        while self._busy() and time.monotonic() < deadline:
            self._wake.wait(0.05)
            self._wake.clear()
            self._quietly(lambda: self._flush_acks(force=True))
        self._quietly(lambda: self._flush_acks(force=True))
        for pool in self._pools.values():
            pool.shutdown()
        self._claimer.close()
        released = self._quietly(lambda: self.jobs.release(self.id))
        if released:
            log_event(log, logging.WARNING, "worker.released",
                      f"worker {self.id} released {released} unfinished job(s) on shutdown",
                      worker_id=self.id, count=released)
        self._quietly(lambda: self.jobs.unregister_worker(self.id))

    @staticmethod
    def _quietly(fn: Any) -> Any:
        try:
            return fn()
        except sa.exc.DBAPIError:
            log.exception("worker shutdown step failed")
            return None

    def _install_signals(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handle(signum: int, _frame: FrameType | None) -> None:
            log_event(log, logging.INFO, "worker.signal", f"worker {self.id}: signal {signum}, shutting down",
                      worker_id=self.id, signal=signum)
            self.stop.set()
            self._wake.set()

        previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore


class _Slots:
    """A queue's threads: each claimed job (or chunk of jobs) runs on a thread of its own.

    Units wait in a ``SimpleQueue`` the threads take from; the worker never
    hands out more jobs than the queue has free slots, so no more than
    ``size`` threads are ever needed. Threads start as they are first needed
    and stay until :meth:`shutdown`.
    """

    def __init__(self, size: int, name: str, run: Callable[[Claimed | list[Claimed]], None]) -> None:
        self.size = size
        self.name = name
        self._run = run
        self._jobs: SimpleQueue[Claimed | list[Claimed] | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._waiting = 0
        self._lock = threading.Lock()

    def submit(self, units: Sequence[Claimed | list[Claimed]]) -> None:
        put = self._jobs.put
        for unit in units:
            put(unit)
        with self._lock:
            # Every unit needs a thread that is waiting, or one started for it.
            missing = min(len(units) - self._waiting, self.size - len(self._threads))
            self._waiting = max(0, self._waiting - len(units))
            for _ in range(missing):
                thread = threading.Thread(target=self._serve, name=f"{self.name}_{len(self._threads)}")
                self._threads.append(thread)
                thread.start()

    def _serve(self) -> None:
        get = self._jobs.get
        run = self._run
        while True:
            unit = get()
            if unit is None:
                return
            try:
                run(unit)
            except BaseException:
                # The thread must outlive any job: its slot is counted on.
                ids = [j.info.id for j in unit] if isinstance(unit, list) else [unit.info.id]
                log.exception("worker thread failed after job(s) %s", ids)
            with self._lock:
                self._waiting += 1

    def shutdown(self) -> None:
        """Drop the jobs no thread has taken yet and let every thread end after its job."""
        while True:
            try:
                self._jobs.get_nowait()
            except Empty:
                break
        for _ in self._threads:
            self._jobs.put(None)
