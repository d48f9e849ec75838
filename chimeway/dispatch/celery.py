"""The ``celery`` dispatcher: an outbox written in your transaction, Celery tasks after it commits.

``Chimeway(dispatcher=CeleryDispatcher(celery_app))`` (``pip install 'chimeway[celery]'``):

1. ``trigger()`` writes the deliveries and one outbox row each in the caller's
   transaction: a rollback leaves no row, so nothing is ever published for it.
2. After the commit, the committing thread publishes one ``chimeway.deliver``
   task per delivery, ``task_id`` = the delivery id, and deletes the rows in
   the same transaction (:class:`~chimeway.dispatch.relay.Relay`). If the
   broker is down or the process dies first, the rows stay.
3. The relay (the ``chimeway.relay`` beat task, also run by ``chimeway worker``)
   publishes every due row left behind, taking rows with
   ``FOR UPDATE SKIP LOCKED``: racing relays never publish a row twice in a pass.
4. The task runs the executor every dispatcher uses: it claims the delivery
   under its process's lease, so a duplicated or redelivered task sends at
   most once per lease. A delivery that is not due, failed with a retry
   time, or in flight under another live lease goes back to the outbox, due
   when it can next be claimed. ``explain`` shows who published it (the task
   id) and which worker took it.
5. The ``chimeway.rescue`` beat task takes back sends whose lease ran out and
   republishes due deliveries that sat untouched (a lost message).

Chimeway's other background work — signal routing, workflow timers, the
workflow sweep, cron and record-trigger scans, your own ``@app.job`` jobs —
stays on the job queue's rows (exactly once by their claims and tick rows)
and runs in ``chimeway.run_jobs`` tasks: woken after the commit that inserted
the jobs, with an ETA for timers due soon, and by the relay as a safety net;
the relay also fires cron ticks. So Celery workers plus Celery beat are all a
team has to run.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from chimeway import deliveries
from chimeway.clock import Clock
from chimeway.deliveries import FINAL, Status
from chimeway.dispatch import outbox
from chimeway.dispatch.base import Due
from chimeway.dispatch.batching import Combiner
from chimeway.dispatch.executor import Claimed, DeliveryOutcome, Executor, Sent
from chimeway.dispatch.jobs import DELIVERY_QUEUE
from chimeway.dispatch.outbox import Taken
from chimeway.dispatch.relay import Published, Relay, RescueReport
from chimeway.errors import ConfigurationError, UnknownChannelError
from chimeway.models import jobs_table
from chimeway.queue import JobQueue
from chimeway.queue.plugins import Periodic, Plugin
from chimeway.transactions import after_commit

try:
    import celery
    from celery import signals as celery_signals
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("chimeway.dispatch.celery needs Celery: pip install 'chimeway[celery]'") from exc

__all__ = ["CeleryDispatcher"]

log = logging.getLogger("chimeway.celery")

# Past a lease's expiry, so the next task finds it run out rather than just alive.
LEASE_MARGIN = timedelta(seconds=1)
DUE_JOB_STATES = ("available", "scheduled", "retryable")
PRUNE_EVERY = 60.0


class _Scheduler(Protocol):
    def run(self) -> Sequence[Any]: ...


class BoundApp(Protocol):
    """What the dispatcher uses of the ``Chimeway`` app it is bound to."""

    engine: Engine
    clock: Clock
    executor: Executor
    queue: JobQueue
    scheduler: _Scheduler
    pruner: Plugin


class CeleryDispatcher:
    """Delivers through Celery: an outbox row per delivery, one task per delivery after commit.

    Pass it to ``Chimeway(dispatcher=...)``; that registers the tasks on
    ``celery_app`` (``<prefix>.deliver``, ``.relay``, ``.rescue``,
    ``.run_jobs``) and, with ``beat=True``, adds the relay and rescue to its
    beat schedule. Run Celery workers that import the module defining the app.

    Args:
        celery_app: your ``celery.Celery`` application.
        queue: the Celery queue for delivery tasks (default: Celery's routing).
        relay_queue: the Celery queue for relay, rescue and job tasks; give
            them their own so a backlog of deliveries never delays them.
        relay_interval: seconds between relay passes (beat, and ``chimeway worker``).
        eta_horizon: work due within this many seconds is published now with
            an ETA; later work waits in the database (default: ``relay_interval``).
            Keep it far below Redis's ``visibility_timeout`` and RabbitMQ's
            ``consumer_timeout``.
        stale_after: a due delivery untouched this long, with no outbox row,
            counts as lost by the broker and is published again. Keep it above
            your longest broker backlog.
        job_queues: Chimeway job queues whose jobs run in ``run_jobs`` tasks
            (default: every declared queue but ``chimeway_delivery``; ``()``
            when ``chimeway worker`` runs them instead).
        beat: add the relay and rescue to ``celery_app``'s beat schedule.
        prefix: the task names' prefix (two Chimeway apps on one Celery app
            need different ones).
        batch_size: outbox rows per publishing transaction.
    """

    name = "celery"
    # Chimeway's own rescue plugin gives crashed sends queue jobs; this
    # dispatcher re-drives them through the outbox instead.
    rescues_itself = True
    plugins: tuple[Plugin, ...] = ()
    """The worker plugins that relay and rescue (after ``bind``); ``Chimeway`` runs them on its workers."""

    def __init__(
        self,
        celery_app: Any,
        *,
        queue: str | None = None,
        relay_queue: str | None = None,
        relay_interval: float = 1.0,
        eta_horizon: float | None = None,
        stale_after: timedelta = timedelta(minutes=10),
        job_queues: Iterable[str] | None = None,
        beat: bool = True,
        prefix: str = "chimeway",
        batch_size: int = 500,
    ) -> None:
        if not isinstance(celery_app, celery.Celery):
            raise ConfigurationError(f"celery_app must be a celery.Celery application, got {type(celery_app).__name__}")
        for field, value in (("relay_interval", relay_interval), ("eta_horizon", eta_horizon)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
                raise ConfigurationError(f"{field} must be a positive number of seconds, got {value!r}")
        if not isinstance(stale_after, timedelta) or stale_after <= timedelta(0):
            raise ConfigurationError(f"stale_after must be a positive timedelta, got {stale_after!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError(f"prefix must be a non-empty string, got {prefix!r}")
        for field, name in (("queue", queue), ("relay_queue", relay_queue)):
            if name is not None and (not isinstance(name, str) or not name):
                raise ConfigurationError(f"{field} must be a queue name, got {name!r}")
        self.celery = celery_app
        self.queue = queue
        self.relay_queue = relay_queue
        self.relay_interval = float(relay_interval)
        self.eta_horizon = timedelta(seconds=float(eta_horizon if eta_horizon is not None else relay_interval))
        self.stale_after = stale_after
        self.job_queues = None if job_queues is None else frozenset(job_queues)
        self.beat = beat
        self.prefix = prefix
        self.batch_size = batch_size
        self.task_names = {kind: f"{prefix}.{kind}" for kind in ("deliver", "relay", "rescue", "run_jobs")}
        self._app: BoundApp | None = None
        self._relay: Relay | None = None
        self._claims: Combiner[tuple[uuid.UUID, Mapping[str, Any]], Claimed | None] = Combiner(self._claim_batch)
        self._records: Combiner[Sent, DeliveryOutcome] | None = None
        self._last_prune = float("-inf")
        self._prune_lock = threading.Lock()

    # --- wiring --------------------------------------------------------------------------------

    def bind(self, app: BoundApp) -> None:
        """Called once by ``Chimeway``: register the tasks, the beat entries and the worker plugins.

        Args:
            app: the Chimeway app this dispatcher serves.
        """
        if self._app is not None:
            raise ConfigurationError("this CeleryDispatcher already serves another Chimeway app; create one per app")
        self._app = app
        self._relay = Relay(app.engine, app.clock, _CeleryPublisher(self), horizon=self.eta_horizon,
                            batch_size=self.batch_size)
        self._records = Combiner(app.executor.record)
        self._register_tasks()
        if self.beat:
            self._add_beat_entries()
        app.queue.on_insert(self._jobs_inserted)
        engine = app.engine

        def forked(**_: Any) -> None:
            # A prefork child must not share its parent's pooled connections.
            engine.dispose(close=False)

        celery_signals.worker_process_init.connect(forked, weak=False)
        # ``chimeway worker`` runs Chimeway's jobs itself: it only relays and rescues.
        self.plugins = (
            Periodic("celery_relay", timedelta(seconds=self.relay_interval), lambda: self.relay_pass(jobs=False)),
            Periodic("celery_rescue", timedelta(seconds=self._rescue_interval()),
                     lambda: _rescued(self.rescue_pass(jobs=False))),
        )

    @property
    def relay(self) -> Relay:
        """The outbox relay (after ``bind``)."""
        if self._relay is None:
            raise ConfigurationError("pass this CeleryDispatcher to Chimeway(dispatcher=...) first")
        return self._relay

    @property
    def app(self) -> BoundApp:
        """The Chimeway app served (after ``bind``)."""
        if self._app is None:
            raise ConfigurationError("pass this CeleryDispatcher to Chimeway(dispatcher=...) first")
        return self._app

    def beat_schedule(self) -> dict[str, dict[str, Any]]:
        """The beat entries for the relay and the rescue (added for you when ``beat=True``)."""
        options: dict[str, Any] = {"queue": self.relay_queue} if self.relay_queue else {}
        rescue_every = self._rescue_interval()
        return {
            self.task_names["relay"]: {"task": self.task_names["relay"], "schedule": self.relay_interval,
                                       "options": {**options, "expires": max(1.0, 2 * self.relay_interval)}},
            self.task_names["rescue"]: {"task": self.task_names["rescue"], "schedule": rescue_every,
                                        "options": {**options, "expires": max(1.0, rescue_every)}},
        }

    def _rescue_interval(self) -> float:
        ttl = self._app.executor.leases.ttl.total_seconds() if self._app is not None else 60.0
        return max(1.0, ttl / 4)

    def _add_beat_entries(self) -> None:
        entries = self.beat_schedule()

        def add(sender: Any = None, **_: Any) -> None:
            app = sender if sender is not None else self.celery
            # The application's own entries of the same name win.
            app.conf.beat_schedule = {**entries, **(app.conf.beat_schedule or {})}

        if self.celery.configured:
            add(self.celery)
        else:
            self.celery.on_after_configure.connect(add, weak=False)

    def _register_tasks(self) -> None:
        names = self.task_names

        def deliver(task: Any, delivery_id: str) -> str:
            return self.deliver(delivery_id, _task_info(task))

        def relay() -> int:
            return self.relay_pass()

        def rescue() -> dict[str, int]:
            report = self.rescue_pass()
            return {"lease_expired": report.lease_expired, "exhausted": report.exhausted, "lost": report.lost}

        def run_jobs(queue: str) -> int:
            return self.run_jobs(queue)

        self.celery.task(name=names["deliver"], bind=True, acks_late=True, reject_on_worker_lost=True,
                         ignore_result=True, lazy=False, shared=False)(deliver)
        self.celery.task(name=names["relay"], ignore_result=True, lazy=False, shared=False)(relay)
        self.celery.task(name=names["rescue"], ignore_result=True, lazy=False, shared=False)(rescue)
        self.celery.task(name=names["run_jobs"], acks_late=True, reject_on_worker_lost=True,
                         ignore_result=True, lazy=False, shared=False)(run_jobs)

    # --- the Dispatcher protocol ---------------------------------------------------------------

    def planned(self, target: Session | Connection, conn: Connection, deliveries: Sequence[Due]) -> None:
        if not deliveries:
            return
        now = self.app.clock.now()
        outbox.add(conn, deliveries, reason="planned", now=now)
        until = now + self.eta_horizon
        ids = [d.id for d in deliveries if d.not_before is None or d.not_before <= until]
        if ids:
            after_commit(target, lambda: self._publish_committed(ids))

    def redrive(self, deliveries: Sequence[Due]) -> int:
        if not deliveries:
            return 0
        self.relay.schedule(deliveries, reason="redrive")
        self._publish_quietly([d.id for d in deliveries], by="redrive")
        return len(deliveries)

    def _publish_committed(self, ids: list[uuid.UUID]) -> None:
        self._publish_quietly(ids, by="after_commit")

    def _publish_quietly(self, ids: list[uuid.UUID], *, by: str) -> None:
        try:
            self.relay.publish_due(ids=ids, by=by)
        except Exception as exc:
            # The rows are committed; the relay publishes them.
            log.warning("publishing %d delivery task(s) failed (%s: %s); the outbox relay will publish them",
                        len(ids), type(exc).__name__, exc)

    # --- the tasks -----------------------------------------------------------------------------

    def deliver(self, delivery_id: str, info: Mapping[str, Any]) -> str:
        """The ``chimeway.deliver`` task: one attempt at one delivery, if it is due.

        Returns the delivery's status afterwards (``in_flight`` when another
        live lease holds it).

        Args:
            delivery_id: the delivery (also the task id).
            info: the task's id, worker and redelivery flag, noted for ``explain``.
        """
        try:
            did = uuid.UUID(str(delivery_id))
        except ValueError:
            log.error("task %s: %r is not a delivery id; dropped", info.get("task_id"), delivery_id)
            return "invalid"
        executor = self.app.executor
        claimed = self._claims.call((did, info))
        if claimed is None and executor.take_back_if_expired(did):
            claimed = self._claims.call((did, info))
        if claimed is None:
            return self._not_claimed(did)
        assert self._records is not None
        outcome = self._records.call(executor.send(claimed))
        if outcome.status == Status.FAILED and outcome.retry_at is not None:
            self._come_back(did, outcome.retry_at, "retry")
        elif outcome.status == Status.DISPATCHED:
            # The attempt could not be recorded: its lease runs out, then it is sent again.
            self._come_back(did, self.app.clock.now() + executor.leases.ttl + LEASE_MARGIN, "unrecorded")
        return str(outcome.status)

    def _claim_batch(self, items: list[tuple[uuid.UUID, Mapping[str, Any]]]) -> list[Claimed | None]:
        infos: dict[uuid.UUID, Mapping[str, Any]] = {}
        for did, info in items:
            infos.setdefault(did, info)
        clock = self.app.clock

        def noted(conn: Connection, ids: Sequence[uuid.UUID]) -> None:
            deliveries.note(conn, {i: dict(infos[i]) for i in ids}, event="celery_task", checkpoint="celery",
                            now=clock.now())

        claimed = {c.message.delivery_id: c for c in self.app.executor.claim(list(infos), on_claimed=noted)}
        # Two tasks of one delivery in the same batch: only the first gets it.
        return [claimed.pop(did, None) for did, _ in items]

    def _not_claimed(self, did: uuid.UUID) -> str:
        executor = self.app.executor
        now = self.app.clock.now()
        row = executor.status_of(did)
        if row is None:
            return "missing"
        if row.status in FINAL:
            return str(row.status)
        if row.status == Status.DISPATCHED:
            self._come_back(did, (row.lease_expires_at or now) + LEASE_MARGIN, "in_flight")
            return "in_flight"
        if row.channel not in executor.channels:
            raise UnknownChannelError(
                f"delivery {did} uses channel {row.channel!r}, which is not configured in this worker"
            )
        due = row.not_before if row.not_before is not None and row.not_before > now else now + LEASE_MARGIN
        self._come_back(did, due, str(row.status))
        return str(row.status)

    def _come_back(self, did: uuid.UUID, due: datetime, reason: str) -> None:
        self.relay.schedule([Due(did, due)], reason=reason)
        if due <= self.app.clock.now() + self.eta_horizon:
            self._publish_quietly([did], by="task")

    def relay_pass(self, *, jobs: bool = True) -> int:
        """One relay pass: fire due cron ticks, publish due outbox rows, wake job queues with due jobs.

        Args:
            jobs: also fire cron ticks and wake ``run_jobs`` tasks (``False``
                where ``chimeway worker`` runs the jobs itself).

        Returns:
            how many delivery tasks were published.
        """
        if jobs and self._bridged():
            try:
                self.app.scheduler.run()
            except Exception:
                log.exception("firing cron ticks failed; the next pass tries again")
        published = self.relay.publish_due()
        if jobs:
            self._wake_due_jobs()
        return published

    def rescue_pass(self, *, jobs: bool = True) -> RescueReport:
        """One rescue pass: re-drive sends whose lease ran out and deliveries whose task was lost.

        Args:
            jobs: also rescue jobs of dead ``run_jobs`` tasks and prune what is past its age.
        """
        report = self.relay.rescue(self.app.executor, idle=self.stale_after)
        if jobs and self._bridged():
            self.app.queue.rescue()
            with self._prune_lock:
                due = time.monotonic() - self._last_prune >= PRUNE_EVERY
                if due:
                    self._last_prune = time.monotonic()
            if due:
                self.app.pruner.run(self.app.clock.now())
        self.relay.publish_due()
        return report

    def run_jobs(self, queue: str) -> int:
        """The ``chimeway.run_jobs`` task: run the jobs of one Chimeway queue that are due.

        Args:
            queue: a queue the app declares.
        """
        if queue not in self.app.queue.queues:
            log.error("run_jobs: the app declares no queue %r; ignored", queue)
            return 0
        return self.app.queue.work(until_empty=True, queues=[queue])

    # --- waking job queues ---------------------------------------------------------------------

    def _bridged(self) -> frozenset[str]:
        if self.job_queues is not None:
            return self.job_queues
        return frozenset(q for q in self.app.queue.queues if q != DELIVERY_QUEUE)

    def _jobs_inserted(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        bridged = self._bridged()
        if not bridged:
            return
        now = self.app.clock.now()
        until = now + self.eta_horizon
        wakes: set[tuple[str, datetime | None]] = set()
        for row in rows:
            queue, at = row["queue"], row["scheduled_at"]
            if queue not in bridged:
                continue
            if at <= now:
                wakes.add((queue, None))
            elif at <= until:
                wakes.add((queue, at))
        if wakes:
            after_commit(conn, lambda: self._wake(wakes))

    def _wake_due_jobs(self) -> None:
        bridged = self._bridged()
        if not bridged:
            return
        j = jobs_table
        now = self.app.clock.now()
        waiting = sa.and_(j.c.state.in_(DUE_JOB_STATES), j.c.queue.in_(sorted(bridged)))
        with self.app.engine.connect() as conn:
            due = conn.execute(sa.select(j.c.queue).where(waiting, j.c.scheduled_at <= now).distinct()).scalars()
            wakes: set[tuple[str, datetime | None]] = {(str(q), None) for q in due}
            soon = conn.execute(
                sa.select(j.c.queue, j.c.scheduled_at)
                .where(waiting, j.c.scheduled_at > now, j.c.scheduled_at <= now + self.eta_horizon)
                .distinct().limit(100)
            ).all()
        wakes.update((str(q), at) for q, at in soon)
        self._wake(wakes)

    def _wake(self, wakes: Iterable[tuple[str, datetime | None]]) -> None:
        try:
            with self.celery.producer_or_acquire() as producer:
                _connect_once(producer)
                for queue, eta in sorted(wakes, key=lambda w: (w[0], w[1] is not None, w[1] or 0)):
                    self.celery.send_task(self.task_names["run_jobs"], args=(queue,), eta=eta,
                                          queue=self.relay_queue, producer=producer, retry=False,
                                          add_to_parent=False)
        except Exception as exc:
            log.warning("could not wake Chimeway job queues through Celery (%s: %s); the relay will",
                        type(exc).__name__, exc)


class _CeleryPublisher:
    """Publishes outbox rows as ``chimeway.deliver`` tasks, ``task_id`` = delivery id."""

    name = "celery"

    def __init__(self, dispatcher: CeleryDispatcher) -> None:
        self.dispatcher = dispatcher

    def publish(self, rows: Sequence[Taken], *, now: datetime) -> Published:
        d = self.dispatcher
        task_ids: list[str] = []
        try:
            with d.celery.producer_or_acquire() as producer:
                _connect_once(producer)
                for row in rows:
                    did = str(row.delivery_id)
                    d.celery.send_task(d.task_names["deliver"], args=(did,), task_id=did,
                                       eta=row.due_at if row.due_at > now else None, queue=d.queue,
                                       producer=producer, retry=False, add_to_parent=False)
                    task_ids.append(did)
        except Exception as exc:
            return Published(task_ids=task_ids, error=exc)
        return Published(task_ids=task_ids)


def _connect_once(producer: Any) -> None:
    # One try, no retry loop: a broker that is away leaves the rows to the
    # relay instead of holding the committing request thread for seconds.
    producer.connection.ensure_connection(max_retries=0)


def _task_info(task: Any) -> dict[str, Any]:
    request = task.request
    info: dict[str, Any] = {"task_id": request.id, "worker": request.hostname}
    delivery_info = request.delivery_info or {}
    if delivery_info.get("redelivered"):
        info["redelivered"] = True
    return info


def _rescued(report: RescueReport) -> int:
    return report.lease_expired + report.lost
