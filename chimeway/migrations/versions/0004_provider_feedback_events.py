"""provider feedback events

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 07:46:24.048298
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import chimeway.types

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chimeway_provider_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(length=100), nullable=False),
        sa.Column("provider_event_id", sa.String(length=300), nullable=False),
        sa.Column("delivery_id", sa.Uuid(), nullable=True),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("received_at", chimeway.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chimeway_provider_events")),
        sa.UniqueConstraint(
            "channel", "provider_event_id", name="uq_chimeway_provider_events_event"
        ),
    )
    op.create_index(
        op.f("ix_chimeway_provider_events_delivery_id"),
        "chimeway_provider_events",
        ["delivery_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_chimeway_deliveries_provider_message_id"),
        "chimeway_deliveries",
        ["provider_message_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_chimeway_deliveries_provider_message_id"), table_name="chimeway_deliveries"
    )
    op.drop_index(
        op.f("ix_chimeway_provider_events_delivery_id"), table_name="chimeway_provider_events"
    )
    op.drop_table("chimeway_provider_events")
