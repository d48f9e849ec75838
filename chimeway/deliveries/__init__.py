"""The one owner of delivery state: statuses, allowed transitions, leases.

Every change of a delivery's ``status`` goes through a function of this
module, the way a job queue's engine declares every job transition. Writers
name the statuses they move *from*; :func:`check_transition` refuses any
move the table below does not allow, so a new writer cannot invent one::

    pending ─────┐                 ┌─▶ succeeded ──▶ cancelled (provider bounce)
    failed  ─────┼─ claim ─▶ dispatched ─▶ failed (retry at not_before)
    deferred ────┘      ▲          ├─▶ cancelled (permanent, bounced, retries exhausted)
                        │          └─▶ pending (its lease expired: re-driven)
                        └──── lease expired, re-claimed through pending

    pending / failed / deferred ─▶ deferred | suppressed | cancelled (policy, digests, workflows)
    failed / cancelled ─▶ pending (an operator sends it again: :func:`resend`)

Final statuses are ``succeeded``, ``cancelled`` and ``suppressed``.

A ``dispatched`` delivery is a *lease*: ``lease_holder`` names the process
sending it and ``lease_expires_at`` says until when. The holder extends the
lease while the send is in flight (:class:`chimeway.dispatch.executor.LeaseKeeper`);
when the holder dies the lease runs out and :func:`release_expired` puts the
delivery back to ``pending`` (or ``cancelled`` once its attempts are spent),
with a ``lease_expired`` decision that ``explain`` shows.
"""

from __future__ import annotations

from chimeway.deliveries.leases import (
    ClaimedRow,
    Released,
    claim,
    extend_leases,
    record,
    release_expired,
)
from chimeway.deliveries.planned import PlannedDelivery, PlannedLease, decide, new_rows
from chimeway.deliveries.states import (
    CLAIMABLE,
    FINAL,
    INITIAL,
    TRANSITIONS,
    Status,
    check_transition,
)
from chimeway.deliveries.writes import (
    RESENDABLE,
    apply_decision,
    cancel,
    note,
    replace_message,
    resend,
)

__all__ = [
    "CLAIMABLE",
    "FINAL",
    "INITIAL",
    "RESENDABLE",
    "TRANSITIONS",
    "ClaimedRow",
    "PlannedDelivery",
    "PlannedLease",
    "Released",
    "Status",
    "apply_decision",
    "cancel",
    "check_transition",
    "claim",
    "decide",
    "extend_leases",
    "new_rows",
    "note",
    "record",
    "release_expired",
    "replace_message",
    "resend",
]
