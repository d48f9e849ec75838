"""traces: indexes behind app.traces() and app.outcomes()

The recipient index gains the event id, so a recipient's traces page in
event order; it still serves searches by recipient and tenant, so the
two-column index it replaces goes.

Revision ID: 0007
Revises: 0006
Create Date: 2027-01-12 09:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_chimeway_notifications_trace", "chimeway_notifications",
                    ["recipient_id", "tenant", "event_id"])
    op.drop_index("ix_chimeway_notifications_recipient", table_name="chimeway_notifications")
    op.create_index("ix_chimeway_events_notifier_time", "chimeway_events", ["notifier_key", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_chimeway_events_notifier_time", table_name="chimeway_events")
    op.create_index("ix_chimeway_notifications_recipient", "chimeway_notifications",
                    ["recipient_id", "tenant"])
    op.drop_index("ix_chimeway_notifications_trace", table_name="chimeway_notifications")
