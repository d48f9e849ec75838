"""Models and notifiers shared by the scheduling tests."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chimeway import Notifier, Recipient


class AppBase(DeclarativeBase):
    """The application's own tables (not Chimeway's)."""


class Appointment(AppBase):
    __tablename__ = "appointments"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient: Mapped[str] = mapped_column(sa.String(50))
    starts_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    cancelled: Mapped[bool] = mapped_column(default=False)


class Ticket(AppBase):
    """A UUID primary key under a mapped attribute name that differs from the column."""

    __tablename__ = "tickets"

    ticket_id: Mapped[uuid.UUID] = mapped_column("id", sa.Uuid, primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(50))
    open: Mapped[bool] = mapped_column(default=True)


shifts = sa.Table(
    "shifts",
    AppBase.metadata,
    sa.Column("site", sa.String(20), primary_key=True),
    sa.Column("day", sa.Integer, primary_key=True),
    sa.Column("worker", sa.String(50), nullable=False),
)


class Reminder(Notifier):
    key = "sched_test_reminder"
    channels = ["rec"]
    templates = {"rec": {"body": "Appointment {{ appointment }} at {{ starts_at }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"patient:{params['patient']}")]


class DailyReport(Notifier):
    key = "sched_test_daily_report"
    channels = ["rec"]
    templates = {"rec": {"body": "Report for {{ day }}"}}
    schedule = "0 8 * * *"

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id="user:ops")]

    def params_for_schedule(self, tick: datetime) -> Mapping[str, Any]:
        return {"day": tick.date().isoformat()}


def due_within(hours: int) -> Any:
    """``where`` for appointments starting within ``hours`` of the app's now."""

    def where(now: datetime) -> Any:
        return sa.and_(
            Appointment.cancelled.is_(False),
            Appointment.starts_at > now,
            Appointment.starts_at <= now + timedelta(hours=hours),
        )

    return where


def reminder_params(appointment: Appointment) -> dict[str, Any]:
    return {"patient": appointment.patient, "appointment": appointment.id,
            "starts_at": appointment.starts_at.isoformat()}


class Order(AppBase):
    """A row an action trigger works on: ``processed`` flips once, ``runs`` counts the calls."""

    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    shop: Mapped[str] = mapped_column(sa.String(20), default="acme")
    processed: Mapped[bool] = mapped_column(default=False)
    runs: Mapped[int] = mapped_column(default=0)
    failed: Mapped[str | None] = mapped_column(sa.String(200), default=None)
    by: Mapped[str | None] = mapped_column(sa.String(50), default=None)


class Audit(AppBase):
    """What actions wrote next to the row, in the same transaction."""

    __tablename__ = "audits"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int]
    note: Mapped[str] = mapped_column(sa.String(200))
