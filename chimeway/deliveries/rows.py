"""The one shape of a decision row (``chimeway_delivery_decisions``)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from chimeway.ids import new_id

__all__ = ["decision_row"]


def decision_row(delivery_id: uuid.UUID, at: datetime, event: str, checkpoint: str | None,
                  detail: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": new_id(), "delivery_id": delivery_id, "at": at, "event": event,
            "checkpoint": checkpoint, "detail": dict(detail)}
