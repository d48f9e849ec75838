"""The FastAPI + Celery example: an order over HTTP, delivered by a real Celery worker on RabbitMQ."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from celery_support import RABBITMQ, delete_queues, message_count, require_broker, stop
from fastapi.testclient import TestClient
from faults import Receiver, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

from celery_fastapi.api import Order, create_api
from celery_fastapi.notify import build

pytestmark = pytest.mark.postgres

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_an_order_is_notified_through_a_celery_worker_and_a_refused_one_publishes_nothing(
    pg_empty_url: str, tmp_path: Path,
) -> None:
    broker = require_broker(RABBITMQ)
    receiver = Receiver()
    queues = {"NOTIFY_QUEUE": f"shop_{uuid.uuid4().hex[:8]}", "CHIMEWAY_QUEUE": f"shop_cw_{uuid.uuid4().hex[:8]}"}
    secret = "whsec_" + "ZXhhbXBsZS10ZXN0LWV4YW1wbGUtdGVzdA=="
    _, chimeway = build(pg_empty_url, broker, receiver.url, secret, queue=queues["NOTIFY_QUEUE"],
                        relay_queue=queues["CHIMEWAY_QUEUE"])
    worker: subprocess.Popen[bytes] | None = None
    try:
        client = TestClient(create_api(chimeway))
        refused = client.post("/orders", json={"customer": "nobody", "total": 5})
        assert refused.status_code == 422
        with chimeway.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(Order)).scalar() == 0
        assert message_count(broker, queues["NOTIFY_QUEUE"]) == 0

        placed = client.post("/orders", json={"customer": "ada", "total": 12.5})
        assert placed.status_code == 201, placed.text
        deliveries = placed.json()["deliveries"]
        assert message_count(broker, queues["NOTIFY_QUEUE"]) == len(deliveries) == 2

        env = {**os.environ, **queues, "DATABASE_URL": pg_empty_url, "BROKER_URL": broker,
               "WAREHOUSE_WEBHOOK_URL": receiver.url, "WAREHOUSE_WEBHOOK_SECRET": secret}
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_fastapi.notify", "worker",
             "-Q", f"{queues['NOTIFY_QUEUE']},{queues['CHIMEWAY_QUEUE']}", "-P", "threads", "-c", "4",
             "-n", "shop@%h", "--without-gossip", "--without-mingle", "-l", "WARNING"],
            cwd=str(EXAMPLES), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        wait_for(lambda: all(client.get(f"/deliveries/{d}").json()["status"] == "succeeded" for d in deliveries),
                 60, "the order's notifications")
        assert sum(receiver.counts.values()) == 1      # the webhook; the other one is the in-app inbox
        timeline = client.get(f"/deliveries/{deliveries[1]}").json()["timeline"]
        picked = [t for t in timeline if t["event"] == "celery_task"]
        assert len(picked) == 1 and picked[0]["worker"].startswith("shop@")
        assert chimeway.inbox("customer:ada").unread_count() == 1
    finally:
        if worker is not None:
            stop(worker)
        delete_queues(broker, *queues.values())
        chimeway.close()
        receiver.close()
