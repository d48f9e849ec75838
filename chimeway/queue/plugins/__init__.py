"""Plugins: the periodic work every worker does besides running jobs (Oban's model).

Each is a small object with a ``name``, an ``interval`` and ``run(now)``
(one pass; returns how much it handled), testable alone with a fake clock.
A ``JobQueue`` runs :class:`Lifeline` and a :class:`Pruner` of finished jobs;
a ``Chimeway`` app adds its own (see ``app.plugins``). Workers run each
plugin on its own thread and log a failed pass without stopping.
"""

from __future__ import annotations

from chimeway.queue.plugins.base import Periodic, Plugin, check_plugins
from chimeway.queue.plugins.heartbeat import Heartbeat
from chimeway.queue.plugins.lifeline import Lifeline
from chimeway.queue.plugins.pruner import (
    DEFAULT_JOB_AGES,
    AgePrune,
    PruneBatch,
    Pruner,
    PruneTarget,
    job_targets,
)

__all__ = [
    "DEFAULT_JOB_AGES",
    "AgePrune",
    "Heartbeat",
    "Lifeline",
    "Periodic",
    "Plugin",
    "PruneBatch",
    "PruneTarget",
    "Pruner",
    "check_plugins",
    "job_targets",
]
