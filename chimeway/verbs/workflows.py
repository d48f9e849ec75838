"""Signals and workflow runs: track, progress, cancel, explain."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from chimeway.db import tenant_key, translated
from chimeway.errors import NotFoundError
from chimeway.verbs.base import AppBase
from chimeway.workflow.explain import RunExplanation, explain_run

__all__ = ["WorkflowVerbs"]


class WorkflowVerbs(AppBase):
    """Signals and workflow runs: track, progress, cancel, explain."""

    def track(
        self,
        session: Session | Connection,
        name: str,
        *,
        actor: str,
        tenant: str | None = None,
        payload: Mapping[str, Any] | None = None,
        notification_id: uuid.UUID | str | None = None,
    ) -> uuid.UUID:
        """Record a signal in the caller's transaction; runs waiting for it react once it commits.

        With the queue dispatcher a ``SignalRouterWorker`` job is enqueued in
        the same transaction; otherwise the signal is routed after the commit.

        Args:
            session: the caller's ``Session`` or ``Connection``, in a transaction.
            name: the signal name, e.g. ``"notification.read"``.
            actor: who did it; matched against the runs' recipient ids.
            tenant: the tenant, or ``None``.
            payload: JSON details (redacted like params).
            notification_id: only the run of this notification.

        Returns:
            the signal's id.
        """
        with translated("track"):
            return self.workflows.signals.track(session, name, actor=actor, tenant=tenant, payload=payload,
                                                notification_id=notification_id)

    def progress_due(self, *, limit: int = 500, stale_after: timedelta = timedelta(seconds=60)) -> int:
        """Advance every workflow run that is due (the ``ProgressionWorker`` sweep).

        Schedule it periodically (e.g. every minute) as a safety net: runs also
        advance on their own when a wait's job runs, a delivery becomes final
        or a signal arrives.

        Args:
            limit: runs per transaction.
            stale_after: how long an ``active`` run with final deliveries, or an
                unrouted signal, may sit before the sweep takes it over.

        Returns:
            how many runs advanced.
        """
        return self.workflows.progress_due(limit=limit, stale_after=stale_after)

    def progress_run(self, run_id: uuid.UUID | str, *, step: int | None = None) -> bool:
        """Advance one run if its wait is due or its step is done; racing callers advance it once.

        Args:
            run_id: the run.
            step: only if the run is still at this step.

        Returns:
            whether this call advanced the run.
        """
        return self.workflows.progress(run_id, step=step)

    def cancel_run(
        self,
        run_id: uuid.UUID | str | None = None,
        *,
        notification_id: uuid.UUID | str | None = None,
        cancellation_key: str | None = None,
        tenant: str | None = None,
    ) -> int:
        """Cancel workflow runs that are still active or waiting, and their unsent deliveries.

        Args:
            run_id: one run.
            notification_id: the run of one notification.
            cancellation_key: every run of events triggered with this ``cancellation_key``.
            tenant: with ``cancellation_key``, only this tenant.

        Returns:
            how many runs were cancelled.
        """
        return self.workflows.cancel(run_id=run_id, notification_id=notification_id,
                                     cancellation_key=cancellation_key, tenant=tenant)

    def explain_run(
        self, run_id: uuid.UUID | str | None = None, *, notification_id: uuid.UUID | str | None = None,
        tenant: str | None = None,
    ) -> RunExplanation:
        """A workflow run's steps and transitions: why it waited, what stopped it, where it branched.

        Args:
            run_id: the run.
            notification_id: explain the run of this notification instead.
            tenant: when given, a run of another tenant is not found (``NotFoundError``).
        """

        with self.engine.connect() as conn:
            found = explain_run(conn, run_id, notification_id=notification_id)
        # Reported like a missing run, so a tenant cannot learn that an id exists elsewhere.
        if tenant is not None and (found.tenant or "") != tenant_key(tenant):
            raise NotFoundError(f"no workflow run for {run_id or notification_id}")
        return found

    @staticmethod
    def _chain_final(
        first: Callable[..., None] | None, second: Callable[..., None]
    ) -> Callable[..., None]:
        # Another layer may already listen for final deliveries: call both.
        if first is None:
            return second

        def both(outcomes: Any) -> None:
            first(outcomes)
            second(outcomes)

        return both
