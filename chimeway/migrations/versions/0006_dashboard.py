"""dashboard: paused queues, and indexes behind the dashboard's searches

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 10:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import chimeway.types
from chimeway.db import JsonText

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

FINISHED = "state IN ('completed','retryable','discarded')"
DELIVER = "worker = 'chimeway.deliver'"


def upgrade() -> None:
    op.create_table(
        "chimeway_queue_states",
        sa.Column("queue", sa.String(length=100), nullable=False),
        sa.Column("paused_at", chimeway.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("paused_by", sa.String(length=200), nullable=True),
        sa.Column("updated_at", chimeway.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("queue", name=op.f("pk_chimeway_queue_states")),
    )
    op.create_index("ix_chimeway_events_notifier", "chimeway_events", ["notifier_key", "id"])
    op.create_index("ix_chimeway_events_correlation", "chimeway_events", ["correlation_id"])
    op.create_index("ix_chimeway_notifications_recipient", "chimeway_notifications",
                    ["recipient_id", "tenant"])
    op.create_index(
        "ix_chimeway_jobs_delivery", "chimeway_jobs", [JsonText(sa.column("args"), "delivery_id")],
        postgresql_where=sa.text(DELIVER), sqlite_where=sa.text(DELIVER),
    )
    op.create_index(
        "ix_chimeway_jobs_finished", "chimeway_jobs", ["attempted_at", "state", "queue"],
        postgresql_where=sa.text(FINISHED), sqlite_where=sa.text(FINISHED),
    )


def downgrade() -> None:
    op.drop_index("ix_chimeway_jobs_finished", table_name="chimeway_jobs")
    op.drop_index("ix_chimeway_jobs_delivery", table_name="chimeway_jobs")
    op.drop_index("ix_chimeway_notifications_recipient", table_name="chimeway_notifications")
    op.drop_index("ix_chimeway_events_correlation", table_name="chimeway_events")
    op.drop_index("ix_chimeway_events_notifier", table_name="chimeway_events")
    op.drop_table("chimeway_queue_states")
