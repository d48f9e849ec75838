"""The ``Dispatcher`` protocol: how planned deliveries get executed.

Planning is the same for every dispatcher. A dispatcher is told, inside the
caller's transaction, which deliveries were planned; it arranges for them to
be executed once that transaction commits — in-process (``sync``), through
the job queue (``queue``), or through another engine (an outbox relay).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from chimeway.values import Message

__all__ = ["Dispatcher", "Due"]


@dataclass(frozen=True)
class Due:
    """A delivery to execute, and when it is due (``None``: now).

    Args:
        id: the delivery id.
        not_before: the earliest time to send (quiet hours, retry backoff).
        checked: the planning checkpoint passed it in the transaction that
            just committed; a dispatcher that sends it right after that
            commit may skip the pre-send checkpoint (nothing could have
            changed in between that the planning pass did not see).
        message: set when the delivery was written already claimed under the
            dispatcher's ``planning_lease`` (``dispatched``, attempt 1): the
            message to send, so the dispatcher need not read it back.
    """

    id: uuid.UUID
    not_before: datetime | None = None
    checked: bool = False
    message: Message | None = None


class Dispatcher(Protocol):
    """Executes planned deliveries.

    Implementations get the caller's ``Session``/``Connection`` in
    :meth:`planned` and must not commit it. A dispatcher may also define
    ``bind(app)``, which ``Chimeway`` calls once with itself, set
    ``rescues_itself = True`` when it re-drives sends whose lease ran out on
    its own, and list in ``plugins`` what the app's workers must run for it
    (the Celery dispatcher does all three). One that sends in the committing
    process right after the commit may define ``planning_lease(conn)``,
    returning a :class:`~chimeway.deliveries.PlannedLease` (or ``None``): the
    deliveries the planning checkpoint passed are then written already
    claimed under it, and :meth:`planned` gets their messages (the ``sync``
    dispatcher does).
    """

    name: str

    def planned(self, target: Session | Connection, conn: Connection, deliveries: Sequence[Due]) -> None:
        """Called inside the caller's transaction with the deliveries to execute.

        Args:
            target: what the caller passed to ``trigger`` (for after-commit hooks).
            conn: the caller's connection, inside its transaction.
            deliveries: the ``pending`` and ``deferred`` deliveries just planned.
        """
        ...

    def redrive(self, deliveries: Sequence[Due]) -> int:
        """Execute deliveries again outside any caller transaction (``recover()``)."""
        ...
