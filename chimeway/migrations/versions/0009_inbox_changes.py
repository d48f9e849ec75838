"""inbox changes: PostgreSQL announces every inbox change with NOTIFY

A trigger on chimeway_notifications sends one notification on the
chimeway_inbox channel per change (new item, seen, read, archived), in the
transaction that made it, so a rollback announces nothing. SQLite has no
NOTIFY; there app.inbox_changes() polls.

Revision ID: 0009
Revises: 0008
Create Date: 2027-01-12 11:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

FUNCTION = """CREATE OR REPLACE FUNCTION chimeway_inbox_notify() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE
  kinds text[] := ARRAY[]::text[];
  kind text;
BEGIN
  IF NEW.inbox_at IS NULL THEN
    RETURN NULL;
  END IF;
  IF OLD.inbox_at IS NULL THEN
    kinds := kinds || 'new'::text;
  END IF;
  IF NEW.read_at IS NOT NULL AND OLD.read_at IS NULL THEN
    kinds := kinds || 'read'::text;
  ELSIF NEW.seen_at IS NOT NULL AND OLD.seen_at IS NULL THEN
    kinds := kinds || 'seen'::text;
  END IF;
  IF NEW.archived_at IS NOT NULL AND OLD.archived_at IS NULL THEN
    kinds := kinds || 'archived'::text;
  END IF;
  FOREACH kind IN ARRAY kinds LOOP
    PERFORM pg_notify('chimeway_inbox', json_build_object(
      't', NEW.tenant, 'r', NEW.recipient_id, 'id', NEW.id, 'k', kind)::text);
  END LOOP;
  RETURN NULL;
END
$body$"""

TRIGGER = """CREATE TRIGGER chimeway_inbox_notify
  AFTER UPDATE OF inbox_at, seen_at, read_at, archived_at ON chimeway_notifications
  FOR EACH ROW EXECUTE FUNCTION chimeway_inbox_notify()"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    op.execute("DROP TRIGGER IF EXISTS chimeway_inbox_notify ON chimeway_notifications")
    op.execute(TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS chimeway_inbox_notify ON chimeway_notifications")
    op.execute("DROP FUNCTION IF EXISTS chimeway_inbox_notify()")
