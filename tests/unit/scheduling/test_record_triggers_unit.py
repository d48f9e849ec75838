"""Record triggers on SQLite: once per row, keyset batches, failures, bad input, status."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sched_support import Appointment, Reminder, Ticket, due_within, reminder_params, shifts
from sqlalchemy.orm import Session

from chimeway import Chimeway
from chimeway.errors import InvalidInputError, InvalidScheduleError, ParamsNotJSONError
from chimeway.models import Event, Job
from chimeway.testing import FakeClock, RecordingChannel


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def add_appointments(app: Chimeway, count: int, start: datetime, *, every: timedelta = timedelta(minutes=30),
                     first_id: int = 1) -> None:
    with Session(app.engine) as session, session.begin():
        session.add_all(
            Appointment(id=first_id + i, patient=f"p{first_id + i}", starts_at=start + every * i)
            for i in range(count)
        )


def event_keys(app: Chimeway) -> list[str]:
    with app.engine.connect() as conn:
        return sorted(conn.execute(sa.select(Event.idempotency_key)).scalars())


@pytest.fixture
def reminders(app: Chimeway) -> Iterator[Chimeway]:
    app.record_trigger("reminder_24h", model=Appointment, where=due_within(24), notifier=Reminder,
                       params=reminder_params, idempotency_key=lambda a: f"reminder-24h:{a.id}", batch_size=7)
    yield app


def test_every_matching_row_is_notified_once(reminders: Chimeway, clock: FakeClock, rec: RecordingChannel) -> None:
    add_appointments(reminders, 60, clock.now() + timedelta(hours=1))  # 1h .. 30.5h ahead
    result = reminders.scan_record_trigger("reminder_24h")
    assert (result.matched, result.triggered, result.already, result.failed) == (47, 47, 0, 0)
    assert len(rec.sent) == 47
    assert event_keys(reminders) == sorted(f"reminder-24h:{i}" for i in range(1, 48))
    again = reminders.scan_record_trigger("reminder_24h")
    assert (again.matched, again.triggered, again.already) == (47, 0, 47)
    clock.advance(hours=2)  # three have started; four more come within 24 hours
    later = reminders.scan_record_trigger("reminder_24h")
    assert (later.triggered, later.already) == (4, 44)
    assert len(rec.sent) == 51


def test_batches_in_parallel_notify_each_row_once(app: Chimeway, clock: FakeClock, rec: RecordingChannel) -> None:
    broken = {"p13"}

    def params(a: Appointment) -> dict[str, Any]:
        if a.patient in broken:
            raise RuntimeError("later")
        return reminder_params(a)

    app.record_trigger("parallel", model=Appointment, where=due_within(24), notifier=Reminder, params=params,
                       batch_size=4, concurrency=3)
    add_appointments(app, 45, clock.now() + timedelta(minutes=10), every=timedelta(minutes=20))
    result = app.scan_record_trigger("parallel")
    assert (result.matched, result.triggered, result.failed) == (45, 44, 1)
    broken.clear()
    clock.advance(minutes=5)
    app.work()
    assert event_keys(app) == sorted(f"parallel:{i}" for i in range(1, 46))
    assert len(rec.sent) == 45


def test_cancelled_rows_and_rows_that_stop_matching_get_nothing(
    reminders: Chimeway, clock: FakeClock, rec: RecordingChannel
) -> None:
    add_appointments(reminders, 10, clock.now() + timedelta(hours=2))
    with Session(reminders.engine) as session, session.begin():
        session.get_one(Appointment, 3).cancelled = True
        session.get_one(Appointment, 7).starts_at = clock.now() + timedelta(days=3)
    reminders.scan_record_trigger("reminder_24h")
    assert event_keys(reminders) == sorted(f"reminder-24h:{i}" for i in (1, 2, 4, 5, 6, 8, 9, 10))


def test_the_schedule_runs_scans_through_the_queue(reminders: Chimeway, clock: FakeClock, rec: RecordingChannel) -> None:
    add_appointments(reminders, 5, clock.now() + timedelta(hours=25), every=timedelta(minutes=15))
    for _ in range(2 * 60 + 5):  # two hours, a scan every minute
        reminders.run_scheduler()
        reminders.work()
        clock.advance(minutes=1)
    assert [m.fields["body"].split(" at ")[0] for m in rec.sent] == [f"Appointment {i}" for i in range(1, 6)]
    # Each reminder went out within a minute of its appointment coming within 24 hours.
    for message, number in zip(rec.sent, range(5), strict=True):
        assert message.recipient.id == f"patient:p{number + 1}"


def test_a_failing_row_gets_its_own_job_and_on_error(app: Chimeway, clock: FakeClock, rec: RecordingChannel) -> None:
    errors: list[tuple[Any, str]] = []

    def params(a: Appointment) -> dict[str, Any]:
        if a.patient == "p4":
            raise LookupError("no phone number for p4")
        return reminder_params(a)

    app.record_trigger("fragile", model=Appointment, where=due_within(24), notifier=Reminder, params=params,
                       batch_size=3, max_attempts=2, on_error=lambda row_id, exc: errors.append((row_id, str(exc))))
    add_appointments(app, 6, clock.now() + timedelta(hours=1))
    result = app.scan_record_trigger("fragile")
    assert (result.triggered, result.failed) == (5, 1)
    assert event_keys(app) == sorted(f"fragile:{i}" for i in (1, 2, 3, 5, 6))
    for _ in range(3):
        clock.advance(minutes=10)
        app.work()
    assert errors == [(4, "no phone number for p4")]
    with app.engine.connect() as conn:
        job = conn.execute(sa.select(Job).where(Job.worker == "chimeway.record_trigger.row")).one()
    assert (job.state, job.attempt, job.args) == ("discarded", 2, {"trigger": "fragile", "row": 4})
    # Given up: later scans leave the row alone until the job is retried.
    assert app.scan_record_trigger("fragile").skipped == 1
    [status] = app.record_triggers_status()
    assert (status["matching"], status["pending"], status["retrying"], status["failed"]) == (6, 1, 0, 1)


def test_a_failing_row_recovers_in_its_job(app: Chimeway, clock: FakeClock, rec: RecordingChannel) -> None:
    broken = {"p2"}

    def params(a: Appointment) -> dict[str, Any]:
        if a.patient in broken:
            raise RuntimeError("directory unavailable")
        return reminder_params(a)

    app.record_trigger("flaky", model=Appointment, where=due_within(24), notifier=Reminder, params=params)
    add_appointments(app, 3, clock.now() + timedelta(hours=1))
    assert app.scan_record_trigger("flaky").failed == 1
    assert app.scan_record_trigger("flaky").skipped == 1  # its job is retrying it
    broken.clear()
    clock.advance(minutes=5)
    app.work()
    assert event_keys(app) == ["flaky:1", "flaky:2", "flaky:3"]
    assert app.scan_record_trigger("flaky").already == 3


def test_a_row_job_skips_a_row_that_stopped_matching(app: Chimeway, clock: FakeClock, rec: RecordingChannel) -> None:
    broken = {"p1"}
    errors: list[Any] = []

    def params(a: Appointment) -> dict[str, Any]:
        if a.patient in broken:
            raise RuntimeError("down")
        return reminder_params(a)

    app.record_trigger("skip", model=Appointment, where=due_within(24), notifier=Reminder, params=params,
                       on_error=lambda row_id, exc: errors.append(row_id))
    add_appointments(app, 1, clock.now() + timedelta(hours=1))
    app.scan_record_trigger("skip")
    with Session(app.engine) as session, session.begin():
        session.get_one(Appointment, 1).cancelled = True
    broken.clear()
    clock.advance(minutes=5)
    app.work()
    assert event_keys(app) == [] and errors == []


def test_run_record_trigger_in_the_callers_transaction(reminders: Chimeway, clock: FakeClock, rec: RecordingChannel) -> None:
    with Session(reminders.engine) as session:
        with session.begin():
            appointment = Appointment(id=1, patient="p1", starts_at=clock.now() + timedelta(hours=3))
            session.add(appointment)
            session.flush()
            reminders.run_record_trigger(session, "reminder_24h", appointment)
            session.rollback()
        assert event_keys(reminders) == [] and rec.sent == []
        with session.begin():
            appointment = Appointment(id=1, patient="p1", starts_at=clock.now() + timedelta(hours=3))
            session.add(appointment)
            result = reminders.run_record_trigger(session, "reminder_24h", appointment)
    assert not result.duplicate and len(rec.sent) == 1
    assert reminders.scan_record_trigger("reminder_24h").already == 1


def test_core_table_with_a_composite_key(app: Chimeway, rec: RecordingChannel) -> None:
    with app.engine.begin() as conn:
        conn.execute(sa.insert(shifts), [{"site": site, "day": day, "worker": f"{site}-{day}"}
                                         for site in ("b", "a") for day in range(5)])
    app.record_trigger("shift", model=shifts, where=shifts.c.day >= 2, notifier=Reminder, batch_size=2,
                       params=lambda row: {"patient": row.worker, "appointment": row.day, "starts_at": "-"})
    result = app.scan_record_trigger("shift")
    assert (result.matched, result.triggered) == (6, 6)
    assert event_keys(app) == sorted(f"shift:{site},{day}" for site in "ab" for day in (2, 3, 4))


def test_uuid_keys_under_another_attribute_name(app: Chimeway, clock: FakeClock, rec: RecordingChannel) -> None:
    ids = sorted(uuid.uuid4() for _ in range(5))
    with Session(app.engine) as session, session.begin():
        session.add_all(Ticket(ticket_id=i, owner=f"o{n}") for n, i in enumerate(ids))
    fail = {ids[1]}

    def params(t: Ticket) -> dict[str, Any]:
        if t.ticket_id in fail:
            raise RuntimeError("later")
        return {"patient": t.owner, "appointment": str(t.ticket_id), "starts_at": "-"}

    app.record_trigger("tickets", model=Ticket, where=Ticket.open.is_(True), notifier=Reminder, params=params,
                       batch_size=2)
    assert app.scan_record_trigger("tickets").triggered == 4
    fail.clear()
    clock.advance(minutes=5)
    app.work()
    assert event_keys(app) == sorted(f"tickets:{i}" for i in ids)


def test_status_counts_pending_rows(reminders: Chimeway, clock: FakeClock) -> None:
    add_appointments(reminders, 10, clock.now() + timedelta(hours=1))
    [before] = reminders.record_triggers_status()
    assert (before["matching"], before["pending"], before["last_scan"]) == (10, 10, None)
    assert before["next_scan"] == at(2026, 1, 5, 9, 1)
    reminders.run_scheduler()
    reminders.work()
    [after] = reminders.record_triggers_status()
    assert (after["matching"], after["pending"], after["last_scan"]) == (10, 0, at(2026, 1, 5, 9, 0))
    assert {k: after[k] for k in ("name", "model", "notifier", "schedule")} == {
        "name": "reminder_24h", "model": "appointments", "notifier": "sched_test_reminder", "schedule": "* * * * *"}


GOOD: dict[str, Any] = {"model": Appointment, "where": due_within(24), "notifier": Reminder,
                        "params": reminder_params}


@pytest.mark.parametrize(
    ("changes", "error", "words"),
    [
        ({"where": True}, InvalidInputError, "where must be a SQLAlchemy boolean expression"),
        ({"where": "cancelled = 0"}, InvalidInputError, "where must be"),
        ({"where": lambda now: now > 3}, InvalidInputError, "where.now. raised TypeError"),
        ({"where": lambda now: Appointment.starts_at}, InvalidInputError, "where must be"),
        ({"model": object}, InvalidInputError, "model must be a SQLAlchemy mapped class"),
        ({"model": sa.Table("nopk", sa.MetaData(), sa.Column("x", sa.Integer))}, InvalidInputError, "no primary key"),
        ({"notifier": object}, InvalidInputError, "notifier must be a Notifier subclass"),
        ({"params": 42}, InvalidInputError, "params must be a function"),
        ({"params": {"when": datetime(2026, 1, 1)}}, ParamsNotJSONError, "params"),
        ({"idempotency_key": "fixed"}, InvalidInputError, "idempotency_key must be a function"),
        ({"tenant": 3}, InvalidInputError, "tenant must be"),
        ({"on_error": "log"}, InvalidInputError, "on_error must be a function"),
        ({"batch_size": 0}, InvalidInputError, "batch_size"),
        ({"concurrency": 0}, InvalidInputError, "concurrency"),
        ({"max_attempts": 0}, InvalidInputError, "max_attempts"),
        ({"queue": "nope"}, InvalidInputError, "queue 'nope' is not declared"),
        ({"cron": "every minute"}, InvalidScheduleError, "cron expression"),
        ({"timezone": "Europe/Nowhere"}, InvalidScheduleError, "timezone 'Europe/Nowhere'"),
    ],
)
def test_bad_input_at_registration(app: Chimeway, changes: dict[str, Any], error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        app.record_trigger("bad", **{**GOOD, **changes})
    assert app.record_triggers_status() == [] and app.cron_schedules() == []


def test_where_may_be_plain_sql_text_and_names_are_unique(app: Chimeway) -> None:
    app.record_trigger("text", **{**GOOD, "where": sa.text("cancelled = 0")})
    with pytest.raises(InvalidInputError, match="already declared"):
        app.record_trigger("text", **GOOD)
    with pytest.raises(InvalidInputError, match="no record trigger named 'other'"):
        app.scan_record_trigger("other")


def test_params_that_are_not_json_fail_the_row_and_name_the_field(app: Chimeway, clock: FakeClock) -> None:
    errors: list[BaseException] = []
    app.record_trigger("not_json", **{**GOOD, "params": lambda a: {"patient": a.patient, "at": a.starts_at}},
                       max_attempts=1, on_error=lambda row_id, exc: errors.append(exc))
    add_appointments(app, 1, clock.now() + timedelta(hours=1))
    assert app.scan_record_trigger("not_json").failed == 1
    clock.advance(minutes=5)
    app.work()
    assert len(errors) == 1 and isinstance(errors[0], ParamsNotJSONError)
    assert "params['at']" in str(errors[0])


def test_tenants_from_the_row(app: Chimeway, clock: FakeClock) -> None:
    app.record_trigger("tenanted", model=Appointment, where=due_within(24), notifier=Reminder,
                       params=reminder_params, tenant=lambda a: "acme" if a.id % 2 else "globex")
    add_appointments(app, 6, clock.now() + timedelta(hours=1))
    assert app.scan_record_trigger("tenanted").triggered == 6
    with app.engine.connect() as conn:
        rows = conn.execute(sa.select(Event.tenant, Event.idempotency_key).order_by(Event.idempotency_key)).all()
    assert [(r.tenant, r.idempotency_key) for r in rows] == [
        ("acme" if i % 2 else "globex", f"tenanted:{i}") for i in range(1, 7)
    ]
    assert app.scan_record_trigger("tenanted").already == 6
