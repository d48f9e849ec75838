"""worker heartbeats: no index on heartbeat_at, so every heartbeat is a HOT update

A heartbeat rewrites only ``heartbeat_at``. Indexed, that column kept every
heartbeat from being a heap-only (HOT) update: each one added index entries
and a dead row version for vacuum. The table holds one row per worker
process, so the rescuer and the dashboard read it whole at no cost.

Revision ID: 0014
Revises: 0013
Create Date: 2027-02-03 09:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_chimeway_workers_heartbeat_at", table_name="chimeway_workers")


def downgrade() -> None:
    op.create_index("ix_chimeway_workers_heartbeat_at", "chimeway_workers", ["heartbeat_at"])
