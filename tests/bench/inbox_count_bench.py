"""Unread counts: counting the inbox's rows against reading the count the database keeps.

Creates (and drops) its own PostgreSQL database on ``CHIMEWAY_TEST_PG``
(default ``postgresql://postgres@127.0.0.1:5432``) with Chimeway's tables and
prints two sets of figures. Where the server runs on this machine, the CPU
time its backends for this database spent (``/proc/<pid>/schedstat``) is
printed beside the wall-clock figures: on a shared machine it moves far less
than they do.

1. ``unread_count`` with ``--items`` unread inbox items for one recipient,
   beside as many again spread over 2,000 other recipients (written by SQL
   through the triggers, then ``VACUUM ANALYZE``). Three ways, ``--samples``
   each: the count(*) Chimeway ran before the maintained count (the same
   statement, on the same indexes) and ``Inbox.unread_count()``, the
   maintained count, alternating call by call; then that count(*) with a
   partial index over unread items added (an index-only scan), alternating
   with the maintained count again. The clock covers one call: taking a
   pooled connection, BEGIN, the query, COMMIT. Server CPU is per call.
2. What the count triggers cost the writers of notifications, with the
   triggers enabled and disabled in alternating rounds (``--rounds``); the
   median of the rounds' figures and the with/without ratio:
   - ``trigger+deliver``: ``app.trigger`` for one recipient in its own
     transaction, the in-app delivery stamping the item (sync dispatcher);
     the clock covers the whole call, delivery included;
   - ``stamp``: one ``UPDATE ... SET inbox_at`` per transaction (what the
     executor does for each in-app delivery);
   - ``mark_read``: ``Inbox.mark_read`` of one item, its own transaction;
   - ``bulk insert``: 1,000 inbox items for 100 recipients in one statement.
   Rates are notifications written per second of wall clock; CPU is per
   notification, the server's backends and this process apart.

Run: ``.venv/bin/python tests/bench/inbox_count_bench.py [--items 50000] [--samples 300] [--rounds 7]``.

Not a test: figures depend on the machine and are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _db import fresh_postgres

from chimeway import Chimeway, Notifier, Recipient
from chimeway.db import create_engine
from chimeway.models import metadata, notifications_table

RECIPIENT = "user:big"
TRIGGERS = ("chimeway_inbox_count_insert", "chimeway_inbox_count_update", "chimeway_inbox_count_delete")


class Ping(Notifier):
    key = "bench_count_ping"
    channels = ["in_app"]
    templates = {"in_app": {"title": "ping {{ n }}", "body": "for {{ recipient.id }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=str(params["to"]))]


def fill(engine: sa.Engine, items: int) -> uuid.UUID:
    """``items`` unread items for RECIPIENT and as many for 2,000 others, through the triggers."""
    event_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO chimeway_events (id, tenant, idempotency_key, notifier_key, notifier_version, params,"
            " created_at) VALUES (:id, '', 'bench-fill', 'bench_count_ping', 1, '{}', now())"), {"id": event_id})
        for recipient, count in ((f"'{RECIPIENT}'", items), ("'user:' || (i % 2000)", items)):
            conn.execute(sa.text(
                "INSERT INTO chimeway_notifications (id, event_id, tenant, recipient_id, recipient, notifier_key,"
                " created_at, inbox_at, inbox_content)"
                f" SELECT gen_random_uuid(), :event, '', {recipient}, '{{}}', 'bench_count_ping',"
                "  now(), now(), '{\"title\": \"hello\"}' FROM generate_series(1, :n) AS i"),
                {"event": event_id, "n": count})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE chimeway_notifications")
        conn.exec_driver_sql("VACUUM ANALYZE chimeway_inbox_counts")
    return event_id


def counted_before(engine: sa.Engine) -> int:
    """The statement ``Inbox.unread_count`` ran before the maintained count."""
    n = notifications_table
    with engine.begin() as conn:
        return int(conn.execute(
            sa.select(sa.func.count()).select_from(n).where(
                n.c.tenant == "", n.c.recipient_id == RECIPIENT, n.c.inbox_at.is_not(None),
                n.c.read_at.is_(None), n.c.archived_at.is_(None))
        ).scalar_one())


class ServerCpu:
    """CPU time spent by the server's backends for one database (Linux, server on this machine)."""

    def __init__(self, url: str) -> None:
        self.monitor = psycopg.connect(url, autocommit=True)
        self.pids: list[int] = []

    def refresh(self) -> None:
        """Look up the database's backends again (a pool may have opened more)."""
        self.pids = [int(pid) for (pid,) in self.monitor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]

    @property
    def available(self) -> bool:
        return bool(self.pids) and all(os.path.exists(f"/proc/{pid}/schedstat") for pid in self.pids)

    def now(self) -> dict[int, int]:
        """Nanoseconds on CPU so far, per backend."""
        found = {}
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/schedstat") as stat:
                    found[pid] = int(stat.read().split()[0])
            except OSError:
                pass
        return found

    def since(self, before: dict[int, int]) -> float:
        """Seconds on CPU since ``before`` (backends opened meanwhile count from zero)."""
        self.refresh()
        after = self.now()
        return sum(ns - before.get(pid, 0) for pid, ns in after.items()) / 1e9

    def close(self) -> None:
        self.monitor.close()


