"""Comment mentions with FastAPI, async SQLAlchemy and Chimeway.

``POST /comments`` stores a comment and, in the same transaction, triggers a
``Mentioned`` notification for every ``@username`` in it: if the request
fails, neither the comment nor the notification exists. After the commit the
in-app delivery puts it in each mentioned user's inbox.

Run it (from the ``examples`` folder)::

    pip install "chimeway[fastapi]" uvicorn
    DATABASE_URL=sqlite+aiosqlite:///mentions.db uvicorn --factory fastapi_app.main:create_app
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints'
# annotations at runtime, and some name a dependency local to create_app.
import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import ForeignKey, String, Text, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from chimeway import Chimeway, Notifier, Recipient
from chimeway.aio import create_async_engine
from chimeway.errors import InvalidInputError, NotFoundError

MENTION = re.compile(r"(?<![\w@])@(\w{1,40})")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "example_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(40), unique=True)


class Comment(Base):
    __tablename__ = "example_comments"

    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("example_users.id"))
    body: Mapped[str] = mapped_column(Text)


class Mentioned(Notifier):
    key = "fastapi_example.mentioned"
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


class NewUser(BaseModel):
    username: str = Field(pattern=r"^\w{1,40}$")


class NewComment(BaseModel):
    author_id: int
    body: str = Field(min_length=1, max_length=5000)


async def prepare(engine: AsyncEngine, chimeway: Chimeway) -> None:
    """Create the example's tables and migrate Chimeway's (a real app uses Alembic)."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    await asyncio.to_thread(chimeway.migrate)


def create_app(database_url: str | None = None) -> FastAPI:
    """Build the service.

    Args:
        database_url: an async URL (``sqlite+aiosqlite:///...`` or
            ``postgresql+psycopg://...``); default ``$DATABASE_URL``.
    """
    url = database_url or os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///mentions.db")
    engine = create_async_engine(url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    # Chimeway delivers and explains on its own sync engine to the same database.
    chimeway = Chimeway.from_async_engine(engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await prepare(engine, chimeway)
        yield
        chimeway.close()
        await engine.dispose()

    api = FastAPI(title="Mentions", lifespan=lifespan)
    api.state.engine = engine
    api.state.chimeway = chimeway

    async def session() -> AsyncIterator[AsyncSession]:
        async with sessions() as s:
            yield s

    Session = Annotated[AsyncSession, Depends(session)]

    @api.post("/users", status_code=201)
    async def create_user(new: NewUser, db: Session) -> dict[str, Any]:
        try:
            async with db.begin():
                user = User(username=new.username)
                db.add(user)
        except IntegrityError:
            # The unique index decides, so two racing requests cannot both win.
            raise HTTPException(409, f"username {new.username!r} is already taken") from None
        return {"id": user.id, "username": user.username}

    @api.post("/comments", status_code=201)
    async def create_comment(
        new: NewComment, db: Session, x_request_id: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        async with db.begin():
            author = await db.get(User, new.author_id)
            if author is None:
                raise HTTPException(404, f"no user {new.author_id}")
            comment = Comment(author_id=author.id, body=new.body)
            db.add(comment)
            await db.flush()  # the comment's id names the notification
            names = set(MENTION.findall(new.body)) - {author.username}
            mentioned = (await db.scalars(
                select(User).where(User.username.in_(names)).order_by(User.id)
            )).all() if names else []
            event_id = None
            if mentioned:
                result = await chimeway.trigger_async(
                    db,
                    Mentioned,
                    {
                        "user_ids": [u.id for u in mentioned],
                        "author": author.username,
                        "comment_id": comment.id,
                        "excerpt": new.body[:140],
                    },
                    idempotency_key=f"comment-{comment.id}-mentions",
                    actor=f"user:{author.id}",
                    correlation_id=x_request_id,
                )
                event_id = str(result.event_id)
        return {"id": comment.id, "mentioned": [u.username for u in mentioned], "event_id": event_id}

    @api.get("/users/{user_id}/inbox")
    async def inbox(
        user_id: int,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        cursor: str | None = None,
        unread_only: bool = False,
    ) -> dict[str, Any]:
        box = chimeway.inbox_async(f"user:{user_id}")
        try:
            page = await box.list(limit, cursor, unread_only=unread_only)
        except InvalidInputError as exc:
            raise HTTPException(400, str(exc)) from exc
        return {
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
            "unread": await box.unread_count(),
        }

    @api.get("/users/{user_id}/inbox/changes")
    async def inbox_changes(user_id: int) -> StreamingResponse:
        """Server-Sent Events: the inbox's changes as they commit (``EventSource`` in a browser).

        The first event is ``snapshot`` (the unread count); then ``new``,
        ``seen``, ``read`` and ``archived``, each with the item and the unread
        count. On PostgreSQL they arrive through LISTEN/NOTIFY within
        milliseconds of the commit; on SQLite within a poll (1 s).
        """
        changes = chimeway.inbox_changes(f"user:{user_id}")

        async def events() -> AsyncIterator[str]:
            async for change in changes:
                data: dict[str, Any] = {"unread": change.unread_count}
                if change.item is not None:
                    data |= {"id": str(change.item.id), "title": change.item.title,
                             "read": change.item.read_at is not None,
                             "archived": change.item.archived_at is not None}
                yield f"event: {change.kind}\ndata: {json.dumps(data)}\n\n"

        # Leaving the stream (the client went away) closes the iterator, which stops listening.
        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @api.post("/users/{user_id}/inbox/{notification_id}/read")
    async def mark_read(user_id: int, notification_id: str, db: Session) -> dict[str, Any]:
        async with db.begin():
            box = chimeway.inbox_async(f"user:{user_id}", session=db)
            try:
                changed = await box.mark_read(notification_id)
            except NotFoundError as exc:
                raise HTTPException(404, str(exc)) from exc
            except InvalidInputError as exc:
                raise HTTPException(400, str(exc)) from exc
        return {"changed": changed}

    return api
