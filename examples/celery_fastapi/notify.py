"""The shop's notifications: one Celery app and one Chimeway app, imported by the API and the workers.

Run the workers and the beat scheduler (from the ``examples`` folder)::

    celery -A celery_fastapi.notify worker -Q notifications,chimeway -l INFO
    celery -A celery_fastapi.notify beat -l INFO

The API (``celery_fastapi.api``) imports this module too: it commits orders
and their notifications in one transaction; the workers deliver them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from celery import Celery

from chimeway import Chimeway, Notifier, Recipient
from chimeway.channels import Webhook
from chimeway.dispatch.celery import CeleryDispatcher


class OrderPlaced(Notifier):
    """The customer's inbox gets a line; the warehouse's webhook gets the order."""

    key = "shop.order_placed"
    category = "orders"
    channels = ["in_app", "webhook"]
    templates = {
        "in_app": {"title": "Order {{ order_id }} received", "body": "Total {{ total }}"},
        "webhook": {"body": "order {{ order_id }} for {{ customer }}: {{ total }}"},
    }

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"customer:{params['customer']}")]


def build(database_url: str, broker_url: str, webhook_url: str, webhook_secret: str, *,
          queue: str = "notifications", relay_queue: str = "chimeway") -> tuple[Celery, Chimeway]:
    """The Celery app and the Chimeway app that dispatches through it.

    Deliveries go to the ``queue`` Celery queue; the relay, rescue and
    Chimeway's other background work go to ``relay_queue``, so a backlog of
    deliveries never holds them up.
    """
    celery_app = Celery("shop", broker=broker_url)
    celery_app.conf.update(
        broker_connection_retry_on_startup=True,
        # Deliveries spend their time waiting on providers: a small prefetch
        # keeps waiting tasks in the broker, where any worker can take them.
        worker_prefetch_multiplier=4,
    )
    chimeway = Chimeway(
        database_url,
        dispatcher=CeleryDispatcher(celery_app, queue=queue, relay_queue=relay_queue),
        channels={"webhook": Webhook(url=webhook_url, secret=webhook_secret)},
    )
    return celery_app, chimeway


celery_app, chimeway = build(
    os.environ.get("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/shop"),
    os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    os.environ.get("WAREHOUSE_WEBHOOK_URL", "http://127.0.0.1:9000/orders"),
    os.environ.get("WAREHOUSE_WEBHOOK_SECRET", "whsec_" + "c2hvcC1leGFtcGxlLXNob3AtZXhhbXBsZQ=="),
    queue=os.environ.get("NOTIFY_QUEUE", "notifications"),
    relay_queue=os.environ.get("CHIMEWAY_QUEUE", "chimeway"),
)
