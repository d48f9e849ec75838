"""Delivery policy: preferences, dedupe, digests, quiet hours and caps.

The same rules, listed once as objects (:mod:`chimeway.policy.rules`), run
at two checkpoints through one evaluator (:class:`Policy`):

- ``planning``: inside the caller's transaction, after the event is known
  not to be a duplicate and before the deliveries are written;
- ``before_send``: inside the executor's claim transaction, because
  preferences and quiet hours may have changed since planning.

Rules run in this order for each delivery; the first one that stops it wins:

1. **preferences** — opted out ⇒ ``suppressed`` (``opted_out``). A
   ``critical`` notifier bypasses opt-outs.
2. **dedupe** — same notifier + recipient + dedupe key within the window ⇒
   ``suppressed`` (``duplicate``). Planning only.
3. **digest** — collected into a batch ⇒ the first delivery is ``deferred``
   (``digest``) and carries the digest; the others are ``suppressed``
   (``digested``). See :mod:`chimeway.digest`.
4. **quiet hours** — inside the recipient's local window ⇒ ``deferred``
   (``quiet_hours``) until it ends; never dropped. ``critical`` bypasses it;
   channels in ``quiet_hours_exempt`` (``in_app``) are never held.
5. **caps** — at most N deliveries per recipient × channel per sliding
   window ⇒ ``suppressed`` (``cap_reached``). ``critical`` bypasses it. A
   delivery is counted once: at planning, or before sending if it was
   deferred or planned without the planning checkpoint.

Then email deliveries get an ``unsubscribe_url`` field when an unsubscribe
base URL and secret are configured.

Every decision is a :class:`chimeway.decisions.Decision` recorded as a row
(checkpoint, rule, reason, summary and the rule's inputs) that
``app.explain()`` shows.
"""

from __future__ import annotations

from chimeway.digest import Digest
from chimeway.policy.bookkeeping import DEFAULT_KEEP, policy_targets, prune
from chimeway.policy.core import Policy, PreviewItem, preview
from chimeway.policy.options import Cap, Dedupe, caps_of, dedupe_of

__all__ = [
    "DEFAULT_KEEP",
    "Cap",
    "Dedupe",
    "Digest",
    "Policy",
    "PreviewItem",
    "caps_of",
    "dedupe_of",
    "policy_targets",
    "preview",
    "prune",
]
