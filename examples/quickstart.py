"""Chimeway in one file: define a notifier, trigger it in your transaction, deliver, explain.

Run it with no setup (it uses the embedded SQLite file ./chimeway.db):

    .venv/bin/python examples/quickstart.py

It starts a small webhook receiver on 127.0.0.1 (standing in for your
customer's endpoint), which checks each request's Standard Webhooks signature.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from chimeway import Chimeway, Notifier, Recipient
from chimeway.channels import InApp, Webhook, verify_webhook
from chimeway.errors import SignatureError

SECRET = "whsec_" + "c2VjcmV0LWtleS1mb3ItdGhlLXF1aWNrc3RhcnQ="  # base64 of the signing key


# --- your application's own model ------------------------------------------------
class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "quickstart_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int]
    status: Mapped[str]


# --- a notifier: who, over which channels, saying what -------------------------
class OrderShipped(Notifier):
    key = "order_shipped"
    version = 1
    category = "orders"
    channels = ["in_app", "webhook"]
    templates = {
        "in_app": {"title": "Order {{ order_id }} shipped", "body": "Track it at {{ url }}"},
        "webhook": {"body": "order {{ order_id }} shipped"},
    }

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"user:{params['user_id']}", email=params.get("email"))]


# --- a webhook receiver, as your customer would run it -------------------------
received: list[dict[str, Any]] = []


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            payload = verify_webhook(body, dict(self.headers), SECRET)
        except SignatureError as exc:
            self.send_response(401)
            self.end_headers()
            self.wfile.write(str(exc).encode())
            return
        received.append({"webhook-id": self.headers["webhook-id"], **payload})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def chimeway_command() -> str:
    """The ``chimeway`` command as this shell can run it.

    pip installs the console script next to the interpreter (``.venv/bin``),
    which is not on PATH unless the virtualenv is activated.
    """
    bin_dir = Path(sys.executable).parent
    script = bin_dir / ("chimeway.exe" if os.name == "nt" else "chimeway")
    on_path = shutil.which("chimeway")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "chimeway"
    if not script.exists():
        return f"{sys.executable} -m chimeway.cli"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hooks"

    app = Chimeway(  # database_url defaults to sqlite:///chimeway.db
        dispatcher="sync",
        channels={"in_app": InApp(), "webhook": Webhook(url=url, secret=SECRET)},
    )
    app.migrate()
    Base.metadata.create_all(app.engine)

    with Session(app.engine) as session:
        order_id = (session.scalar(sa.select(sa.func.max(Order.id))) or 0) + 1

    # 1. A rolled-back transaction leaves nothing behind and sends nothing.
    with Session(app.engine) as session:
        session.begin()
        session.add(Order(id=order_id, user_id=42, status="shipped"))
        app.trigger(session, OrderShipped, {"order_id": order_id, "user_id": 42, "url": "https://example.test/t"},
                    idempotency_key=f"order-{order_id}-shipped")
        session.rollback()
    print(f"rolled back: webhook requests received = {len(received)}")

    # 2. The same, committed: Chimeway delivers right after your commit.
    with Session(app.engine) as session, session.begin():
        session.add(Order(id=order_id, user_id=42, status="shipped"))
        result = app.trigger(session, OrderShipped,
                             {"order_id": order_id, "user_id": 42, "url": f"https://example.test/t/{order_id}"},
                             idempotency_key=f"order-{order_id}-shipped", tenant="acme", actor="warehouse")

    # 3. Triggering the same event again (same key, same params) is a no-op.
    with Session(app.engine) as session, session.begin():
        again = app.trigger(session, OrderShipped,
                            {"order_id": order_id, "user_id": 42, "url": f"https://example.test/t/{order_id}"},
                            idempotency_key=f"order-{order_id}-shipped", tenant="acme", actor="warehouse")
    print(f"committed: event {result.event_id}, {len(result.delivery_ids)} deliveries; "
          f"same key again → duplicate={again.duplicate}")
    print(f"webhook receiver got {len(received)} signed request(s):")
    for request in received:
        print(f"  webhook-id={request['webhook-id']} type={request['type']} body={request['data']['fields']['body']!r}")

    inbox = app.inbox("user:42", tenant="acme")
    print(f"\ninbox of user:42 ({inbox.unread_count()} unread):")
    for item in inbox.list(limit=5).items:
        print(f"  {item.created_at:%H:%M:%S}  {item.title} — {item.body}" + ("" if item.read_at else "  [unread]"))

    print("\nwhy each delivery did what it did:")
    for delivery_id in result.delivery_ids:
        print(app.explain(delivery_id))
    print(f"\n(the same from a shell: {chimeway_command()} explain {result.delivery_ids[-1]})")
    server.shutdown()
    app.close()


if __name__ == "__main__":
    main()
