"""Delivery jobs: the job queue's way to run the executor, whatever the dispatcher.

One ``chimeway.deliver`` job carries one delivery id; the delivery row stays
the source of truth. The job is registered with every dispatcher: the
``queue`` dispatcher inserts one per planned delivery, and the rescuer
(:class:`DeliveryRescue`) inserts one for each delivery a crash left behind,
so a worker re-drives it with no operator action.

Channel outcomes map onto job outcomes:

- succeeded / permanent / bounced / last attempt → the job completes
  (the delivery row says ``succeeded`` or ``cancelled`` with the reason);
- temporary → ``Retry`` no earlier than the delivery's retry time
  (which honours the provider's ``Retry-After``);
- deferred (quiet hours) or not yet due → ``Snooze`` until due;
- in flight under another holder's live lease → ``Snooze`` until the lease
  would run out: the job completes only once the delivery is final, so a
  job rescued from a dead worker never leaves its delivery behind.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta

from chimeway.db import writer
from chimeway.deliveries import FINAL, Status
from chimeway.dispatch.base import Due
from chimeway.dispatch.batching import Combiner, concatenated
from chimeway.dispatch.executor import Claimed, DeliveryOutcome, Executor, Sent
from chimeway.errors import UnknownChannelError
from chimeway.queue import JobInfo, JobQueue, NewJob, Retry, Snooze

__all__ = ["DELIVERY_QUEUE", "DELIVERY_WORKER", "DeliveryJobs", "DeliveryRescue"]

log = logging.getLogger("chimeway.deliveries")

DELIVERY_QUEUE = "chimeway_delivery"
DELIVERY_WORKER = "chimeway.deliver"
# Past a lease's expiry, so the rerun finds it run out rather than just alive.
LEASE_MARGIN = 0.5
# Delivery jobs one thread runs together: one claim and one record
# transaction for all, their sends one after another.
DELIVERY_CHUNK = 25
# When every thread on a chunk has been in its send this long (a provider
# slower than a local one), the threads on it double, up to one per send.
STALL = 0.02
# The usual time of the sends one thread of a chunk takes in sequence; a
# chunk of slower sends starts with more threads, up to one per send.
SPAN = 0.05


class DeliveryJobs:
    """Registers the ``chimeway.deliver`` job and builds its rows.

    The job is a chunk function (see ``JobQueue.register``): a worker hands
    one thread up to :data:`DELIVERY_CHUNK` claimed delivery jobs, whose
    deliveries are claimed in one transaction, sent one after another on a
    helper thread, and recorded in one transaction; chunks claiming or
    recording at the same moment share their transactions. Every job still
    gets the outcome of its own delivery. A send that stalls (a slow
    provider) does not hold up the rest of its chunk: after :data:`STALL`
    seconds another thread sends them and records them, and their jobs end
    while the slow one's job waits for its send (a future of its outcome,
    so the worker frees the others' slots at once).

    Args:
        executor: the shared executor.
        queue: the job queue.
        max_attempts: job attempts per delivery.
        chunk: delivery jobs run together.
    """

    def __init__(self, executor: Executor, queue: JobQueue, *, max_attempts: int,
                 chunk: int = DELIVERY_CHUNK) -> None:
        self.executor = executor
        self.queue = queue
        self.max_attempts = max_attempts
        # Chunks claiming or recording at the same moment (sends to a slow
        # provider end on many threads at once) share one transaction.
        self._claims: Combiner[list[uuid.UUID], list[Claimed | None]] = Combiner(
            concatenated(self._claim_batch), max_batch=8)
        self._stalls = _Stalls(STALL, Combiner(concatenated(executor.record), max_batch=8))
        queue.register(self.deliver_chunk, name=DELIVERY_WORKER, queue=DELIVERY_QUEUE, max_attempts=max_attempts,
                       chunk=chunk)

    def close(self) -> None:
        """Let the send helper threads end (they start again if more chunks come)."""
        self._stalls.close()

    def job(self, due: Due, *, unique: bool = False) -> NewJob:
        """The job row for one delivery.

        Args:
            due: the delivery and when it is due.
            unique: at most one active job of this kind per delivery (re-drives
                use it, so repeated rescues never pile up jobs).
        """
        return NewJob(worker=DELIVERY_WORKER, args={"delivery_id": str(due.id)}, queue=DELIVERY_QUEUE,
                      scheduled_at=due.not_before, max_attempts=self.max_attempts,
                      unique_key=f"{DELIVERY_WORKER}:{due.id}" if unique else None)

    def _claim_batch(self, ids: list[uuid.UUID]) -> list[Claimed | None]:
        if not ids:
            return []
        claimed = {c.message.delivery_id: c for c in self.executor.claim(ids)}
        # Two jobs for one delivery in the same batch: only the first gets it.
        return [claimed.pop(i, None) for i in ids]

    def deliver_chunk(self, jobs: Sequence[JobInfo]) -> list[Exception | Future[Exception | None] | None]:
        """``chimeway.deliver`` jobs run together; one outcome per job, in order.

        ``None`` completes a job; an exception (``Retry``, ``Snooze``, a
        failure) is its outcome. A delivery that cannot be claimed
        (final, in flight, not due) gets the outcome a lone job would. A job
        whose send is still running on a helper thread when the chunk's own
        thread is done gets a future of its outcome: the worker frees its
        slot when it resolves, and the others' at once.
        """
        outcomes: list[Exception | Future[Exception | None] | None] = [None] * len(jobs)
        ids: dict[int, uuid.UUID] = {}
        for i, job in enumerate(jobs):
            try:
                ids[i] = uuid.UUID(job.args["delivery_id"])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                outcomes[i] = exc
        claimed = dict(zip(ids, self._claims.call(list(ids.values())), strict=True))
        # A delivery left dispatched under a dead holder's lease run out is
        # taken back and claimed here rather than at the next rescue pass.
        expired = [i for i, c in claimed.items() if c is None
                   and self.executor.take_back_if_expired(ids[i], max_attempts=jobs[i].max_attempts)]
        claimed.update(zip(expired, self._claims.call([ids[i] for i in expired]), strict=True))
        held = [(i, c) for i, c in claimed.items() if c is not None]
        chunk = _Chunk(self.executor, [(c, jobs[i].max_attempts) for i, c in held], self._stalls.pace,
                       self._stalls.records, self._stalls.stall)
        waiting = self._stalls.run(chunk) if held else {}
        place = {i: k for k, (i, _) in enumerate(held)}
        for i, did in ids.items():
            k = place.get(i)
            if k in waiting:
                outcomes[i] = self._later(did, waiting[k])
            else:
                outcomes[i] = self._job_outcome(did, None if k is None else chunk.outcomes[k])
        return outcomes

    def _job_outcome(self, did: uuid.UUID, outcome: DeliveryOutcome | BaseException | None) -> Exception | None:
        """The job's outcome for its delivery's attempt (``None``: not attempted here)."""
        if isinstance(outcome, BaseException):
            return outcome if isinstance(outcome, Exception) else RuntimeError(f"{type(outcome).__name__}: {outcome}")
        try:
            if outcome is not None and self._settled(outcome):
                return None
            # The record changed nothing (the delivery was taken back or
            # re-driven meanwhile): the job ends only once the delivery is final.
            self._not_claimed(did)
        except Exception as exc:
            return exc
        return None

    def _later(self, did: uuid.UUID, attempt: Future[DeliveryOutcome | BaseException]) -> Future[Exception | None]:
        job: Future[Exception | None] = Future()

        def settle(done: Future[DeliveryOutcome | BaseException]) -> None:
            try:
                job.set_result(self._job_outcome(did, done.result()))
            except BaseException as exc:
                job.set_exception(exc)

        attempt.add_done_callback(settle)
        return job

    def _settled(self, outcome: DeliveryOutcome) -> bool:
        """Whether the job ends with this attempt (raises the job's ``Retry``)."""
        if outcome.status == Status.FAILED:
            wait = _seconds_until(outcome.retry_at, self.executor.clock.now())
            raise Retry(f"temporary: {outcome.result.detail}", after=wait)
        if outcome.status == Status.DISPATCHED:
            raise Retry("the attempt could not be recorded; the delivery is re-sent when its lease runs out",
                        after=self.executor.leases.ttl.total_seconds() + LEASE_MARGIN)
        return outcome.status in FINAL

    def _not_claimed(self, did: uuid.UUID) -> None:
        # Final already (done), in flight, not due, or on a channel this worker lacks.
        now = self.executor.clock.now()
        row = self.executor.status_of(did)
        if row is None or row.status in FINAL:
            return
        if row.status == Status.DISPATCHED:
            until = row.lease_expires_at or now
            raise Snooze(max(1.0, _seconds_until(until, now) + LEASE_MARGIN))
        if row.channel not in self.executor.channels:
            raise UnknownChannelError(
                f"delivery {did} uses channel {row.channel!r}, which is not configured in this worker"
            )
        wait = _seconds_until(row.not_before, now)
        # Claimable but not claimed: another job of this delivery holds the
        # claim right now, or it is not due yet.
        raise Snooze(max(wait, 1.0))


class _Chunk:
    """One chunk's sends, made on helper threads while the chunk's thread waits for them.

    Sends to fast channels go one after another on one helper; a channel
    whose sends are usually slow (a remote provider) starts with more, up to
    one per send. A send still running after ``stall`` seconds gets another
    helper for the sends still waiting, so neither a slow provider nor one
    slow request holds up the rest. Every helper records what has been sent
    when it runs out of sends. The chunk's thread returns as soon as every
    delivery is recorded but those whose send has stalled: those come back
    as futures (:meth:`run`), resolved by the helper that records them, so
    the jobs of the others end at once.
    """

    def __init__(self, executor: Executor, items: list[tuple[Claimed, int]], pace: _Pace,
                 records: Combiner[list[Sent], list[DeliveryOutcome]], stall: float) -> None:
        self.executor = executor
        self._records = records
        self.outcomes: list[DeliveryOutcome | BaseException | None] = [None] * len(items)
        self._pace = pace
        self._stall = stall
        self._todo = deque(enumerate(items))
        self._sent: list[tuple[int, Sent]] = []
        # Sends in flight: item index -> when it began; those already given a helper.
        self._flying: dict[int, float] = {}
        self._helped: set[int] = set()
        self._futures: dict[int, Future[DeliveryOutcome | BaseException]] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def run(self, helpers: ThreadPoolExecutor) -> dict[int, Future[DeliveryOutcome | BaseException]]:
        """Send and record the items on helpers; futures of those whose send stalled, by index."""
        # Enough helpers that none waits on its sends for much more than SPAN.
        waiting = sum(self._pace.usual(item.message.channel) for _, (item, _) in self._todo)
        for _ in range(max(1, min(len(self._todo), math.ceil(waiting / SPAN)))):
            helpers.submit(self._help)
        with self._changed:
            while not self._only_stalled_left():
                self._changed.wait(self._stall / 2)
            for index, outcome in enumerate(self.outcomes):
                if outcome is None:
                    self._futures[index] = Future()
            return dict(self._futures)

    def _only_stalled_left(self) -> bool:
        # Under the lock. An item not yet settled is waiting to be sent, in
        # flight, sent and waiting to be recorded, or being recorded.
        if self._todo or self._sent:
            return False
        now = time.monotonic()
        for index, outcome in enumerate(self.outcomes):
            if outcome is None and now - self._flying.get(index, now) < self._stall:
                return False
        return True

    def help_stalled(self, now: float, helpers: ThreadPoolExecutor) -> int:
        """Give each send running for the stall time a helper for the sends still waiting."""
        with self._lock:
            stalled = [i for i, began in self._flying.items() if now - began >= self._stall and i not in self._helped]
            more = min(len(self._todo), len(stalled))
            self._helped.update(stalled[:more])
        for _ in range(more):
            helpers.submit(self._help)
        return more

    def _help(self) -> None:
        try:
            self._work()
        except BaseException:
            log.exception("a delivery send helper failed")

    def _work(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._todo:
                        break
                    index, (item, limit) = self._todo.popleft()
                    began = self._flying[index] = time.monotonic()
                try:
                    sent = self.executor.send(item, max_attempts=limit)
                except BaseException as exc:
                    # Not sent as far as anyone knows: its lease runs out and it is sent again.
                    self.executor.leases.drop([item.message.delivery_id])
                    self._settle({index: exc})
                    if not isinstance(exc, Exception):
                        raise
                    continue
                finally:
                    with self._lock:
                        del self._flying[index]
                self._pace.note(item.message.channel, time.monotonic() - began)
                with self._lock:
                    self._sent.append((index, sent))
        finally:
            self._record()

    def _record(self) -> None:
        with self._lock:
            batch, self._sent = self._sent, []
        if not batch:
            return
        try:
            outcomes = self._records.call([s for _, s in batch])
        except BaseException as exc:
            self._settle({index: exc for index, _ in batch})
            if not isinstance(exc, Exception):
                raise
            return
        self._settle({index: outcome for (index, _), outcome in zip(batch, outcomes, strict=True)})

    def _settle(self, outcomes: dict[int, DeliveryOutcome | BaseException]) -> None:
        with self._lock:
            for index, outcome in outcomes.items():
                self.outcomes[index] = outcome
            waiting = [(self._futures.pop(i), o) for i, o in outcomes.items() if i in self._futures]
            self._changed.notify_all()
        for future, outcome in waiting:
            future.set_result(outcome)


class _Pace:
    """Each channel's usual send time: a moving average, each send counted up to ``cap`` seconds."""

    WEIGHT = 0.05

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self._seconds: dict[str, float] = {}

    def usual(self, channel: str) -> float:
        return self._seconds.get(channel, 0.0)

    def note(self, channel: str, seconds: float) -> None:
        # Unlocked: a lost update between threads only nudges an estimate.
        usual = self._seconds.get(channel, 0.0)
        self._seconds[channel] = usual + self.WEIGHT * (min(seconds, self.cap) - usual)


class _Stalls:
    """The chunks being sent, their helper threads, and a watcher that helps a stalled send."""

    def __init__(self, stall: float, records: Combiner[list[Sent], list[DeliveryOutcome]]) -> None:
        self.stall = stall
        self.records = records
        self.pace = _Pace(4 * stall)
        # Threads start as helpers are needed and are kept for the next ones,
        # until close(); the pool (and the watcher) start again if needed.
        self._helpers: ThreadPoolExecutor | None = None
        self._closing = False
        self._chunks: set[_Chunk] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def run(self, chunk: _Chunk) -> dict[int, Future[DeliveryOutcome | BaseException]]:
        """Send and record a chunk's deliveries, watched for stalls; see :meth:`_Chunk.run`."""
        with self._cond:
            self._closing = False
            if self._helpers is None:
                self._helpers = ThreadPoolExecutor(max_workers=1000, thread_name_prefix="chimeway-send")
            helpers = self._helpers
            self._chunks.add(chunk)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._watch, name="chimeway-send-stalls", daemon=True)
                self._thread.start()
            elif len(self._chunks) == 1:
                self._cond.notify()
        try:
            return chunk.run(helpers)
        finally:
            with self._cond:
                self._chunks.discard(chunk)

    def close(self) -> None:
        """Let the helper threads and the watcher end once the chunks in flight are done."""
        with self._cond:
            helpers, self._helpers = self._helpers, None
            self._closing = True
            self._cond.notify_all()
        if helpers is not None:
            helpers.shutdown(wait=False)

    def _watch(self) -> None:
        while True:
            with self._cond:
                while not self._chunks:
                    if self._closing:
                        return
                    self._cond.wait()
                chunks = list(self._chunks)
                helpers = self._helpers
            now = time.monotonic()
            for chunk in chunks:
                try:
                    if helpers is not None:
                        chunk.help_stalled(now, helpers)
                except Exception:
                    log.exception("could not start a delivery send helper")
            time.sleep(self.stall / 2)


class DeliveryRescue:
    """The worker's rescue loop for deliveries: nothing committed is left behind.

    Each pass takes back sends whose lease ran out and gives each a delivery
    job. With the ``sync`` dispatcher it also gives jobs to deliveries its
    process left ``pending`` (killed between commit and send) and to
    ``failed``/``deferred`` ones whose time has come; the ``queue``
    dispatcher's own jobs already cover those.

    It is a worker plugin (``delivery_rescue``); ``run(now)`` is one pass at
    the executor clock's time.

    Args:
        jobs: the delivery jobs.
        include_open: also re-drive pending/failed/deferred deliveries (sync).
        pending_after: how old a ``pending`` delivery must be to count as left behind.
        interval: time between passes.
    """

    name = "delivery_rescue"

    def __init__(self, jobs: DeliveryJobs, *, include_open: bool, pending_after: timedelta,
                 interval: timedelta = timedelta(seconds=15)) -> None:
        self.jobs = jobs
        self.include_open = include_open
        self.pending_after = pending_after
        self.interval = interval

    def __repr__(self) -> str:
        return f"<DeliveryRescue every {self.interval.total_seconds():g}s>"

    def run(self, now: datetime) -> int:
        """One pass (at the executor clock's time); returns how many deliveries got a job."""
        return self()

    def __call__(self) -> int:
        """One pass; returns how many deliveries got a job."""
        executor = self.jobs.executor
        released = executor.release_expired()
        due = [Due(i) for i in released.redrive]
        if self.include_open:
            due += executor.recoverable(older_than=self.pending_after).due
        return self.redrive(due)

    def redrive(self, due: Sequence[Due]) -> int:
        """Give each delivery a (unique) job; returns how many were inserted."""
        if not due:
            return 0
        queue = self.jobs.queue
        with writer(queue.engine).begin() as conn:
            return len(queue.insert_many(conn, [self.jobs.job(d, unique=True) for d in due]))


def _seconds_until(when: datetime | None, now: datetime) -> float:
    if when is None:
        return 0.0
    return max(0.0, (when - now).total_seconds())
