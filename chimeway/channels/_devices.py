"""What push channels share: one outcome for a message sent to several devices, and token hints."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from chimeway.values import DeliveryResult

__all__ = ["combine_devices", "data_object", "token_hint"]


def data_object(raw: Any) -> Mapping[str, Any]:
    """A push's custom ``data`` field as a mapping: rendered templates give JSON text, callers a dict.

    Raises:
        ValueError: the value is not a JSON object.
    """
    if raw is None or raw == "":
        return {}
    value = json.loads(raw) if isinstance(raw, str | bytes) else raw
    if not isinstance(value, Mapping):
        raise ValueError("data must be a JSON object")
    return value


def token_hint(token: str) -> str:
    # Device tokens identify a person's phone; show only enough to tell them apart.
    return f"…{token[-6:]}" if len(token) > 6 else "…"


def combine_devices(results: list[DeliveryResult]) -> DeliveryResult:
    """One outcome for a fan-out to several devices."""
    if len(results) == 1:
        return results[0]
    succeeded = [r for r in results if r.outcome == "succeeded"]
    failed = [r for r in results if r.outcome != "succeeded"]
    notes = "; ".join(r.detail or r.outcome for r in failed)
    if succeeded:
        # Retrying would re-notify the devices that already got the message.
        detail = f"sent to {len(succeeded)} of {len(results)} devices"
        return DeliveryResult.ok(
            provider_message_id=succeeded[0].provider_message_id,
            detail=f"{detail}; {notes}" if notes else detail,
        )
    temporary = [r for r in failed if r.outcome == "temporary"]
    if temporary:
        delays = [r.retry_after for r in temporary if r.retry_after is not None]
        return DeliveryResult.temporary(
            f"no device accepted the message: {notes}",
            error_class=temporary[0].error_class,
            vendor_code=temporary[0].vendor_code,
            retry_after=max(delays) if delays else None,
        )
    first = failed[0]
    return DeliveryResult(
        outcome=first.outcome,
        detail=f"no device accepted the message: {notes}",
        error_class=first.error_class,
        vendor_code=first.vendor_code,
    )
