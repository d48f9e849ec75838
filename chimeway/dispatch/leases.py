"""Keeping the leases of sends in flight alive while this process lives.

A claimed delivery is ``dispatched`` under a lease that runs out after
``ttl``. While this process is sending it, a small daemon thread pushes the
lease out every ``ttl / 4``; when the process dies (``kill -9``, a crash, a
container stopped hard) nothing extends it any more, the lease runs out, and
the rescuer re-drives the delivery. A slow send is never mistaken for a dead
one, however long the provider takes, as long as its process is alive.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from chimeway.clock import Clock
from chimeway.db import writer
from chimeway.deliveries import extend_leases

__all__ = ["DEFAULT_LEASE_TTL", "LeaseKeeper"]

log = logging.getLogger("chimeway.deliveries")

DEFAULT_LEASE_TTL = timedelta(seconds=60)


class LeaseKeeper:
    """Names this process as a lease holder and extends the leases it holds.

    Args:
        engine: Chimeway's engine.
        clock: the time source (lease expiries are in its time).
        ttl: how long a lease lasts without being extended.
    """

    def __init__(self, engine: Engine, clock: Clock, ttl: timedelta = DEFAULT_LEASE_TTL) -> None:
        if not isinstance(ttl, timedelta) or ttl <= timedelta(0):
            raise ValueError(f"lease ttl must be a positive timedelta, got {ttl!r}")
        self.engine = engine
        self.clock = clock
        self.ttl = ttl
        self._lock = threading.Lock()
        self._pid = -1
        self._holder = ""
        self._held: set[uuid.UUID] = set()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    @property
    def holder(self) -> str:
        """This process's holder name (``host:pid:random``; new after a fork)."""
        with self._lock:
            self._check_pid()
            return self._holder

    def _check_pid(self) -> None:
        pid = os.getpid()
        if pid != self._pid:
            # A forked child (a prefork pool) holds nothing its parent held,
            # and must not share the parent's name or extend its leases.
            self._pid = pid
            self._holder = f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}"
            self._held = set()
            self._thread = None

    def lease_until(self, now: datetime) -> datetime:
        """When a lease taken at ``now`` runs out."""
        return now + self.ttl

    def hold(self, ids: Iterable[uuid.UUID]) -> None:
        """Keep extending these deliveries' leases until :meth:`drop`."""
        with self._lock:
            self._check_pid()
            self._held.update(ids)
            if self._held and self._thread is None and not self._closed.is_set():
                self._thread = threading.Thread(target=self._run, name="chimeway-leases", daemon=True)
                self._thread.start()

    def drop(self, ids: Iterable[uuid.UUID]) -> None:
        """Stop extending these leases (their attempt is recorded, or given up)."""
        with self._lock:
            self._held.difference_update(ids)

    def held(self) -> frozenset[uuid.UUID]:
        """The deliveries whose leases this process is extending."""
        with self._lock:
            return frozenset(self._held)

    def close(self) -> None:
        """Stop the extending thread (leases then run out by themselves)."""
        self._closed.set()

    def _run(self) -> None:
        interval = max(0.05, self.ttl.total_seconds() / 4)
        while not self._closed.wait(interval):
            with self._lock:
                if not self._held or self._thread is not threading.current_thread():
                    if self._thread is threading.current_thread():
                        self._thread = None
                    return
                ids, holder = list(self._held), self._holder
            try:
                with writer(self.engine).begin() as conn:
                    extend_leases(conn, ids, holder=holder, until=self.clock.now() + self.ttl)
            except sa.exc.SQLAlchemyError as exc:
                # The database is away: the leases may run out and the sends be
                # re-driven elsewhere (at least once, never lost).
                log.warning("could not extend %d delivery lease(s): %s", len(ids), type(exc).__name__)
