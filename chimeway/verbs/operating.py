"""Operator verbs: sending a delivery again, deleting what is past its age."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from chimeway import deliveries
from chimeway.db import writer
from chimeway.deliveries import RESENDABLE
from chimeway.dispatch.base import Due
from chimeway.errors import InvalidInputError, NotFoundError
from chimeway.ids import as_uuid
from chimeway.models import deliveries_table
from chimeway.verbs.base import AppBase

__all__ = ["RESENDABLE", "OperatingVerbs"]


class OperatingVerbs(AppBase):
    """What an operator does to a delivery by hand."""

    def resend(self, delivery_id: uuid.UUID | str, *, by: str | None = None) -> None:
        """Send a ``failed`` or ``cancelled`` delivery again, now, with one more attempt.

        The delivery goes back to ``pending`` with a ``resent`` decision that
        ``explain`` shows, and the dispatcher sends it (the queue dispatcher
        enqueues a new job). A suppressed delivery stays suppressed (the
        recipient's preferences or a cap decided it), and a workflow's
        delivery is not sent again (its run has moved on).

        Args:
            delivery_id: the delivery.
            by: who asked (recorded in the decision).

        Raises:
            NotFoundError: no delivery has that id.
            InvalidInputError: the delivery is not failed or cancelled, or belongs to a workflow run.
        """
        did = as_uuid(delivery_id, name="delivery_id")
        d = deliveries_table
        with writer(self.engine).begin() as conn:
            row = conn.execute(sa.select(d.c.status, d.c.step).where(d.c.id == did)).first()
            if row is None:
                raise NotFoundError(f"no delivery with id {did}")
            if row.step is not None:
                raise InvalidInputError(
                    f"delivery {did} is step {row.step} of a workflow run; workflow steps are not sent again")
            left = deliveries.resend(conn, did, now=self.clock.now(), detail={"by": by} if by else {})
            if left is None:
                raise InvalidInputError(
                    f"delivery {did} is {row.status}; only failed or cancelled deliveries can be sent again")
        self.dispatcher.redrive([Due(did)])

    def prune(self) -> dict[str, int]:
        """Delete every row past its retention age now, however many there are.

        The same pass every worker's ``pruner`` plugin runs each minute
        (bounded by ``Retention.time_limit`` there), here without a time
        limit: it ends when nothing is left past its age. Each batch is a
        transaction of its own, so triggers and sends go on meanwhile.

        Returns:
            rows deleted per table.
        """
        return self.pruner.prune(self.clock.now())
