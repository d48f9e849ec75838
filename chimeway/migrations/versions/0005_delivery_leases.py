"""delivery leases

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import chimeway.types

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chimeway_deliveries") as batch:
        batch.add_column(sa.Column("lease_holder", sa.String(length=200), nullable=True))
        batch.add_column(
            sa.Column("lease_expires_at", chimeway.types.UTCDateTime(timezone=True), nullable=True)
        )
    # Deliveries left ``dispatched`` before leases existed have no holder:
    # treat their lease as run out, so the rescuer re-drives them.
    op.execute(
        "UPDATE chimeway_deliveries SET lease_expires_at = dispatched_at "
        "WHERE status = 'dispatched'"
    )
    op.create_index(
        "ix_chimeway_deliveries_lease",
        "chimeway_deliveries",
        ["lease_expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'dispatched'"),
        sqlite_where=sa.text("status = 'dispatched'"),
    )


def downgrade() -> None:
    op.drop_index("ix_chimeway_deliveries_lease", table_name="chimeway_deliveries")
    with op.batch_alter_table("chimeway_deliveries") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_holder")
