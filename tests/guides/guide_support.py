"""Hidden setup for the guides: real local servers, and clean-up between guides."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import alembic
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from channels_support.server import FakeServer, Recorded, Reply
from email_support.smtp import SMTPServer, smtp_server

import chimeway.notifier
import chimeway.workflow.steps
from chimeway import Chimeway
from chimeway.cli import main as cli_main

__all__ = ["GuideContext", "Receiver", "isolated_registries"]


@contextlib.contextmanager
def isolated_registries() -> Iterator[None]:
    """Forget the notifiers (and workflow programs) a guide defined once it ends.

    Guides reuse natural keys (``order_shipped`` in several of them); each
    guide is its own program, as it is for a reader.
    """
    notifiers = dict(chimeway.notifier._REGISTRY)
    programs = dict(chimeway.workflow.steps._PROGRAMS)
    try:
        yield
    finally:
        chimeway.notifier._REGISTRY.clear()
        chimeway.notifier._REGISTRY.update(notifiers)
        chimeway.workflow.steps._PROGRAMS.clear()
        chimeway.workflow.steps._PROGRAMS.update(programs)


class Receiver(FakeServer):
    """An HTTP receiver on 127.0.0.1 that accepts every request (200, JSON)."""

    def handle(self, request: Recorded) -> Reply:
        return Reply(200, {"ok": True})

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])


class GuideContext(contextlib.ExitStack):
    """What a guide's hidden blocks use (``guide.receiver()``, ``guide.cli(...)``...).

    Every ``Chimeway`` app built while the guide runs is closed at the end,
    also the ones a later block replaced.
    """

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.tmp_path = tmp_path
        self.monkeypatch = monkeypatch
        self.apps: list[Chimeway] = []
        self.blocks: list[str] = []  # the source of every visible block run so far
        self.loop = asyncio.new_event_loop()

    def __enter__(self) -> GuideContext:
        super().__enter__()
        original = Chimeway.__init__
        apps = self.apps

        def tracking_init(app: Chimeway, *args: Any, **kwargs: Any) -> None:
            original(app, *args, **kwargs)
            apps.append(app)

        Chimeway.__init__ = tracking_init  # type: ignore[method-assign]
        self.callback(setattr, Chimeway, "__init__", original)
        self.callback(self.loop.close)
        self.callback(self._close_apps)
        return self

    def _close_apps(self) -> None:
        for app in reversed(self.apps):
            app.close()

    def env(self, **values: str) -> None:
        """Set environment variables until the guide ends."""
        for name, value in values.items():
            self.monkeypatch.setenv(name, value)

    def receiver(self) -> Receiver:
        """A running HTTP receiver, closed when the guide ends."""
        return self.enter_context(Receiver())

    def smtp(self) -> SMTPServer:
        """A running SMTP server (aiosmtpd) that stores what it accepts."""
        return self.enter_context(smtp_server())

    def postgres(self) -> str:
        """URL of a fresh, empty PostgreSQL database, dropped when the guide ends.

        Skips the guide when no PostgreSQL can be found or started (fails
        instead under ``CHIMEWAY_REQUIRE_POSTGRES=1``).
        """
        import uuid

        import pg

        server = pg.server_url()
        if server is None:
            message = "no PostgreSQL for this guide's PostgreSQL-only section"
            if pg.required():
                pytest.fail(message)
            pytest.skip(message)
        name = f"chimeway_guide_{uuid.uuid4().hex[:12]}"
        admin = sa.create_engine(f"postgresql+psycopg://{server[len('postgresql://'):]}/postgres",
                                 isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')

        def drop() -> None:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()

        self.callback(drop)
        return f"postgresql+psycopg://{server[len('postgresql://'):]}/{name}"

    def cli(self, *args: str) -> str:
        """Run the ``chimeway`` command in-process; return what it printed (exit 0 asserted)."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli_main(list(args))
        assert code == 0, (args, code, out.getvalue())
        return out.getvalue()


    def alembic(self, name: str, *sources: str, migrate_chimeway: bool = False) -> str:
        """Run an application's Alembic env.py made of ``sources`` on a fresh SQLite file.

        The application (package ``myapp``) has one table, ``myapp_accounts``.
        Autogenerates a revision, upgrades to it and returns its text.
        """
        package = self.tmp_path / "myapp"
        if not package.exists():
            package.mkdir()
            (package / "__init__.py").write_text("")
            (package / "models.py").write_text(MYAPP_MODELS)
        url = f"sqlite:///{self.tmp_path / f'alembic_{name}.db'}"
        if migrate_chimeway:
            Chimeway(url).migrate()
        root = self.tmp_path / f"alembic_{name}"
        (root / "versions").mkdir(parents=True)
        template = (Path(alembic.__file__).parent / "templates" / "generic" / "script.py.mako").read_text()
        (root / "script.py.mako").write_text(
            template.replace("import sqlalchemy as sa\n",
                             "import sqlalchemy as sa\nfrom sqlalchemy import Text\nimport chimeway.types\n"))
        (root / "env.py").write_text("\n".join([ENV_PRELUDE, *sources, "run_migrations_online()\n"]))
        config = Config()
        config.set_main_option("script_location", str(root))
        config.attributes["url"] = url
        command.revision(config, message=name, autogenerate=True)
        command.upgrade(config, "head")
        engine = sa.create_engine(url)
        try:
            assert "myapp_accounts" in sa.inspect(engine).get_table_names()
        finally:
            engine.dispose()
        return "\n".join(p.read_text() for p in sorted((root / "versions").glob("*.py")))


MYAPP_MODELS = """
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "myapp_accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str]
"""

ENV_PRELUDE = """
import sqlalchemy as sa
from alembic import context

import myapp.models

engine = sa.create_engine(context.config.attributes["url"])
target_metadata = myapp.models.Base.metadata
"""
