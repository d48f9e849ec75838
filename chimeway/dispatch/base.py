"""The ``Dispatcher`` protocol: how planned deliveries get executed.

Planning is the same for every dispatcher. A dispatcher is told, inside the
caller's transaction, which deliveries were planned; it arranges for them to
be executed once that transaction commits — in-process (``sync``), through
the job queue (``queue``), or through another engine (an outbox relay).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

__all__ = ["Dispatcher"]


class Dispatcher(Protocol):
    """Executes planned deliveries.

    Implementations get the caller's ``Session``/``Connection`` in
    :meth:`planned` and must not commit it.
    """

    name: str

    def planned(
        self, target: Session | Connection, conn: Connection, delivery_ids: Sequence[uuid.UUID]
    ) -> None:
        """Called inside the caller's transaction with the deliveries to execute.

        Args:
            target: what the caller passed to ``trigger`` (for after-commit hooks).
            conn: the caller's connection, inside its transaction.
            delivery_ids: the ``pending`` deliveries just planned.
        """
        ...

    def redrive(self, delivery_ids: Sequence[uuid.UUID]) -> int:
        """Execute deliveries again outside any caller transaction (``recover()``)."""
        ...
