"""outbox: deliveries waiting to be published to Celery

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import chimeway.types

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chimeway_outbox",
        sa.Column("delivery_id", sa.Uuid(), nullable=False),
        sa.Column("due_at", chimeway.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=50), nullable=False),
        sa.Column("created_at", chimeway.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("publish_failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["delivery_id"], ["chimeway_deliveries.id"], ondelete="CASCADE",
                                name=op.f("fk_chimeway_outbox_delivery_id_chimeway_deliveries")),
        sa.PrimaryKeyConstraint("delivery_id", name=op.f("pk_chimeway_outbox")),
    )
    op.create_index(op.f("ix_chimeway_outbox_due_at"), "chimeway_outbox", ["due_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_chimeway_outbox_due_at"), table_name="chimeway_outbox")
    op.drop_table("chimeway_outbox")