def timed(call: Callable[[], int], cpu: ServerCpu) -> tuple[float, float]:
    """Wall milliseconds and server CPU microseconds of one call."""
    before = cpu.now()
    start = time.perf_counter()
    call()
    wall = (time.perf_counter() - start) * 1000
    after = cpu.now()
    return wall, sum(ns - before.get(pid, ns) for pid, ns in after.items()) / 1000


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"p50 {statistics.median(ordered):7.3f} ms   p99 {p99:7.3f} ms"


def read_costs(app: Chimeway, cpu: ServerCpu, items: int, samples: int) -> None:
    engine = app.engine
    inbox = app.inbox(RECIPIENT)
    assert counted_before(engine) == inbox.unread_count() == items
    before_way, maintained, partial = "count(*), before", "maintained count", "count(*), partial index"
    ways: dict[str, Callable[[], int]] = {before_way: lambda: counted_before(engine), maintained: inbox.unread_count}
    wall: dict[str, list[float]] = {name: [] for name in (before_way, maintained, partial)}
    server: dict[str, list[float]] = {name: [] for name in wall}

    def sample(name: str, call: Callable[[], int]) -> None:
        ms, us = timed(call, cpu)
        wall[name].append(ms)
        server[name].append(us)

    for _ in range(20):                                        # warm the pool and the caches
        for call in ways.values():
            call()
    cpu.refresh()
    for i in range(samples):
        for name in (list(ways) if i % 2 else list(reversed(ways))):
            sample(name, ways[name])
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(
            "CREATE INDEX bench_unread ON chimeway_notifications (tenant, recipient_id)"
            " WHERE inbox_at IS NOT NULL AND read_at IS NULL AND archived_at IS NULL")
        conn.exec_driver_sql("VACUUM ANALYZE chimeway_notifications")
        plan = "\n".join(conn.execute(sa.text(
            "EXPLAIN SELECT count(*) FROM chimeway_notifications WHERE tenant = '' AND recipient_id = :r"
            " AND inbox_at IS NOT NULL AND read_at IS NULL AND archived_at IS NULL"), {"r": RECIPIENT}).scalars())
    for _ in range(20):
        counted_before(engine)
    cpu.refresh()
    for i in range(samples):
        for name in ((partial, maintained) if i % 2 else (maintained, partial)):
            sample(name, ways.get(name, ways[before_way]))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("DROP INDEX bench_unread")
    print(f"unread_count, one recipient with {items:,} unread items (+{items:,} for 2,000 others), "
          f"{samples} samples each ({2 * samples} of the maintained count):")
    for name in wall:
        server_cpu = f"   server cpu p50 {statistics.median(server[name]):8.0f} us" if cpu.available else ""
        print(f"  {name:<24} {percentiles(wall[name])}{server_cpu}")
    index_only = "Index Only Scan" in plan
    print(f"  (the partial index's plan: {'an index-only scan' if index_only else plan.splitlines()[0]})")


def set_triggers(engine: sa.Engine, on: bool) -> None:
    with engine.begin() as conn:
        for name in TRIGGERS:
            conn.exec_driver_sql(
                f"ALTER TABLE chimeway_notifications {'ENABLE' if on else 'DISABLE'} TRIGGER {name}")


