"""A dedicated LISTEN connection that turns NOTIFYs into worker wake-ups."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import Engine

from chimeway.queue.sql import NOTIFY_CHANNEL

__all__ = ["Listener"]

log = logging.getLogger("chimeway.queue")

MAX_RECONNECT_DELAY = 5.0


def conninfo(engine: Engine) -> str:
    """A libpq URI for the engine's database (password included)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class Listener(threading.Thread):
    """Hold one ``LISTEN`` connection, reconnecting after it is lost.

    Args:
        engine: the PostgreSQL engine whose database to listen on.
        on_notify: called with each notification's payload (for the job queue, a queue name).
        on_connect: called after every (re)connection, since notifications
            sent while disconnected are lost and a poll must make up for them.
        stop: set to end the thread.
        channel: the notification channel to listen on (default: the job queue's).
    """

    def __init__(
        self,
        engine: Engine,
        on_notify: Callable[[str], None],
        on_connect: Callable[[], None],
        stop: threading.Event,
        *,
        name: str = "chimeway-listener",
        channel: str = NOTIFY_CHANNEL,
    ) -> None:
        super().__init__(name=name, daemon=True)
        if not channel.isidentifier():
            raise ValueError(f"channel must be an identifier, got {channel!r}")
        self._channel = channel
        self._dsn = conninfo(engine)
        self._on_notify = on_notify
        self._on_connect = on_connect
        self._halt = stop
        self.connected = threading.Event()
        self.connections = 0

    def run(self) -> None:
        delay = 0.1
        while not self._halt.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True,
                                     application_name="chimeway-listener") as conn:
                    conn.execute(f"LISTEN {self._channel}")
                    self.connections += 1
                    self.connected.set()
                    delay = 0.1
                    self._on_connect()
                    while not self._halt.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._on_notify(note.payload)
            except Exception as exc:  # any failure: reconnect, never let the thread die
                self.connected.clear()
                log.warning("LISTEN connection lost (%s); reconnecting in %.1fs", exc, delay)
                self._halt.wait(delay)
                delay = min(delay * 2, MAX_RECONNECT_DELAY)
        self.connected.clear()
