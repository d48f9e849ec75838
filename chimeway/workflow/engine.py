"""The workflow interpreter: move a run through its program, record why.

:func:`run_from` executes ops from one index until the run has to wait for
something outside it (a delivery to become final, a wait to fall due, a
signal) or ends. It only appends to a :class:`Batch` — rows to insert, runs
to update, jobs to schedule — so planning (inside the caller's transaction)
and progression (inside a transaction holding the run's row lock) share one
set of rules and each writes the batch its own way.

Every change of a run's state or step appends one transition with a reason:

- ``started``: the run began (context: the notifier version and fingerprint);
- ``delivery_succeeded`` / ``delivery_failed`` / ``delivery_suppressed``: the
  step's deliveries became final (context: each delivery's status and
  reason, the ``outcome``, for a failure its kind — ``failure``: bounced,
  retries_exhausted or permanent —, ``route`` when an ``on={...}`` route was
  taken, and ``branch: on_failure`` when the failure branch was taken);
- ``wait_elapsed`` / ``timeout``: a wait fell due;
- ``signal_until``: an ``until`` signal ended the wait early;
- ``signal_unless``: an ``unless`` signal stopped the run;
- ``stop_step``, ``end_of_workflow``, ``cancelled``, ``workflow_unavailable``;
- ``route_loop``: routes led back to a step of this same advance with
  nothing to wait for (every delivery final at once), so the run stopped.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chimeway.channels.base import Channel
from chimeway.db import insert_rows
from chimeway.decisions import Decision
from chimeway.deliveries import FINAL as DELIVERY_FINAL
from chimeway.deliveries import PlannedDelivery, decide, new_rows
from chimeway.dispatch.base import Due
from chimeway.errors import ChimewayError
from chimeway.ids import new_id
from chimeway.models import (
    decisions_table,
    deliveries_table,
    notifications_table,
    signals_table,
    workflow_deliveries_table,
    workflow_transitions_table,
)
from chimeway.notifier import Notifier
from chimeway.planning import render_message
from chimeway.queue import NewJob
from chimeway.values import Recipient
from chimeway.workflow.names import PROGRESS_WORKER, WORKFLOW_QUEUE
from chimeway.workflow.program import FAILURES, DeliverOp, GotoOp, Program, StopOp, WaitOp

__all__ = [
    "FINAL",
    "Batch",
    "RunState",
    "SignalRow",
    "apply_signal",
    "early_signal_column",
    "failure_kind",
    "load_run",
    "run_from",
    "step_outcome",
    "wait_due",
    "wait_key",
]

FINAL = tuple(sorted(DELIVERY_FINAL))


@dataclass(kw_only=True)
class RunState:
    """A run as the interpreter sees it (loaded from, or about to become, a row)."""

    id: uuid.UUID
    notification_id: uuid.UUID
    event_id: uuid.UUID
    tenant: str
    recipient: Recipient
    notifier_key: str
    notifier_version: int
    fingerprint: str
    state: str
    step: int | None
    wait_until: datetime | None
    wait_signals: list[str] | None
    signal_mark: uuid.UUID
    transitions: int
    created_at: datetime
    finished_at: datetime | None = None

    def values(self, now: datetime) -> dict[str, Any]:
        """The columns a progression writes back.

        Args:
            now: the progression's time (``updated_at``).
        """
        return {
            "state": self.state, "step": self.step, "wait_until": self.wait_until,
            "wait_signals": self.wait_signals, "signal_mark": self.signal_mark,
            "transitions": self.transitions, "updated_at": now, "finished_at": self.finished_at,
        }


@dataclass(frozen=True, kw_only=True)
class SignalRow:
    """A signal as routing sees it."""

    id: uuid.UUID
    name: str
    actor: str
    notification_id: uuid.UUID | None
    created_at: datetime


@dataclass(kw_only=True)
class Batch:
    """What one transaction's progressions will write.

    Args:
        conn: the transaction's connection (reads: signals, notifications).
        now: the clock's time.
        channels: configured channels (validation of new messages).
        notifier: the notifier instance per key, or ``None`` when this
            process does not know it.
        params: the event params by event id.
        check_signals: look for signals a run has not used yet when it enters
            a wait (``False`` at planning: the run is brand new).
    """

    conn: Connection
    now: datetime
    channels: Mapping[str, Channel]
    notifier: Callable[[str], Notifier | None]
    params: Callable[[uuid.UUID], Mapping[str, Any]]
    check_signals: bool = True
    notifications: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[PlannedDelivery] = field(default_factory=list)
    delivery_events: dict[uuid.UUID, tuple[uuid.UUID, str]] = field(default_factory=dict)
    links: list[dict[str, Any]] = field(default_factory=list)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[NewJob] = field(default_factory=list)
    runs: dict[uuid.UUID, RunState] = field(default_factory=dict)
    known_notifications: dict[tuple[uuid.UUID, str], uuid.UUID] = field(default_factory=dict)
    # Rows the planner inserts itself after the checks (looked up, not written).
    planned_notifications: list[dict[str, Any]] = field(default_factory=list)
    # Messages the planner already rendered: (recipient id, step) → fields.
    rendered: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    # The timer jobs of the waits runs left here (their unique keys): pointless now.
    left_waits: list[str] = field(default_factory=list)
    # Runs whose due wait is known to have no signal to find (read with
    # their lock): run id → (its signal mark, its deadline) when that was known.
    no_early_signal: dict[uuid.UUID, tuple[uuid.UUID, datetime]] = field(default_factory=dict)

    @property
    def due(self) -> list[Due]:
        """The new deliveries the dispatcher must execute."""
        return [Due(d.id, d.not_before) for d in self.deliveries if d.status in ("pending", "deferred")]

    def transition(self, run: RunState, to_state: str, to_step: int | None, reason: str,
                   context: Mapping[str, Any]) -> None:
        """Append a transition and move the run to ``to_state`` at ``to_step``.

        Args:
            run: the run.
            to_state: its new state.
            to_step: its new step (``None`` once completed).
            reason: why it moved.
            context: the details of why (JSON values).
        """
        if run.state == "waiting" and run.wait_until is not None:
            self.left_waits.append(wait_key(run))
        self.transitions.append({
            "id": new_id(), "run_id": run.id, "seq": run.transitions + 1, "at": self.now,
            "from_state": None if run.transitions == 0 else run.state, "to_state": to_state,
            "from_step": None if run.transitions == 0 else run.step, "to_step": to_step,
            "reason": reason, "context": dict(context),
        })
        run.transitions += 1
        run.state = to_state
        run.step = to_step
        if to_state != "waiting":
            run.wait_until = None
            run.wait_signals = None
        if to_state in ("completed", "stopped", "cancelled"):
            run.finished_at = self.now
        self.runs[run.id] = run

    def write(self, *, skip_deliveries: bool = False) -> None:
        """Insert the batch's rows.

        Args:
            skip_deliveries: the planner inserts the deliveries itself (from the plan).
        """
        conn = self.conn
        insert_rows(conn, notifications_table, self.notifications)
        if not skip_deliveries:
            rows, decisions = new_rows(((d, *self.delivery_events[d.id]) for d in self.deliveries), self.now)
            insert_rows(conn, deliveries_table, rows)
            insert_rows(conn, decisions_table, decisions)
        insert_rows(conn, workflow_deliveries_table, self.links)
        insert_rows(conn, workflow_transitions_table, self.transitions)


def run_from(batch: Batch, program: Program, run: RunState, index: int | None, reason: str,
             context: Mapping[str, Any]) -> None:
    """Execute ``program`` from op ``index`` until the run must wait or ends.

    Args:
        batch: collects the rows to write.
        program: the run's program.
        run: the run (its state and step are updated in place).
        index: the op to execute next; ``None`` completes the run.
        reason: why the run moves (the transition's reason).
        context: details of that cause (JSON values).
    """
    delivered: set[int] = set()
    while True:
        if index is None:
            batch.transition(run, "completed", None, reason if reason != "started" else "end_of_workflow",
                             {**context, "end": True})
            return
        op = program.ops[index]
        if isinstance(op, GotoOp):
            index = op.target
            continue
        if isinstance(op, StopOp):
            batch.transition(run, "stopped", index, "stop_step", {**context, "after": reason})
            return
        if isinstance(op, DeliverOp):
            if index in delivered:
                # Every delivery of this step was final at once (no recipients,
                # an invalid message) and the routes came back to it: running it
                # again would decide the same, forever.
                batch.transition(run, "stopped", index, "route_loop", {**context, "after": reason})
                return
            delivered.add(index)
            statuses, detail = _deliver(batch, run, op)
            batch.transition(run, "active", index, reason, {**context, **detail})
            if any(s["status"] not in FINAL for s in statuses.values()):
                return
            # Nothing to wait for (invalid message, no recipients): decide now.
            reason, context, index = step_outcome(op, statuses)
            continue
        assert isinstance(op, WaitOp)
        run.wait_until = batch.now + op.duration if op.duration is not None else None
        waiting = {**context, "wait_until": None if run.wait_until is None else run.wait_until.isoformat()}
        if op.unless:
            waiting["unless"] = list(op.unless)
        if op.until:
            waiting["until"] = list(op.until)
        batch.transition(run, "waiting", index, reason, waiting)
        run.wait_signals = list(op.signals) or None
        if batch.check_signals and op.signals:
            early = _unused_signal(batch, run, op.signals)
            if early is not None:
                moved = apply_signal(batch, program, run, early, before_wait=True)
                if moved:
                    return
        if run.wait_until is not None:
            batch.jobs.append(NewJob(worker=PROGRESS_WORKER, queue=WORKFLOW_QUEUE,
                                     args={"run_id": str(run.id), "step": index},
                                     scheduled_at=run.wait_until, unique_key=wait_key(run)))
        return


def step_outcome(op: DeliverOp, statuses: Mapping[str, Mapping[str, Any]]
                 ) -> tuple[str, dict[str, Any], int | None]:
    """Where a deliver step goes once all its deliveries are final.

    The step *succeeded* if any delivery succeeded, was *suppressed* if all
    were, and otherwise *failed*; a failure's kind comes from the cancelled
    deliveries' reasons (:func:`failure_kind`). The outcome's route, if the
    step has one, decides where the run goes (:meth:`DeliverOp.route`).

    Args:
        op: the deliver step.
        statuses: delivery id → ``{"status": ..., "reason": ...}``.
    """
    seen = {s["status"] for s in statuses.values()}
    context: dict[str, Any] = {"deliveries": {k: dict(v) for k, v in statuses.items()}}
    if "succeeded" in seen:
        reason, outcome, kind = "delivery_succeeded", "succeeded", "succeeded"
    elif seen == {"suppressed"}:
        reason, outcome, kind = "delivery_suppressed", "suppressed", "suppressed"
    else:
        kinds = {failure_kind(s.get("reason")) for s in statuses.values() if s["status"] != "suppressed"}
        # Escalations that failed in different ways have no single kind:
        # only the ``failed`` route (or on_failure) applies to them.
        kind = kinds.pop() if len(kinds) == 1 else "failed"
        reason, outcome = "delivery_failed", "failed"
        context["failure"] = kind
    context["outcome"] = outcome
    route, target = op.route(kind)
    if route == "on_failure":
        context["branch"] = "on_failure"
    elif route is not None:
        context["route"] = route
    return reason, context, target


def failure_kind(reason: str | None) -> str:
    """A failed delivery's kind from its stored reason: ``bounced``, ``retries_exhausted`` or ``permanent``.

    Every other reason a delivery is cancelled for (a provider's permanent
    refusal, an invalid message, a template that cannot render, a recipient
    function that raised) is as final as a permanent refusal.

    Args:
        reason: the delivery's ``reason`` (``"bounced: 550 no such user"``).
    """
    head = (reason or "").split(":", 1)[0].strip()
    return head if head in FAILURES else "permanent"


def wait_due(batch: Batch, program: Program, run: RunState) -> bool:
    """Continue a run whose wait has fallen due; ``False`` if it is not due.

    Args:
        batch: collects the rows to write.
        program: the run's program.
        run: the run, locked by the caller.
    """
    if run.state != "waiting" or run.step is None or run.wait_until is None or run.wait_until > batch.now:
        return False
    op = program.ops[run.step]
    assert isinstance(op, WaitOp)
    if op.signals:
        # A signal recorded before the deadline wins, however late it is
        # routed (a backlog of router jobs, a crash between commit and routing).
        early = _unused_signal(batch, run, op.signals, before=run.wait_until)
        if early is not None and apply_signal(batch, program, run, early, routed_late=True):
            return True
    reason = "timeout" if op.until else "wait_elapsed"
    run_from(batch, program, run, op.next, reason, {"waited_until": run.wait_until.isoformat()})
    return True


def apply_signal(batch: Batch, program: Program, run: RunState, signal: SignalRow,
                 *, before_wait: bool = False, routed_late: bool = False) -> bool:
    """Apply a signal to a waiting run; ``False`` if its wait does not name it.

    Args:
        batch: collects the rows to write.
        program: the run's program.
        run: the run, locked by the caller.
        signal: the signal.
        before_wait: the signal arrived before the run entered this wait.
        routed_late: found by the wait's own timer: recorded before the
            deadline, not yet routed when it fell due.
    """
    if run.state != "waiting" or run.step is None or signal.id <= run.signal_mark:
        return False
    op = program.ops[run.step]
    if not isinstance(op, WaitOp) or signal.name not in op.signals:
        return False
    run.signal_mark = signal.id
    context: dict[str, Any] = {"signal": signal.name, "signal_id": str(signal.id), "actor": signal.actor,
               "signal_at": signal.created_at.isoformat()}
    if before_wait:
        context["arrived_before_wait"] = True
    if routed_late:
        context["recorded_before_deadline"] = True
    if signal.name in op.unless:
        batch.transition(run, "stopped", run.step, "signal_unless", context)
        return True
    run_from(batch, program, run, op.next, "signal_until", context)
    return True


def wait_key(run: RunState) -> str:
    """The unique key of the timer job of the wait ``run`` is in (its transition into the wait names it).

    Args:
        run: a run that has just entered, or is in, a wait.
    """
    return f"{PROGRESS_WORKER}:{run.id}:{run.transitions}"


def early_signal_column(runs: sa.Table) -> sa.Label[bool]:
    """Whether a run may have a signal to find when its wait falls due: read with the run, no round trip.

    Any signal of the run's tenant and recipient newer than its mark, older
    than its deadline, for its notification or none. Only when this says so
    does :func:`wait_due` look for the first one whose name the wait takes
    (a per-row subquery: an index probe per run, whatever the statistics).

    Args:
        runs: ``chimeway_workflow_runs``.
    """
    s, r = signals_table, runs
    return sa.exists().where(
        r.c.state == "waiting",  # tested once per run, before any signal is read
        s.c.tenant == r.c.tenant, s.c.actor == r.c.recipient_id, s.c.id > r.c.signal_mark,
        s.c.created_at < r.c.wait_until,
        sa.or_(s.c.notification_id.is_(None), s.c.notification_id == r.c.notification_id),
    ).label("early_signal")


def _unused_signal(batch: Batch, run: RunState, names: Sequence[str], *,
                   before: datetime | None = None) -> SignalRow | None:
    # A signal that came while the run was elsewhere (the recipient read the
    # in-app message before its delivery step finished) still counts once.
    if before is not None and batch.no_early_signal.get(run.id) == (run.signal_mark, before):
        return None
    conn = batch.conn
    s = signals_table
    query = (
        sa.select(s.c.id, s.c.name, s.c.actor, s.c.notification_id, s.c.created_at)
        .where(s.c.tenant == run.tenant, s.c.actor == run.recipient.id, s.c.name.in_(list(names)),
               s.c.id > run.signal_mark,
               sa.or_(s.c.notification_id.is_(None), s.c.notification_id == run.notification_id))
        .order_by(s.c.id).limit(1)
    )
    if before is not None:
        query = query.where(s.c.created_at < before)
    row = conn.execute(query).first()
    if row is None:
        return None
    return SignalRow(id=row.id, name=row.name, actor=row.actor, notification_id=row.notification_id,
                     created_at=row.created_at)


def _deliver(batch: Batch, run: RunState, op: DeliverOp) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Plan the deliveries of one deliver step; returns their statuses and the transition detail."""
    detail: dict[str, Any] = {"channel": op.channel}
    notifier = batch.notifier(run.notifier_key)
    params = batch.params(run.event_id)
    try:
        recipients = _recipients(op, params, run.recipient)
    except Exception as exc:  # user code: record it and let the run take its failure path
        detail["error"] = f"{type(exc).__name__}: {exc}"[:500]
        return {"-": {"status": "cancelled", "reason": f"recipients_failed: {detail['error']}"}}, detail
    if not recipients:
        return {"-": {"status": "suppressed", "reason": "no_recipients"}}, {**detail, "recipients": []}
    statuses: dict[str, dict[str, Any]] = {}
    for recipient in recipients:
        notification_id = _notification_for(batch, run, recipient)
        planned = PlannedDelivery(id=new_id(), notification_id=notification_id, recipient=recipient,
                                  channel=op.channel, fields={}, step=op.index)
        channel = batch.channels.get(op.channel)
        if notifier is None:
            planned.status, planned.reason = "cancelled", f"notifier_unavailable: {run.notifier_key}"
        else:
            try:
                known = batch.rendered.pop((recipient.id, op.index), None)
                planned.fields = known if known is not None else render_message(notifier, params, recipient,
                                                                                  op.channel)
                problem = channel.validate(planned.fields, recipient) if channel is not None else None
            except ChimewayError as exc:
                problem = f"render_failed: {exc}"
            if problem is not None:
                planned.status = "cancelled"
                planned.reason = problem if problem.startswith("render_failed") else f"invalid_message: {problem}"
        if planned.status == "cancelled":
            decide(planned, Decision(status="cancelled", reason=str(planned.reason), inputs={"step": op.index}),
                   checkpoint="workflow")
        decide(planned, Decision(status="pending", reason="workflow_step", event_name="workflow_step",
                                 inputs={"run_id": str(run.id), "step": op.index, "path": op.path,
                                         **({"escalated_to": recipient.id} if recipient.id != run.recipient.id
                                            else {})}), checkpoint="workflow")
        batch.deliveries.append(planned)
        batch.delivery_events[planned.id] = (run.event_id, run.tenant)
        batch.links.append({"delivery_id": planned.id, "run_id": run.id, "step": op.index})
        statuses[str(planned.id)] = {"status": planned.status, "reason": planned.reason,
                                     "recipient": recipient.id}
    detail["planned"] = list(statuses)
    detail["recipients"] = sorted({v["recipient"] for v in statuses.values()})
    return statuses, detail


def _recipients(op: DeliverOp, params: Mapping[str, Any], recipient: Recipient) -> list[Recipient]:
    if op.to_ref is None:
        return [recipient]
    if op.to is None:
        raise LookupError(f"recipient function {op.to_ref} is not importable in this process")
    got = op.to(params, recipient)
    items = [got] if isinstance(got, Recipient) else list(got or [])
    for item in items:
        if not isinstance(item, Recipient) or not item.id:
            raise TypeError(f"{op.to_ref} returned {type(item).__name__}, not a Recipient with an id")
    return list({item.id: item for item in items}.values())


def _notification_for(batch: Batch, run: RunState, recipient: Recipient) -> uuid.UUID:
    if recipient.id == run.recipient.id:
        return run.notification_id
    key = (run.event_id, recipient.id)
    known = batch.known_notifications.get(key)
    if known is not None:
        return known
    n = notifications_table
    for row in batch.planned_notifications:
        if row["event_id"] == run.event_id and row["recipient_id"] == recipient.id:
            batch.known_notifications[key] = row["id"]
            return uuid.UUID(str(row["id"]))
    existing = batch.conn.execute(
        sa.select(n.c.id).where(n.c.event_id == run.event_id, n.c.recipient_id == recipient.id).limit(1)
    ).scalar()
    if existing is None:
        existing = new_id()
        base = next((row for row in [*batch.planned_notifications, *batch.notifications]
                     if row["id"] == run.notification_id), None)
        if base is None:
            base = dict(batch.conn.execute(sa.select(n.c.notifier_key, n.c.category)
                                           .where(n.c.id == run.notification_id)).one()._mapping)
        batch.notifications.append({
            "id": existing, "event_id": run.event_id, "tenant": run.tenant, "recipient_id": recipient.id,
            "recipient": recipient.to_json(), "notifier_key": base["notifier_key"],
            "category": base["category"], "created_at": batch.now,
        })
    batch.known_notifications[key] = existing
    return existing


def load_run(row: Any) -> RunState:
    """A ``RunState`` from a ``chimeway_workflow_runs`` row joined with the notification's recipient.

    Args:
        row: a row from ``Workflows.locked_runs``.
    """
    return RunState(
        id=row.id, notification_id=row.notification_id, event_id=row.event_id, tenant=row.tenant,
        recipient=Recipient.from_json(row.recipient), notifier_key=row.notifier_key,
        notifier_version=row.notifier_version, fingerprint=row.fingerprint, state=row.state,
        step=row.step, wait_until=row.wait_until, wait_signals=row.wait_signals,
        signal_mark=row.signal_mark, transitions=row.transitions, created_at=row.created_at,
        finished_at=row.finished_at,
    )

