"""Appointment reminders, declared next to the data: 24 hours and 2 hours before.

Two record triggers scan the ``appointments`` table on a cron schedule and
notify each appointment once per reminder; cancelled appointments get none.
The script runs two simulated days under a ``FakeClock`` on a temporary SQLite
file, prints every reminder when it is sent, and explains two of them.

    python examples/appointment_reminders.py
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from chimeway import Chimeway, Notifier, Recipient
from chimeway.explain import format_explanation
from chimeway.testing import FakeClock, RecordingChannel


# --- your application's own model ------------------------------------------------
class Base(DeclarativeBase):
    pass


class Appointment(Base):
    __tablename__ = "appointments"
    id: Mapped[int] = mapped_column(primary_key=True)
    patient: Mapped[str] = mapped_column(sa.String(50))
    phone: Mapped[str] = mapped_column(sa.String(20))
    starts_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    cancelled: Mapped[bool] = mapped_column(default=False)


# --- the notifier: one per reminder kind ------------------------------------------
class AppointmentReminder(Notifier):
    key = "appointment_reminder"
    category = "appointments"
    channels = ["sms"]
    templates = {"sms": {"body": "Hi {{ patient }}, {{ lead }} your appointment on {{ starts_at }}."}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"patient:{params['patient']}", phone=params["phone"])]


def starting_between(low: timedelta, high: timedelta) -> Any:
    """``where``: not cancelled, starting more than ``low`` and at most ``high`` from now."""

    def where(now: datetime) -> Any:
        return sa.and_(
            Appointment.cancelled.is_(False),
            Appointment.starts_at > now + low,
            Appointment.starts_at <= now + high,
        )

    return where


def params(lead: str) -> Any:
    def for_row(appointment: Appointment) -> dict[str, Any]:
        return {"patient": appointment.patient, "phone": appointment.phone, "lead": lead,
                "starts_at": appointment.starts_at.strftime("%a %H:%M UTC")}

    return for_row


def main() -> None:
    start = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # Monday 08:00
    clock = FakeClock(start)
    sms = RecordingChannel()  # stands in for Sms(...) so the example needs no account
    workdir = Path(tempfile.mkdtemp(prefix="chimeway-reminders-"))
    app = Chimeway(f"sqlite:///{workdir / 'reminders.db'}", clock=clock, channels={"sms": sms})
    app.migrate()
    Base.metadata.create_all(app.engine)

    # Declared once, next to the model. The idempotency keys make each
    # appointment's reminder happen once, however many scans see it.
    app.record_trigger(
        "reminder_24h", model=Appointment, where=starting_between(timedelta(hours=2), timedelta(hours=24)),
        notifier=AppointmentReminder, params=params("a reminder of"),
        idempotency_key=lambda a: f"appointment:{a.id}:24h", cron="*/10 * * * *",
    )
    app.record_trigger(
        "reminder_2h", model=Appointment, where=starting_between(timedelta(0), timedelta(hours=2)),
        notifier=AppointmentReminder, params=params("see you soon: less than two hours to"),
        idempotency_key=lambda a: f"appointment:{a.id}:2h", cron="*/10 * * * *",
    )

    with Session(app.engine) as session, session.begin():
        session.add_all([
            Appointment(id=1, patient="Alice", phone="+4915100000001", starts_at=start + timedelta(hours=7)),
            Appointment(id=2, patient="Bob", phone="+4915100000002", starts_at=start + timedelta(days=1, hours=2)),
            Appointment(id=3, patient="Carol", phone="+4915100000003", starts_at=start + timedelta(days=1, hours=8)),
            Appointment(id=4, patient="Dan", phone="+4915100000004", starts_at=start + timedelta(hours=1, minutes=30)),
        ])

    print(f"Simulating {start:%a %d %b %H:%M} to {start + timedelta(days=2):%a %d %b %H:%M} (UTC), "
          "a worker tick every 10 minutes.\n")
    shown = 0
    while clock.now() < start + timedelta(days=2):
        if clock.now() == start + timedelta(hours=4):
            with Session(app.engine) as session, session.begin():
                session.get_one(Appointment, 3).cancelled = True
            print(f"[{clock.now():%a %H:%M}] Carol cancels her appointment of Tue 16:00")
        app.run_scheduler()  # what every worker does about once a second
        app.work()
        for message in sms.sent[shown:]:
            print(f"[{clock.now():%a %H:%M}] sms to {message.recipient.phone}: {message.fields['body']}")
        shown = len(sms.sent)
        clock.advance(minutes=10)

    print(f"\n{len(sms.sent)} reminders sent: Alice and Bob got both; Dan, booked 90 minutes ahead, got "
          "only the 2-hour one; Carol cancelled before either was due and got none.\n")
    for message in (sms.sent[0], sms.sent[-1]):
        print(format_explanation(app.explain(message.delivery_id)))
        print()
    for row in app.record_triggers_status():
        print(f"trigger {row['name']}: {row['matching']} matching, {row['pending']} pending, "
              f"next scan {row['next_scan']:%a %H:%M}")
    app.close()


if __name__ == "__main__":
    main()
