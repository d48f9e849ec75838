"""``Chimeway(schema="notify")``: every table of Chimeway's in that PostgreSQL schema, the caller's untouched.

The application's own table (``orders``) lives in ``public`` and is written
in the same transactions as Chimeway's rows: it must stay findable there,
before, during and after Chimeway's statements. Nothing of Chimeway's may
land in ``public``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from chimeway import Chimeway, Notifier, Recipient
from chimeway.db import create_engine
from chimeway.errors import ConfigurationError, DatabaseError
from chimeway.testing import RecordingChannel
from chimeway.web import Dashboard, Request

pytestmark = pytest.mark.postgres

SCHEMA = "notify"


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(sa.String(50))
    notified: Mapped[bool] = mapped_column(default=False)


class Shipped(Notifier):
    key = "schema_shipped"
    channels = ["in_app", "rec"]
    templates = {"in_app": {"title": "Order {{ order }} shipped"}, "rec": {"body": "Order {{ order }} shipped"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=str(params["customer"]))]


@pytest.fixture
def engine(pg_empty_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(pg_empty_url, pool_size=5)
    Base.metadata.create_all(engine)          # the application's table, in public
    yield engine
    engine.dispose()


def tables(engine: sa.Engine, schema: str) -> set[str]:
    return set(sa.inspect(engine).get_table_names(schema=schema))


def place_order(app: Chimeway, engine: sa.Engine, order_id: int, key: str) -> Any:
    with Session(engine) as session, session.begin():
        session.add(Order(id=order_id, customer="ada"))
        session.flush()                                  # the caller's statement, before Chimeway's
        result = app.trigger(session, Shipped, {"order": order_id, "customer": "customer:ada"},
                             idempotency_key=key)
        order = session.get(Order, order_id)             # and after: still the caller's public.orders
        assert order is not None
        order.notified = True
    return result


def test_every_table_and_the_version_table_live_in_the_schema(engine: sa.Engine) -> None:
    app = Chimeway(engine=engine, schema=SCHEMA, channels={"rec": RecordingChannel()})
    app.migrate()
    app.migrate()                                        # idempotent
    placed = tables(engine, SCHEMA)
    assert "chimeway_alembic_version" in placed
    assert {"chimeway_events", "chimeway_deliveries", "chimeway_jobs", "chimeway_notifications"} <= placed
    assert tables(engine, "public") == {"orders"}, "nothing of Chimeway's belongs in public"
    with engine.connect() as conn:
        triggers = conn.execute(sa.text(
            "SELECT event_object_schema FROM information_schema.triggers WHERE trigger_name = "
            "'chimeway_inbox_notify'")).scalars().all()
    assert set(triggers) == {SCHEMA}
    app.close()


def test_trigger_in_the_callers_transaction_then_deliver_inbox_and_explain(engine: sa.Engine) -> None:
    rec = RecordingChannel()
    app = Chimeway(engine=engine, schema=SCHEMA, channels={"rec": rec})
    app.migrate()
    result = place_order(app, engine, 1, "order-1")
    assert [m.fields["body"] for m in rec.sent] == ["Order 1 shipped"]
    assert {app.explain(d).status for d in result.delivery_ids} == {"succeeded"}
    assert app.inbox("customer:ada").unread_count() == 1
    with Session(engine) as session, session.begin():
        items = app.inbox("customer:ada", session=session).list()
        app.inbox("customer:ada", session=session).mark_read(items.items[0].id)
        assert session.get(Order, 1) is not None          # the caller's session still finds public.orders
    assert app.inbox("customer:ada").unread_count() == 0
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT notified FROM public.orders WHERE id = 1")).scalar() is True
        assert conn.execute(sa.text(f"SELECT count(*) FROM {SCHEMA}.chimeway_events")).scalar() == 1
    # A rollback leaves nothing in either schema.
    with Session(engine) as session, session.begin():
        session.add(Order(id=2, customer="bob"))
        app.trigger(session, Shipped, {"order": 2, "customer": "customer:bob"}, idempotency_key="order-2")
        session.rollback()
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT count(*) FROM {SCHEMA}.chimeway_events")).scalar() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM public.orders")).scalar() == 1
    app.close()


def test_the_queue_dispatcher_and_a_worker_thread(engine: sa.Engine) -> None:
    rec = RecordingChannel()
    app = Chimeway(engine=engine, schema=SCHEMA, dispatcher="queue", channels={"rec": rec})
    app.migrate()
    results = [place_order(app, engine, i, f"order-{i}") for i in range(1, 6)]
    with engine.connect() as conn:
        queued = conn.execute(sa.text(f"SELECT count(*) FROM {SCHEMA}.chimeway_jobs")).scalar()
    assert queued == 10
    stop = threading.Event()
    worker = threading.Thread(target=app.queue.run_worker, kwargs={
        "queues": {"chimeway_delivery": 5}, "poll_interval": 0.05, "stop_event": stop})
    worker.start()
    try:
        ids = [d for r in results for d in r.delivery_ids]
        for _ in range(600):
            if {app.explain(d).status for d in ids} == {"succeeded"}:
                break
            stop.wait(0.05)
    finally:
        stop.set()
        worker.join(30)
    assert {app.explain(d).status for d in ids} == {"succeeded"}
    assert len(rec.sent) == 5
    page = Dashboard(app, authorize=lambda request: "read").handle(Request(method="GET", path="/"))
    assert page.status == 200 and b"chimeway_delivery" in page.body
    app.close()


def test_a_schema_with_no_tables_says_to_migrate(engine: sa.Engine) -> None:
    app = Chimeway(engine=engine, schema="nothing_here", channels={"rec": RecordingChannel()})
    with Session(engine) as session, session.begin(), pytest.raises(DatabaseError, match="chimeway migrate"):
        app.trigger(session, Shipped, {"order": 1, "customer": "customer:ada"}, idempotency_key="k")
    app.close()


@pytest.mark.parametrize("schema", ["", "1abc", "no-dash", "pg_catalog", "x" * 64, 'a"b'])
def test_a_bad_schema_name_is_refused(engine: sa.Engine, schema: str) -> None:
    with pytest.raises(ConfigurationError, match="schema"):
        Chimeway(engine=engine, schema=schema)


def test_sqlite_has_no_schemas(tmp_path: Any) -> None:
    with pytest.raises(ConfigurationError, match="schema is for PostgreSQL"):
        Chimeway(f"sqlite:///{tmp_path / 'x.db'}", schema=SCHEMA)


def test_record_triggers_read_the_applications_table_and_write_chimeways(engine: sa.Engine) -> None:
    rec = RecordingChannel()
    app = Chimeway(engine=engine, schema=SCHEMA, dispatcher="queue", channels={"rec": rec})
    app.migrate()
    with Session(engine) as session, session.begin():
        session.add_all([Order(id=i, customer=f"c{i}") for i in (1, 2, 3)])

    def ship(order: Order, *, session: Session, actor: str) -> None:
        order.notified = True                                    # the application's row
        app.trigger(session, Shipped, {"order": order.id, "customer": f"customer:{order.customer}"},
                    idempotency_key=f"ship-{order.id}")          # and Chimeway's, in one transaction

    app.record_trigger("ship_orders", model=Order, where=Order.notified.is_(False), action=ship, cron=None)
    scanned = app.scan_record_trigger("ship_orders")
    assert (scanned.matched, scanned.enqueued) == (3, 3)
    app.work()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM public.orders WHERE notified")).scalar() == 3
        assert conn.execute(sa.text(f"SELECT count(*) FROM {SCHEMA}.chimeway_events")).scalar() == 3
    assert sorted(m.fields["body"] for m in rec.sent) == [f"Order {i} shipped" for i in (1, 2, 3)]
    assert app.scan_record_trigger("ship_orders").matched == 0

    app.record_trigger("remind", model=Order, notifier=Shipped,
                       params=lambda o: {"order": o.id, "customer": f"customer:{o.customer}"},
                       idempotency_key=lambda o: f"remind-{o.id}", cron=None)
    assert app.scan_record_trigger("remind").matched == 3
    assert app.scan_record_trigger("remind").matched == 3     # the keys are found in Chimeway's schema:
    with engine.connect() as conn:                             # nobody is notified twice
        assert conn.execute(sa.text(f"SELECT count(*) FROM {SCHEMA}.chimeway_events")).scalar() == 6
    app.close()


def test_the_cli_takes_the_schema(engine: sa.Engine) -> None:
    import os
    import subprocess
    import sys

    url = engine.url.render_as_string(hide_password=False)
    env = {**os.environ, "CHIMEWAY_DATABASE_URL": url}
    env.pop("CHIMEWAY_SCHEMA", None)

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "chimeway.cli", *args], capture_output=True, text=True,
                              env={**env, **extra}, timeout=120)

    migrated = cli("migrate", "--schema", SCHEMA)
    assert migrated.returncode == 0, migrated.stderr
    assert "chimeway_jobs" in tables(engine, SCHEMA) and "chimeway_jobs" not in tables(engine, "public")
    counts = cli("jobs", CHIMEWAY_SCHEMA=SCHEMA)
    assert counts.returncode == 0, counts.stderr
    missing = cli("jobs", "--schema", "elsewhere")
    assert missing.returncode != 0
    assert "chimeway migrate" in missing.stderr and "elsewhere" in missing.stderr, missing.stderr


def test_two_apps_with_two_schemas_share_one_engine(engine: sa.Engine) -> None:
    first = Chimeway(engine=engine, schema=SCHEMA, dispatcher="queue", channels={"rec": RecordingChannel()})
    second = Chimeway(engine=engine, schema="other", dispatcher="queue", channels={"rec": RecordingChannel()})
    first.migrate()
    second.migrate()
    place_order(first, engine, 1, "order-1")
    place_order(second, engine, 2, "order-1")                  # the same key: another schema, another event
    place_order(second, engine, 3, "order-3")
    with engine.connect() as conn:
        counts = {s: conn.execute(sa.text(f"SELECT count(*) FROM {s}.chimeway_events")).scalar()
                  for s in (SCHEMA, "other")}
        jobs = {s: conn.execute(sa.text(f"SELECT count(*) FROM {s}.chimeway_jobs")).scalar()
                for s in (SCHEMA, "other")}
    assert counts == {SCHEMA: 1, "other": 2}
    assert jobs == {SCHEMA: 2, "other": 4}
    assert first.work() == 2 and second.work() == 4
    first.close()
    second.close()


def test_without_a_schema_the_callers_own_translate_map_is_left_alone(engine: sa.Engine) -> None:
    # An application that maps schema-less tables itself (a schema per
    # customer, say) keeps doing so for Chimeway's statements in its session.
    Chimeway(engine=engine, schema="customer_7").migrate()
    app = Chimeway(engine=engine, dispatcher="queue", channels={"rec": RecordingChannel()})
    with engine.connect() as conn:
        conn.execution_options(schema_translate_map={None: "customer_7"})
        with conn.begin():
            app.trigger(conn, Shipped, {"order": 1, "customer": "customer:ada"}, idempotency_key="mapped")
        assert conn.get_execution_options()["schema_translate_map"][None] == "customer_7"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM customer_7.chimeway_events")).scalar() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM customer_7.chimeway_jobs")).scalar() == 2
    app.close()
