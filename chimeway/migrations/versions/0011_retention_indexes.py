"""retention indexes: the pruner walks every kind of row along its age

Revision ID: 0011
Revises: 0010
Create Date: 2027-01-20 12:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

INDEXES = [
    ("ix_chimeway_events_created", "chimeway_events", "created_at"),
    ("ix_chimeway_workflow_runs_finished", "chimeway_workflow_runs", "finished_at"),
    ("ix_chimeway_signals_routed", "chimeway_signals", "routed_at"),
    ("ix_chimeway_provider_events_received_at", "chimeway_provider_events", "received_at"),
    ("ix_chimeway_cap_usage_at", "chimeway_cap_usage", "at"),
    ("ix_chimeway_dedupe_marks_expires_at", "chimeway_dedupe_marks", "expires_at"),
    ("ix_chimeway_digests_flushed_at", "chimeway_digests", "flushed_at"),
]


def upgrade() -> None:
    for name, table, column in INDEXES:
        op.create_index(name, table, [column])


def downgrade() -> None:
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table)
