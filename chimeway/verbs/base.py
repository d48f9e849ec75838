"""What every group of verbs can rely on: the attributes ``Chimeway`` sets up."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from chimeway.channels.base import Channel
from chimeway.clock import Clock
from chimeway.cron import ScheduledNotifiers, Scheduler
from chimeway.dispatch.base import Dispatcher
from chimeway.inbox_live import InboxHub
from chimeway.policy import Policy
from chimeway.queue import JobQueue
from chimeway.queue.plugins import Pruner
from chimeway.record_triggers import RecordTriggers
from chimeway.workflow.service import Workflows

__all__ = ["AppBase"]


class AppBase:
    """Declares the state ``Chimeway.__init__`` creates, for the verb groups' type checking."""

    engine: Engine
    clock: Clock
    channels: dict[str, Channel]
    queue: JobQueue
    pruner: Pruner
    dispatcher: Dispatcher
    policy: Policy
    workflows: Workflows
    scheduler: Scheduler
    scheduled_notifiers: ScheduledNotifiers
    record_triggers: RecordTriggers
    inbox_hub: InboxHub | None
