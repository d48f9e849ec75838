"""Record triggers that run an action on each row (AshOban's triggers), on SQLite."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sched_support import Audit, Order, Reminder
from sqlalchemy.orm import Session

from chimeway import Chimeway
from chimeway.errors import InvalidInputError
from chimeway.models import Event, Job
from chimeway.queue import JobInfo
from chimeway.testing import FakeClock

ROW = "chimeway.record_trigger.row"
BATCH = "chimeway.record_trigger.rows"


def add_orders(app: Chimeway, count: int, *, shop: Callable[[int], str] = lambda i: "acme") -> None:
    with Session(app.engine) as session, session.begin():
        session.add_all(Order(id=i, shop=shop(i)) for i in range(1, count + 1))


def orders(app: Chimeway) -> dict[int, Order]:
    with Session(app.engine) as session:
        return {o.id: o for o in session.scalars(sa.select(Order))}


def row_jobs(app: Chimeway, worker: str = ROW) -> list[Job]:
    with Session(app.engine) as session:
        return list(session.scalars(sa.select(Job).where(Job.worker == worker).order_by(Job.id)))


def process(order: Order) -> None:
    order.runs += 1
    order.processed = True


def test_an_action_runs_once_on_each_matching_row_in_batch_jobs(app: Chimeway) -> None:
    app.record_trigger("process", model=Order, where=Order.processed.is_(False), action=process, batch_size=4)
    add_orders(app, 10)
    first = app.scan_record_trigger("process")
    assert (first.matched, first.enqueued, first.skipped, first.triggered) == (10, 10, 0, 0)
    again = app.scan_record_trigger("process")  # the jobs have not run yet: nothing new
    assert (again.matched, again.enqueued, again.skipped) == (10, 0, 10)
    assert app.work() == 3  # a job per page of batch_size rows
    assert {o.runs for o in orders(app).values()} == {1}
    after = app.scan_record_trigger("process")  # processed rows stopped matching
    assert (after.matched, after.enqueued) == (0, 0)
    jobs = row_jobs(app, BATCH)
    assert {j.queue for j in jobs} == {"process"} and "process" in app.queue.queues
    assert [j.args for j in jobs] == [{"trigger": "process", "rows": rows} for rows in ([1, 2, 3, 4], [5, 6, 7, 8], [9, 10])]
    assert row_jobs(app) == []  # no row needed a job of its own


def test_the_action_shares_the_row_jobs_transaction(app: Chimeway, clock: FakeClock) -> None:
    seen: list[tuple[str | None, str | None, str]] = []
    broken = {2}

    def audited(order: Order, *, session: Session, actor: str | None, tenant: str | None, job: JobInfo) -> None:
        order.processed = True
        session.add(Audit(order_id=order.id, note=f"processed for {actor}"))
        seen.append((actor, tenant, job.worker))
        if order.id in broken:
            raise RuntimeError("payment service down")

    app.record_trigger("audited", model=Order, where=Order.processed.is_(False), action=audited,
                       actor="system:billing", tenant="acme")
    add_orders(app, 2)
    app.scan_record_trigger("audited")
    app.work()
    # The failing attempt wrote nothing: neither the row nor the audit.
    assert {i: o.processed for i, o in orders(app).items()} == {1: True, 2: False}
    with Session(app.engine) as session:
        assert session.scalars(sa.select(Audit.order_id)).all() == [1]
    broken.clear()
    clock.advance(minutes=1)
    app.work()
    assert orders(app)[2].processed
    # Both rows ran in their batch's job; the failed one again in a job of its own.
    assert seen == [("system:billing", "acme", BATCH)] * 2 + [("system:billing", "acme", ROW)]


def test_a_registered_job_is_called_with_the_primary_key(app: Chimeway) -> None:
    handled: list[int] = []

    @app.job(queue="default")
    def ship(order_id: int, session: Session) -> None:
        handled.append(order_id)
        session.execute(sa.update(Order).where(Order.id == order_id).values(processed=True))

    app.record_trigger("ship", model=Order, where=Order.processed.is_(False), action=ship, cron=None)
    add_orders(app, 3)
    assert len(app.run_record_triggers("ship", [1, 3])) == 1  # one batch
    app.work()
    assert sorted(handled) == [1, 3]
    assert {i: o.processed for i, o in orders(app).items()} == {1: True, 2: False, 3: True}


def test_an_on_demand_trigger_never_scans_by_itself(app: Chimeway, clock: FakeClock) -> None:
    app.record_trigger("on_demand", model=Order, where=Order.processed.is_(False), action=process, cron=None)
    add_orders(app, 5)
    assert app.cron_schedules() == []
    for _ in range(3):
        clock.advance(hours=1)
        assert app.run_scheduler() == []
        app.work()
    assert {o.runs for o in orders(app).values()} == {0}
    [status] = app.record_triggers_status()
    assert (status["schedule"], status["next_scan"], status["matching"], status["pending"]) == (None, None, 5, 5)
    with Session(app.engine) as session, session.begin():
        two = session.scalars(sa.select(Order).where(Order.id.in_([2, 4]))).all()
        app.run_record_triggers("on_demand", two, session=session, actor="user:7")
    assert [j.args for j in row_jobs(app, BATCH)] == [{"trigger": "on_demand", "rows": [2, 4], "actor": "user:7"}]
    app.work()
    assert {i: o.runs for i, o in orders(app).items()} == {1: 0, 2: 1, 3: 0, 4: 1, 5: 0}
    assert app.scan_record_trigger("on_demand").enqueued == 3  # the scan call, by hand
    app.work()
    assert {o.runs for o in orders(app).values()} == {1}


def test_run_record_triggers_enqueued_in_a_rolled_back_transaction_runs_nothing(app: Chimeway) -> None:
    app.record_trigger("rollback", model=Order, where=Order.processed.is_(False), action=process, cron=None)
    add_orders(app, 1)
    with Session(app.engine) as session:
        session.begin()
        app.run_record_triggers("rollback", [1], session=session)
        session.rollback()
    assert app.work() == 0 and orders(app)[1].runs == 0


def test_on_error_runs_on_the_row_in_its_own_transaction_after_the_last_attempt(
        app: Chimeway, clock: FakeClock) -> None:
    calls: list[tuple[int, str]] = []

    def explode(order: Order) -> None:
        order.runs += 1
        raise ValueError(f"order {order.id} has no address")

    def mark_failed(order: Order, *, error: BaseException, session: Session) -> None:
        calls.append((order.id, str(error)))
        order.failed = str(error)
        session.add(Audit(order_id=order.id, note="gave up"))

    app.record_trigger("fragile", model=Order, where=Order.failed.is_(None), action=explode,
                       on_error=mark_failed, max_attempts=2)
    add_orders(app, 1)
    app.scan_record_trigger("fragile")
    for _ in range(3):
        app.work()
        clock.advance(minutes=5)
    assert calls == [(1, "order 1 has no address")]
    order = orders(app)[1]
    assert (order.failed, order.runs) == ("order 1 has no address", 0)  # on_error's writes only
    # The batch was the first attempt; the row's own job had the second.
    [job] = row_jobs(app)
    assert (job.state, job.attempt, job.max_attempts, job.args) == (
        "discarded", 1, 1, {"trigger": "fragile", "row": 1, "tried": 1})
    assert app.scan_record_trigger("fragile").matched == 0  # on_error made it stop matching


def test_the_older_on_error_form_still_gets_the_row_id_and_the_error(app: Chimeway, clock: FakeClock) -> None:
    errors: list[tuple[Any, str]] = []

    def explode(order: Order) -> None:
        raise LookupError("no stock")

    app.record_trigger("legacy", model=Order, where=Order.processed.is_(False), action=explode, max_attempts=1,
                       on_error=lambda row_id, exc: errors.append((row_id, str(exc))))
    add_orders(app, 1)
    app.scan_record_trigger("legacy")
    app.work()
    assert errors == [(1, "no stock")]
    assert app.scan_record_trigger("legacy").skipped == 1  # given up: left alone until retried


def test_max_attempts_one_tries_a_row_once_and_a_retry_by_hand_tries_again(app: Chimeway) -> None:
    calls: list[int] = []
    broken = {1}

    def once(order: Order) -> None:
        calls.append(order.id)
        if order.id in broken:
            raise RuntimeError("carrier down")
        order.processed = True

    app.record_trigger("once", model=Order, where=Order.processed.is_(False), action=once, max_attempts=1)
    add_orders(app, 2)
    app.scan_record_trigger("once")
    app.work()
    assert calls == [1, 2]  # row 1 was not tried a second time
    [job] = row_jobs(app)
    assert job.state == "discarded" and "used its 1 attempt(s) in its batch: RuntimeError: carrier down" in str(job.errors)
    assert app.scan_record_trigger("once").skipped == 1
    broken.clear()
    assert app.queue.retry(job.id)
    app.work()
    assert calls == [1, 2, 1] and orders(app)[1].processed


def test_without_row_isolation_a_failure_redoes_the_batch_with_savepoints(app: Chimeway) -> None:
    calls: list[int] = []

    def count(order: Order) -> None:
        calls.append(order.id)
        order.runs += 1
        if order.id == 2:
            raise RuntimeError("no stock")
        order.processed = True

    app.record_trigger("fast", model=Order, where=Order.processed.is_(False), action=count, isolate_rows=False)
    add_orders(app, 3)
    app.scan_record_trigger("fast")
    app.work()
    # Row 1 ran again once the batch was redone; its first run was rolled back with the batch.
    assert calls == [1, 2, 1, 2, 3]
    assert {i: (o.processed, o.runs) for i, o in orders(app).items()} == {1: (True, 1), 2: (False, 0), 3: (True, 1)}
    assert [j.args for j in row_jobs(app)] == [{"trigger": "fast", "row": 2, "tried": 1}]


def test_record_limit_caps_each_scan(app: Chimeway) -> None:
    app.record_trigger("limited", model=Order, where=Order.processed.is_(False), action=process,
                       record_limit=4, batch_size=3)
    add_orders(app, 10)
    assert app.scan_record_trigger("limited").enqueued == 4
    assert app.scan_record_trigger("limited").enqueued == 4  # rows 1-4 have jobs; 5-8 now
    app.work()
    assert [i for i, o in orders(app).items() if o.processed] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert app.scan_record_trigger("limited").enqueued == 2


def test_record_limit_caps_a_notifier_scan_too(app: Chimeway) -> None:
    app.record_trigger("limited_notes", model=Order, where=sa.true(), notifier=Reminder,
                       params=lambda o: {"patient": o.id, "appointment": o.id, "starts_at": "soon"},
                       record_limit=3, batch_size=2)
    add_orders(app, 5)
    assert app.scan_record_trigger("limited_notes").triggered == 3
    second = app.scan_record_trigger("limited_notes")
    assert (second.triggered, second.already) == (2, 3)


def test_tenants_are_scanned_in_turn_and_handed_to_the_action(app: Chimeway) -> None:
    got: list[tuple[int, str | None]] = []

    def per_shop(order: Order, tenant: str | None) -> None:
        got.append((order.id, tenant))
        order.processed = True

    app.record_trigger("per_shop", model=Order, action=per_shop, tenants=lambda: ["acme", "globex"],
                       where=lambda now, tenant: sa.and_(Order.shop == tenant, Order.processed.is_(False)))
    add_orders(app, 4, shop=lambda i: "acme" if i % 2 else "globex")
    assert app.scan_record_trigger("per_shop").enqueued == 4
    app.work()
    assert sorted(got) == [(1, "acme"), (2, "globex"), (3, "acme"), (4, "globex")]


def test_a_notifier_trigger_per_tenant_triggers_in_that_tenant(app: Chimeway) -> None:
    app.record_trigger("per_shop_notes", model=Order, notifier=Reminder, tenants=lambda: ["acme", "globex"],
                       where=lambda now, tenant: Order.shop == tenant, actor="system:reminders",
                       params=lambda o: {"patient": o.id, "appointment": o.id, "starts_at": "soon"})
    add_orders(app, 3, shop=lambda i: "acme" if i < 3 else "globex")
    assert app.scan_record_trigger("per_shop_notes").triggered == 3
    with Session(app.engine) as session:
        rows = session.execute(sa.select(Event.tenant, Event.actor).order_by(Event.idempotency_key)).all()
    assert [tuple(r) for r in rows] == [("acme", "system:reminders")] * 2 + [("globex", "system:reminders")]


def test_run_record_trigger_runs_the_action_in_the_callers_transaction(app: Chimeway) -> None:
    app.record_trigger("now", model=Order, where=Order.processed.is_(False), action=process, cron=None)
    add_orders(app, 1)
    with Session(app.engine) as session, session.begin():
        order = session.get_one(Order, 1)
        app.run_record_trigger(session, "now", order)
        assert order.processed  # in the caller's unit of work, committed with it
    assert orders(app)[1].runs == 1 and row_jobs(app) == row_jobs(app, BATCH) == []


def test_a_schedule_runs_an_action_in_a_transaction_with_its_actor(app: Chimeway, clock: FakeClock) -> None:
    def close_day(*, session: Session, actor: str, tick: str) -> None:
        session.add(Audit(order_id=0, note=f"closed {tick} by {actor}"))

    app.cron("0 9 * * *", close_day, actor="system:ledger", max_attempts=1)
    app.run_scheduler()
    app.work()
    with Session(app.engine) as session:
        assert session.scalars(sa.select(Audit.note)).all() == ["closed 2026-01-05T09:00:00+00:00 by system:ledger"]
        [job] = session.scalars(sa.select(Job).where(Job.worker.endswith("close_day"))).all()
    assert (job.max_attempts, job.args["actor"]) == (1, "system:ledger")


def test_a_scheduled_action_that_fails_writes_nothing(app: Chimeway) -> None:
    def half_done(*, session: Session) -> None:
        session.add(Audit(order_id=0, note="half"))
        session.flush()
        raise RuntimeError("ledger locked")

    app.cron("0 9 * * *", half_done, max_attempts=1)
    app.run_scheduler()
    app.work()
    with Session(app.engine) as session:
        assert session.scalars(sa.select(Audit)).all() == []
        assert session.scalars(sa.select(Job.state).where(Job.worker.endswith("half_done"))).all() == ["discarded"]


GOOD: dict[str, Any] = {"model": Order, "where": Order.processed.is_(False), "action": process}


def _unfillable(order: Order, flavour: str) -> None: ...


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"notifier": Reminder}, "give a notifier= or an action="),
        ({"action": None}, "give a notifier= or an action="),
        ({"params": {"x": 1}}, "params applies to a notifier"),
        ({"action": _unfillable}, "has a parameter 'flavour' that Chimeway cannot fill"),
        ({"action": "process"}, "action must be a function or a registered job"),
        ({"tenants": lambda: ["a"]}, "with tenants=, where must be a function of .now, tenant."),
        ({"tenants": lambda: ["a"], "tenant": "a", "where": lambda now, tenant: sa.true()}, "tenant and tenants"),
        ({"record_limit": 0}, "record_limit must be an int >= 1"),
        ({"lock_for_update": "yes"}, "lock_for_update must be True or False"),
        ({"isolate_rows": 1}, "isolate_rows must be True or False"),
        ({"actor": 7}, "actor must be a non-empty string"),
        ({"on_error": lambda row, *, flavour: None}, "on_error: .* has a parameter 'flavour'"),
    ],
)
def test_bad_action_triggers_are_refused_naming_the_field(app: Chimeway, changes: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidInputError, match=words):
        app.record_trigger("bad", **{**GOOD, **changes})
    assert app.record_triggers_status() == []


def test_a_trigger_name_too_long_for_its_queue_needs_a_queue(app: Chimeway) -> None:
    with pytest.raises(InvalidInputError, match="too long to name its queue"):
        app.record_trigger("x" * 120, **GOOD)
    app.record_trigger("x" * 120, **GOOD, queue="default")


def test_bad_cron_actions_are_refused(app: Chimeway) -> None:
    with pytest.raises(InvalidInputError, match="takes no `actor` parameter"):
        app.cron("@hourly", process, actor="user:1")
    with pytest.raises(InvalidInputError, match="max_attempts must be an int >= 1"):
        app.cron("@hourly", process, max_attempts=0)
