"""Chimeway's tables next to an application's own Alembic environment.

Each test builds a throwaway application Alembic environment (its own
``accounts`` table) on a fresh, empty PostgreSQL database and checks one of
the ways guides/integrations.md documents:

- separate: the application migrates its tables, ``app.migrate()`` migrates
  Chimeway's (version table ``chimeway_alembic_version``); the application's
  autogenerate skips ``chimeway_*`` tables;
- autogenerate: ``target_metadata=[app_metadata, chimeway.models.metadata]``
  puts Chimeway's tables into the application's own revisions;
- env.py: the application's env.py calls ``chimeway.migrations.upgrade(connection)``.

In every case the application's ``alembic check`` finds nothing to do and
Chimeway works on the result.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import alembic
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.orm import Session

from chimeway import Chimeway, Notifier, Recipient
from chimeway.migrations import VERSION_TABLE, current_revision, head_revision

pytestmark = pytest.mark.postgres

ENV_HEAD = '''
from alembic import context
import sqlalchemy as sa

import chimeway.models
import chimeway.migrations

app_metadata = sa.MetaData()
sa.Table(
    "accounts", app_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(200), nullable=False, unique=True),
)


def skip_chimeway(name, type_, parent_names):
    # Chimeway's tables are migrated by Chimeway; keep them out of our diffs.
    return not (type_ == "table" and name and name.startswith("chimeway_"))


def skip_chimeway_version_table(name, type_, parent_names):
    # Chimeway's tables are ours here, but its version table is not a model.
    return not (type_ == "table" and name == chimeway.migrations.VERSION_TABLE)

'''

ENV_MODES = {
    "separate": '''
TARGET = app_metadata
INCLUDE = skip_chimeway
CALL_CHIMEWAY = False
''',
    "autogenerate": '''
TARGET = [app_metadata, chimeway.models.metadata]
INCLUDE = skip_chimeway_version_table
CALL_CHIMEWAY = False
''',
    "env_upgrade": '''
TARGET = app_metadata
INCLUDE = skip_chimeway
CALL_CHIMEWAY = True
''',
}

ENV_TAIL = '''
def run():
    engine = sa.create_engine(context.config.attributes["url"])
    with engine.connect() as connection:
        if CALL_CHIMEWAY:
            chimeway.migrations.upgrade(connection)
            connection.commit()
        context.configure(
            connection=connection, target_metadata=TARGET, include_name=INCLUDE, compare_type=True
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
'''


class AccountCreated(Notifier):
    key = "alembic_include_account_created"
    channels = ["in_app"]
    templates = {"in_app": {"title": "Welcome {{ email }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"account:{params['id']}")]


def _environment(tmp_path: Path, url: str, mode: str) -> Config:
    root = tmp_path / "app_migrations"
    (root / "versions").mkdir(parents=True)
    template = (Path(alembic.__file__).parent / "templates" / "generic" / "script.py.mako").read_text()
    # Autogenerate renders Chimeway's column types as chimeway.types.X.
    template = template.replace("import sqlalchemy as sa\n", "import sqlalchemy as sa\nimport chimeway.types\n")
    assert "import chimeway.types" in template
    (root / "script.py.mako").write_text(template)
    (root / "env.py").write_text(textwrap.dedent(ENV_HEAD + ENV_MODES[mode] + ENV_TAIL))
    cfg = Config()
    cfg.set_main_option("script_location", str(root))
    cfg.attributes["url"] = url
    return cfg


def _revision_text(cfg: Config) -> str:
    root = Path(cfg.get_main_option("script_location") or "")
    return "\n".join(p.read_text() for p in sorted((root / "versions").glob("*.py")))


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _works(url: str) -> None:
    with Chimeway(url) as app:
        with Session(app.engine) as session, session.begin():
            session.execute(sa.text("INSERT INTO accounts (id, email) VALUES (1, 'a@example.com')"))
            result = app.trigger(session, AccountCreated, {"id": 1, "email": "a@example.com"},
                                 idempotency_key="account-1")
        assert app.explain(result.delivery_ids[0]).status == "succeeded"
        assert [i.title for i in app.inbox("account:1").list().items] == ["Welcome a@example.com"]


def test_separate_histories(pg_empty_url: str, tmp_path: Path) -> None:
    cfg = _environment(tmp_path, pg_empty_url, "separate")
    command.revision(cfg, message="accounts", autogenerate=True)
    text = _revision_text(cfg)
    assert "accounts" in text and "chimeway_" not in text
    command.upgrade(cfg, "head")
    with Chimeway(pg_empty_url) as app:
        app.migrate()
        app.migrate()  # idempotent
        with app.engine.connect() as conn:
            assert current_revision(conn) == head_revision()
    tables = _tables(pg_empty_url)
    assert {"alembic_version", VERSION_TABLE, "accounts", "chimeway_events"} <= tables
    command.check(cfg)  # Chimeway's tables are no diff for the application
    _works(pg_empty_url)


def test_chimeway_tables_in_the_applications_autogenerate(pg_empty_url: str, tmp_path: Path) -> None:
    cfg = _environment(tmp_path, pg_empty_url, "autogenerate")
    command.revision(cfg, message="accounts and chimeway", autogenerate=True)
    text = _revision_text(cfg)
    assert "accounts" in text and "chimeway_events" in text
    command.upgrade(cfg, "head")
    tables = _tables(pg_empty_url)
    assert {"alembic_version", "accounts", "chimeway_events", "chimeway_deliveries"} <= tables
    assert VERSION_TABLE not in tables
    command.check(cfg)
    _works(pg_empty_url)


def test_applications_env_calls_chimeway_upgrade(pg_empty_url: str, tmp_path: Path) -> None:
    cfg = _environment(tmp_path, pg_empty_url, "env_upgrade")
    command.revision(cfg, message="accounts", autogenerate=True)
    text = _revision_text(cfg)
    assert "accounts" in text and "chimeway_" not in text
    command.upgrade(cfg, "head")
    tables = _tables(pg_empty_url)
    assert {"alembic_version", VERSION_TABLE, "accounts", "chimeway_events"} <= tables
    engine = sa.create_engine(pg_empty_url)
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
    engine.dispose()
    command.check(cfg)
    _works(pg_empty_url)
