"""Comment mentions with Flask, Flask-SQLAlchemy and Chimeway.

The same flow as the FastAPI example, on Flask-SQLAlchemy's request-scoped
session: ``POST /comments`` stores a comment and triggers a ``Mentioned``
notification in the same transaction; ``db.session.commit()`` makes both
durable and then delivers to the in-app inbox.

Run it (from the ``examples`` folder)::

    pip install "chimeway[flask]"
    DATABASE_URL=sqlite:///mentions.db flask --app flask_app.main:create_app init-db
    DATABASE_URL=sqlite:///mentions.db flask --app flask_app.main:create_app run

A relative SQLite path is taken from the current folder (``./mentions.db``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import click
from flask import Flask, abort, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import ForeignKey, String, Text, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from werkzeug.exceptions import HTTPException

from chimeway import Chimeway, Notifier, Recipient
from chimeway.errors import InvalidInputError, NotFoundError

MENTION = re.compile(r"(?<![\w@])@(\w{1,40})")
USERNAME = re.compile(r"^\w{1,40}$")


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class User(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "example_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(40), unique=True)


class Comment(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "example_comments"

    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("example_users.id"))
    body: Mapped[str] = mapped_column(Text)


class Mentioned(Notifier):
    key = "flask_example.mentioned"
    category = "mentions"
    channels = ["in_app"]
    templates = {
        "in_app": {
            "title": "@{{ author }} mentioned you",
            "body": "{{ excerpt }}",
            "url": "/comments/{{ comment_id }}",
        }
    }

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"user:{user_id}") for user_id in params["user_ids"]]


def chimeway() -> Chimeway:
    """The app's Chimeway (one per Flask app)."""
    instance: Chimeway = current_app.extensions["chimeway"]
    return instance


def init_db() -> None:
    """Create the example's tables and migrate Chimeway's (a real app uses Alembic)."""
    db.create_all()
    chimeway().migrate()
    url = db.engine.url.render_as_string(hide_password=True)
    click.echo(f"Created the example's tables and migrated Chimeway's in {url}")


def _database_url(url: str) -> str:
    # Flask-SQLAlchemy puts a relative SQLite file in the app's instance
    # folder; this example keeps it where it is run, as its README says.
    parsed = make_url(url)
    path = parsed.database or ""
    if (parsed.get_backend_name() == "sqlite" and path not in ("", ":memory:")
            and not os.path.isabs(path) and not path.startswith("file:")):
        return parsed.set(database=os.path.abspath(path)).render_as_string(hide_password=False)
    return url


def create_app(database_url: str | None = None) -> Flask:
    """Build the service.

    Args:
        database_url: a sync URL (``sqlite:///...`` or ``postgresql+psycopg://...``);
            default ``$DATABASE_URL``.
    """
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = _database_url(
        database_url or os.environ.get("DATABASE_URL", "sqlite:///mentions.db")
    )
    db.init_app(app)
    with app.app_context():
        # One engine for both: Chimeway writes through the request's session
        # and delivers on the same pool after commit.
        app.extensions["chimeway"] = Chimeway(engine=db.engine)
    app.cli.command("init-db")(init_db)

    @app.errorhandler(HTTPException)
    def error_as_json(error: HTTPException) -> ResponseReturnValue:
        return {"error": error.description}, error.code or 500

    @app.post("/users")
    def create_user() -> ResponseReturnValue:
        username = str((request.get_json(silent=True) or {}).get("username", ""))
        if not USERNAME.match(username):
            abort(400, "username must be 1-40 letters, digits or _")
        user = User(username=username)
        db.session.add(user)
        try:
            db.session.commit()
        except IntegrityError:
            # The unique index decides, so two racing requests cannot both win.
            db.session.rollback()
            abort(409, f"username {username!r} is already taken")
        return {"id": user.id, "username": user.username}, 201

    @app.post("/comments")
    def create_comment() -> ResponseReturnValue:
        data = request.get_json(silent=True) or {}
        body = str(data.get("body", ""))
        if not body:
            abort(400, "body is required")
        author = db.session.get(User, data.get("author_id"))
        if author is None:
            abort(404, f"no user {data.get('author_id')}")
        comment = Comment(author_id=author.id, body=body)
        db.session.add(comment)
        db.session.flush()  # the comment's id names the notification
        names = set(MENTION.findall(body)) - {author.username}
        mentioned = db.session.scalars(
            select(User).where(User.username.in_(names)).order_by(User.id)
        ).all() if names else []
        event_id = None
        if mentioned:
            # db.session is a scoped_session proxy; Chimeway takes the Session itself.
            result = chimeway().trigger(
                db.session(),
                Mentioned,
                {
                    "user_ids": [u.id for u in mentioned],
                    "author": author.username,
                    "comment_id": comment.id,
                    "excerpt": body[:140],
                },
                idempotency_key=f"comment-{comment.id}-mentions",
                actor=f"user:{author.id}",
                correlation_id=request.headers.get("X-Request-ID"),
            )
            event_id = str(result.event_id)
        db.session.commit()
        return {"id": comment.id, "mentioned": [u.username for u in mentioned], "event_id": event_id}, 201

    @app.get("/users/<int:user_id>/inbox")
    def inbox(user_id: int) -> ResponseReturnValue:
        box = chimeway().inbox(f"user:{user_id}")
        try:
            page = box.list(
                request.args.get("limit", 20, type=int),
                request.args.get("cursor"),
                unread_only=request.args.get("unread_only") == "true",
            )
        except InvalidInputError as exc:
            abort(400, str(exc))
        return jsonify({
            "items": [
                {
                    "id": str(item.id),
                    "title": item.title,
                    "body": item.body,
                    "url": item.content.get("url"),
                    "read": item.read_at is not None,
                    "created_at": item.created_at.isoformat(),
                }
                for item in page.items
            ],
            "next_cursor": page.next_cursor,
            "unread": box.unread_count(),
        })

    @app.post("/users/<int:user_id>/inbox/<notification_id>/read")
    def mark_read(user_id: int, notification_id: str) -> ResponseReturnValue:
        box = chimeway().inbox(f"user:{user_id}", session=db.session())
        try:
            changed = box.mark_read(notification_id)
        except NotFoundError as exc:
            abort(404, str(exc))
        except InvalidInputError as exc:
            abort(400, str(exc))
        db.session.commit()
        return {"changed": changed}

    return app
