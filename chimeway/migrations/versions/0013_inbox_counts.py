"""inbox counts: unread items per recipient, kept by triggers

``chimeway_inbox_counts`` holds each recipient's number of inbox items
neither read nor archived (as one row, or a few while writers overlap on
PostgreSQL: the count is their sum), so an unread count costs the same
whatever the inbox's size. Triggers on chimeway_notifications keep it exact
in the transaction of every writer: statement-level ones over transition
tables on PostgreSQL (one change per recipient per statement, never waiting
for a count row), row triggers on SQLite. The rows already there are
counted once the triggers exist; on PostgreSQL creating a trigger locks
writers of chimeway_notifications out until this commits, so no change
falls between the two.

Revision ID: 0013
Revises: 0012
Create Date: 2027-02-02 10:00:00
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

from chimeway.db import qualified

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# Chimeway's objects are written {chimeway_...}, qualified for a schema of
# Chimeway's: a function's body must name its tables itself.
POSTGRESQL = (
    """CREATE OR REPLACE FUNCTION {chimeway_inbox_count}() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE
  tenants text[];
  recipients text[];
  deltas bigint[];
  free bigint[];
  total bigint;
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    DELETE FROM {chimeway_inbox_counts};
    RETURN NULL;
  ELSIF TG_OP = 'INSERT' THEN
    SELECT array_agg(tenant), array_agg(recipient_id), array_agg(delta) INTO tenants, recipients, deltas
    FROM (SELECT tenant, recipient_id, count(*) AS delta FROM new_rows
          WHERE inbox_at IS NOT NULL AND read_at IS NULL AND archived_at IS NULL
          GROUP BY tenant, recipient_id) AS changed;
  ELSIF TG_OP = 'DELETE' THEN
    SELECT array_agg(tenant), array_agg(recipient_id), array_agg(delta) INTO tenants, recipients, deltas
    FROM (SELECT tenant, recipient_id, -count(*) AS delta FROM old_rows
          WHERE inbox_at IS NOT NULL AND read_at IS NULL AND archived_at IS NULL
          GROUP BY tenant, recipient_id) AS changed;
  ELSE
    SELECT array_agg(tenant), array_agg(recipient_id), array_agg(delta) INTO tenants, recipients, deltas
    FROM (SELECT tenant, recipient_id, sum(one) AS delta FROM (
            SELECT tenant, recipient_id, 1 AS one FROM new_rows
            WHERE inbox_at IS NOT NULL AND read_at IS NULL AND archived_at IS NULL
            UNION ALL
            SELECT tenant, recipient_id, -1 FROM old_rows
            WHERE inbox_at IS NOT NULL AND read_at IS NULL AND archived_at IS NULL
          ) AS rows_changed
          GROUP BY tenant, recipient_id HAVING sum(one) <> 0) AS changed;
  END IF;
  IF tenants IS NULL THEN
    RETURN NULL;
  END IF;
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    -- Locking a row changed since this transaction's snapshot would fail it.
    INSERT INTO {chimeway_inbox_counts} AS c (tenant, recipient_id, slot, unread)
    SELECT tenant, recipient_id, txid_current(), delta FROM unnest(tenants, recipients, deltas)
      AS changed (tenant, recipient_id, delta)
    ON CONFLICT (tenant, recipient_id, slot) DO UPDATE SET unread = c.unread + excluded.unread;
    RETURN NULL;
  END IF;
  FOR i IN 1 .. cardinality(tenants) LOOP
    SELECT array_agg(slot ORDER BY slot), sum(unread) INTO free, total FROM (
      SELECT slot, unread FROM {chimeway_inbox_counts}
      WHERE tenant = tenants[i] AND recipient_id = recipients[i]
      FOR UPDATE SKIP LOCKED
    ) AS unheld;
    IF free IS NULL THEN
      INSERT INTO {chimeway_inbox_counts} (tenant, recipient_id, slot, unread)
      VALUES (tenants[i], recipients[i], txid_current(), deltas[i]);
    ELSE
      UPDATE {chimeway_inbox_counts} SET unread = total + deltas[i]
      WHERE tenant = tenants[i] AND recipient_id = recipients[i] AND slot = free[1];
      IF cardinality(free) > 1 THEN
        DELETE FROM {chimeway_inbox_counts}
        WHERE tenant = tenants[i] AND recipient_id = recipients[i] AND slot = ANY (free[2:]);
      END IF;
    END IF;
  END LOOP;
  RETURN NULL;
