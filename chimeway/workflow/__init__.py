"""Workflows: multi-step journeys with waits, escalation and stop-on-signal.

::

    from chimeway.workflow import deliver, wait

    class Mention(Notifier):
        key = "mention"
        workflow = [
            deliver("in_app"),
            wait(minutes=30, unless="notification.read"),
            deliver("email"),
        ]

One run per notification follows the steps; ``app.explain_run(run_id)``
shows every transition and its reason. See guides/workflows.md.

This package's top only holds the steps and what reads them; the engine
(``chimeway.workflow.service``) sits above the planner and the dispatchers.
"""

from __future__ import annotations

from chimeway.workflow.explain import RunExplanation, RunTransition
from chimeway.workflow.names import PROGRESS_WORKER, SIGNAL_QUEUE, SIGNAL_WORKER, WORKFLOW_QUEUE
from chimeway.workflow.steps import (
    OUTCOMES,
    Deliver,
    Goto,
    Step,
    Stop,
    Wait,
    deliver,
    goto,
    stop,
    validate_workflow,
    wait,
)

__all__ = [
    "OUTCOMES",
    "PROGRESS_WORKER",
    "SIGNAL_QUEUE",
    "SIGNAL_WORKER",
    "WORKFLOW_QUEUE",
    "Deliver",
    "Goto",
    "RunExplanation",
    "RunTransition",
    "Step",
    "Stop",
    "Wait",
    "deliver",
    "goto",
    "stop",
    "validate_workflow",
    "wait",
]
