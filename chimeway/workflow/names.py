"""The workflow engine's queues and job names (stored in job rows: stable strings)."""

from __future__ import annotations

__all__ = ["PROGRESS_WORKER", "SIGNAL_QUEUE", "SIGNAL_WORKER", "WORKFLOW_QUEUE"]

WORKFLOW_QUEUE = "chimeway_workflows"
PROGRESS_WORKER = "chimeway.workflow.ProgressionWorker"
SIGNAL_QUEUE = "chimeway_signals"
SIGNAL_WORKER = "chimeway.workflow.SignalRouterWorker"
