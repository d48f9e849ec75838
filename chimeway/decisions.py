"""One decision type: what a rule decided about a delivery, and why.

Every checkpoint speaks it — the policy rules at planning and before send,
digests, channel validation, workflows, operators' actions — and
:mod:`chimeway.deliveries` is the one writer that turns it into a status
change and a ``chimeway_delivery_decisions`` row, which ``explain`` reads::

    Decision(status="deferred", reason="quiet_hours", rule="quiet_hours",
             summary="deferred: quiet hours 22:00-07:00 Europe/Paris, until 07:00",
             until=..., inputs={"timezone": "Europe/Paris", ...})

A decision with ``status="pending"`` lets the delivery through and is kept
only to explain why (a critical notifier past an opt-out, a digest sent
early): its row's event is ``allowed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["ALLOWED", "Decision"]

ALLOWED = "allowed"


@dataclass(frozen=True, kw_only=True)
class Decision:
    """One rule's decision about one delivery.

    Args:
        status: the delivery's status from now on: ``suppressed`` or
            ``cancelled`` (final), ``deferred`` (due again at ``until``), or
            ``pending`` (let through; recorded to explain why).
        reason: the stored reason, e.g. ``opted_out`` or ``quiet_hours``.
        rule: the rule that decided (``preferences``, ``digest``, ...).
        summary: one readable sentence for ``explain``.
        until: when a deferred delivery is due again.
        inputs: what the rule looked at (JSON values).
        event_name: the decision row's event for a decision that lets the
            delivery through, when ``allowed`` says too little (``digest_flushed``).
    """

    status: str
    reason: str
    rule: str | None = None
    summary: str | None = None
    until: datetime | None = None
    inputs: Mapping[str, Any] = field(default_factory=dict)
    event_name: str | None = None

    @property
    def stops(self) -> bool:
        """Whether the delivery stops here (anything but ``pending``)."""
        return self.status != "pending"

    @property
    def event(self) -> str:
        """The decision row's event: the new status, or ``allowed`` (or ``event_name``)."""
        if self.stops:
            return self.status
        return self.event_name or ALLOWED

    def detail(self) -> dict[str, Any]:
        """The decision row's detail: rule, reason, summary, the inputs, ``until``."""
        out: dict[str, Any] = {}
        if self.rule is not None:
            out["rule"] = self.rule
        out["reason"] = self.reason
        if self.summary is not None:
            out["summary"] = self.summary
        out.update(self.inputs)
        if self.until is not None:
            out["until"] = self.until.isoformat()
        return out