END
$body$""",
    "DROP TRIGGER IF EXISTS chimeway_inbox_count_insert ON {chimeway_notifications}",
    "DROP TRIGGER IF EXISTS chimeway_inbox_count_update ON {chimeway_notifications}",
    "DROP TRIGGER IF EXISTS chimeway_inbox_count_delete ON {chimeway_notifications}",
    "DROP TRIGGER IF EXISTS chimeway_inbox_count_truncate ON {chimeway_notifications}",
    """CREATE TRIGGER chimeway_inbox_count_insert AFTER INSERT ON {chimeway_notifications}
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION {chimeway_inbox_count}()""",
    """CREATE TRIGGER chimeway_inbox_count_update AFTER UPDATE ON {chimeway_notifications}
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION {chimeway_inbox_count}()""",
    """CREATE TRIGGER chimeway_inbox_count_delete AFTER DELETE ON {chimeway_notifications}
  REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION {chimeway_inbox_count}()""",
    """CREATE TRIGGER chimeway_inbox_count_truncate AFTER TRUNCATE ON {chimeway_notifications}
  FOR EACH STATEMENT EXECUTE FUNCTION {chimeway_inbox_count}()""",
)

SQLITE = (
    "DROP TRIGGER IF EXISTS chimeway_inbox_count_insert",
    "DROP TRIGGER IF EXISTS chimeway_inbox_count_update",
    "DROP TRIGGER IF EXISTS chimeway_inbox_count_delete",
    """CREATE TRIGGER chimeway_inbox_count_insert AFTER INSERT ON chimeway_notifications
  FOR EACH ROW WHEN NEW.inbox_at IS NOT NULL AND NEW.read_at IS NULL AND NEW.archived_at IS NULL
BEGIN
  INSERT INTO chimeway_inbox_counts (tenant, recipient_id, slot, unread)
  VALUES (NEW.tenant, NEW.recipient_id, 0, 1)
  ON CONFLICT (tenant, recipient_id, slot) DO UPDATE SET unread = unread + 1;
END""",
    """CREATE TRIGGER chimeway_inbox_count_update
  AFTER UPDATE OF tenant, recipient_id, inbox_at, read_at, archived_at ON chimeway_notifications
  FOR EACH ROW WHEN
    (OLD.inbox_at IS NOT NULL AND OLD.read_at IS NULL AND OLD.archived_at IS NULL)
    <> (NEW.inbox_at IS NOT NULL AND NEW.read_at IS NULL AND NEW.archived_at IS NULL)
    OR (OLD.inbox_at IS NOT NULL AND OLD.read_at IS NULL AND OLD.archived_at IS NULL
        AND (OLD.tenant <> NEW.tenant OR OLD.recipient_id <> NEW.recipient_id))
BEGIN
  UPDATE chimeway_inbox_counts SET unread = unread - 1
  WHERE tenant = OLD.tenant AND recipient_id = OLD.recipient_id AND slot = 0
    AND OLD.inbox_at IS NOT NULL AND OLD.read_at IS NULL AND OLD.archived_at IS NULL;
  INSERT INTO chimeway_inbox_counts (tenant, recipient_id, slot, unread)
  SELECT NEW.tenant, NEW.recipient_id, 0, 1
  WHERE NEW.inbox_at IS NOT NULL AND NEW.read_at IS NULL AND NEW.archived_at IS NULL
  ON CONFLICT (tenant, recipient_id, slot) DO UPDATE SET unread = unread + 1;
END""",
    """CREATE TRIGGER chimeway_inbox_count_delete AFTER DELETE ON chimeway_notifications
  FOR EACH ROW WHEN OLD.inbox_at IS NOT NULL AND OLD.read_at IS NULL AND OLD.archived_at IS NULL
BEGIN
  UPDATE chimeway_inbox_counts SET unread = unread - 1
  WHERE tenant = OLD.tenant AND recipient_id = OLD.recipient_id AND slot = 0;
END""",
)

BACKFILL = """INSERT INTO {chimeway_inbox_counts} (tenant, recipient_id, slot, unread)
SELECT tenant, recipient_id, 0, count(*) FROM {chimeway_notifications}
WHERE inbox_at IS NOT NULL AND read_at IS NULL AND archived_at IS NULL
GROUP BY tenant, recipient_id"""

_TOKEN = re.compile(r"\{(chimeway_\w+)\}")


def _run(template: str) -> None:
    bind = op.get_bind()
    bind.exec_driver_sql(_TOKEN.sub(lambda m: qualified(bind, m.group(1)), template))


def upgrade() -> None:
    op.create_table(
        "chimeway_inbox_counts",
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("recipient_id", sa.String(length=200), nullable=False),
        sa.Column("slot", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("unread", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "recipient_id", "slot", name=op.f("pk_chimeway_inbox_counts")),
    )
    for template in POSTGRESQL if op.get_bind().dialect.name == "postgresql" else SQLITE:
        _run(template)
    _run(BACKFILL)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for kind in ("insert", "update", "delete", "truncate"):
            _run(f"DROP TRIGGER IF EXISTS chimeway_inbox_count_{kind} ON {{chimeway_notifications}}")
        _run("DROP FUNCTION IF EXISTS {chimeway_inbox_count}()")
    else:
        for kind in ("insert", "update", "delete"):
            _run(f"DROP TRIGGER IF EXISTS chimeway_inbox_count_{kind}")
    op.drop_table("chimeway_inbox_counts")
