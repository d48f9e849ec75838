"""Orders over HTTP: the order row and its notification commit together, Celery delivers.

Run it (from the ``examples`` folder, with the workers of ``notify.py``)::

    uvicorn --factory celery_fastapi.api:create_api

``POST /orders`` stores the order and triggers ``OrderPlaced`` in the same
transaction: a request that fails leaves neither, and nothing is published
to Celery. After the commit one task per delivery goes to RabbitMQ.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime.
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import Numeric, String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from chimeway import Chimeway
from chimeway.errors import NotFoundError


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "example_orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String(100))
    total: Mapped[float] = mapped_column(Numeric(10, 2))


class NewOrder(BaseModel):
    customer: str = Field(pattern=r"^\w{1,100}$")
    total: float = Field(gt=0)


def create_api(chimeway: Chimeway | None = None) -> FastAPI:
    """Build the API around ``chimeway`` (default: the one ``notify.py`` builds)."""
    if chimeway is None:
        from celery_fastapi.notify import chimeway
    from celery_fastapi.notify import OrderPlaced

    Base.metadata.create_all(chimeway.engine)
    chimeway.migrate()
    api = FastAPI(title="Shop")

    # Plain `def` endpoints run in FastAPI's thread pool: the sync session
    # and the publish after commit never block the event loop.
    @api.post("/orders", status_code=201)
    def place_order(new: NewOrder) -> dict[str, Any]:
        with Session(chimeway.engine) as session, session.begin():
            order = Order(customer=new.customer, total=new.total)
            session.add(order)
            session.flush()
            order_id = order.id
            if new.customer == "nobody":
                # Raised inside the transaction: the order and its notification roll back.
                raise HTTPException(422, "orders for 'nobody' are refused")
            result = chimeway.trigger(session, OrderPlaced,
                                      {"order_id": order_id, "customer": new.customer, "total": f"{new.total:.2f}"},
                                      idempotency_key=f"order-{order_id}-placed")
        return {"id": order_id, "deliveries": [str(i) for i in result.delivery_ids]}

    @api.get("/deliveries/{delivery_id}")
    def delivery(delivery_id: str) -> dict[str, Any]:
        try:
            x = chimeway.explain(delivery_id)
        except NotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        return {"status": x.status, "reason": x.reason,
                "timeline": [{"at": t.at.isoformat(), "event": t.event, **t.detail} for t in x.timeline]}

    return api