class Writes:
    """One kind of write, run ``per_round`` times in a round; returns notifications written."""

    def __init__(self, app: Chimeway, event_id: uuid.UUID) -> None:
        self.app = app
        self.event_id = event_id
        self.serial = 0

    def trigger(self, per_round: int) -> int:
        for _ in range(per_round):
            self.serial += 1
            with Session(self.app.engine) as session, session.begin():
                self.app.trigger(session, Ping, {"to": f"user:w{self.serial % 50}", "n": self.serial},
                                 idempotency_key=f"w-{self.serial}")
        return per_round

    def _blank(self, count: int, recipients: int, inbox: bool) -> list[uuid.UUID]:
        ids = [uuid.uuid4() for _ in range(count)]
        with self.app.engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO chimeway_notifications (id, event_id, tenant, recipient_id, recipient, notifier_key,"
                " created_at, inbox_at, inbox_content)"
                " SELECT i, :event, '', 'user:s' || (row_number() OVER () % :k), '{}', 'bench_count_ping', now(),"
                f" {'now()' if inbox else 'NULL'}, '{{\"title\": \"s\"}}' FROM unnest(CAST(:ids AS uuid[])) AS i"),
                {"event": self.event_id, "ids": ids, "k": recipients})
        return ids

    def stamp(self, per_round: int) -> int:
        ids = self._blank(per_round, 50, inbox=False)
        for nid in ids:
            with self.app.engine.begin() as conn:
                conn.execute(sa.text("UPDATE chimeway_notifications SET inbox_at = now() WHERE id = :id"),
                             {"id": nid})
        return per_round

    def mark_read(self, per_round: int) -> int:
        ids = self._blank(per_round, 1, inbox=True)
        inbox = self.app.inbox("user:s0")
        for nid in ids:
            inbox.mark_read(nid)
        return per_round

    def bulk(self, per_round: int) -> int:
        for _ in range(per_round):
            self._blank(1000, 100, inbox=True)
        return per_round * 1000


def write_costs(app: Chimeway, cpu: ServerCpu, event_id: uuid.UUID, rounds: int) -> None:
    writes = Writes(app, event_id)
    kinds: list[tuple[str, Callable[[int], int], int]] = [
        ("trigger+deliver", writes.trigger, 100), ("stamp", writes.stamp, 300),
        ("mark_read", writes.mark_read, 300), ("bulk insert", writes.bulk, 5),
    ]
    print(f"\ncost to writers: count triggers on/off in alternating rounds, {rounds} of each (medians):")
    print(f"  {'':<16} {'notifications/s':>23} {'ratio':>6}   {'server cpu us/notification':>29} {'ratio':>6}"
          f"   {'client cpu us':>15}")
    for name, work, per_round in kinds:
        work(max(1, per_round // 10))                            # warm up
        rates: dict[bool, list[float]] = {True: [], False: []}
        server: dict[bool, list[float]] = {True: [], False: []}
        client: dict[bool, list[float]] = {True: [], False: []}
        for r in range(rounds):
            for on in ((True, False) if r % 2 else (False, True)):
                set_triggers(app.engine, on)
                cpu.refresh()
                before = cpu.now()
                wall, proc = time.perf_counter(), time.process_time()
                written = work(per_round)
                wall, proc = time.perf_counter() - wall, time.process_time() - proc
                server[on].append(cpu.since(before) / written * 1e6)
                rates[on].append(written / wall)
                client[on].append(proc / written * 1e6)
        on_rate, off_rate = statistics.median(rates[True]), statistics.median(rates[False])
        on_cpu, off_cpu = statistics.median(server[True]), statistics.median(server[False])
        server_cpu = (f"{on_cpu:12.1f} vs {off_cpu:10.1f} {on_cpu / off_cpu:6.2f}" if cpu.available
                      else f"{'n/a':>29} {'':>6}")
        print(f"  {name:<16} {on_rate:9,.0f} vs {off_rate:9,.0f} {on_rate / off_rate:6.2f}   {server_cpu}"
              f"   {statistics.median(client[True]):6.0f} vs {statistics.median(client[False]):5.0f}")
    set_triggers(app.engine, True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    with fresh_postgres("chimeway_bench_count") as server_url:
        engine = create_engine(server_url, pool_size=5)
        metadata.create_all(engine)
        app = Chimeway(engine=engine)
        cpu = ServerCpu(server_url)
        event_id = fill(engine, options.items)
        read_costs(app, cpu, options.items, options.samples)
        write_costs(app, cpu, event_id, options.rounds)
        cpu.close()
        app.close()
        engine.dispose()


if __name__ == "__main__":
    main()
