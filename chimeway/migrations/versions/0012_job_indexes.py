"""job indexes: claim and acknowledgement plans that do not depend on statistics

The unique-key index holds only jobs that have a key, so neither the claim
nor the acknowledgement can be planned on it; running jobs get an index of
their own (for the rescuer) in place of the (state, scheduled_at) index;
cancelled jobs get one for the pruner.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

ACTIVE = "state IN ('available','scheduled','executing','retryable')"
UNIQUE = f"unique_key IS NOT NULL AND {ACTIVE}"
EXECUTING = "state = 'executing'"
CANCELLED = "state = 'cancelled'"


def upgrade() -> None:
    op.drop_index("ix_chimeway_jobs_state_scheduled", table_name="chimeway_jobs")
    op.drop_index("uq_chimeway_jobs_unique_key", table_name="chimeway_jobs",
                  postgresql_where=sa.text(ACTIVE), sqlite_where=sa.text(ACTIVE))
    op.create_index("uq_chimeway_jobs_unique_key", "chimeway_jobs", ["unique_key"], unique=True,
                    postgresql_where=sa.text(UNIQUE), sqlite_where=sa.text(UNIQUE))
    op.create_index("ix_chimeway_jobs_executing", "chimeway_jobs", ["id"],
                    postgresql_where=sa.text(EXECUTING), sqlite_where=sa.text(EXECUTING))
    op.create_index("ix_chimeway_jobs_cancelled", "chimeway_jobs", ["cancelled_at"],
                    postgresql_where=sa.text(CANCELLED), sqlite_where=sa.text(CANCELLED))


def downgrade() -> None:
    op.drop_index("ix_chimeway_jobs_cancelled", table_name="chimeway_jobs")
    op.drop_index("ix_chimeway_jobs_executing", table_name="chimeway_jobs")
    op.drop_index("uq_chimeway_jobs_unique_key", table_name="chimeway_jobs")
    op.create_index("uq_chimeway_jobs_unique_key", "chimeway_jobs", ["unique_key"], unique=True,
                    postgresql_where=sa.text(ACTIVE), sqlite_where=sa.text(ACTIVE))
    op.create_index("ix_chimeway_jobs_state_scheduled", "chimeway_jobs", ["state", "scheduled_at"])
