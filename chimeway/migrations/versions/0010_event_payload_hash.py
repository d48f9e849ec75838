"""event payload hash: a reused idempotency key with another payload is refused

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chimeway_events") as batch:
        batch.add_column(sa.Column("payload_hash", sa.String(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("chimeway_events") as batch:
        batch.drop_column("payload_hash")
