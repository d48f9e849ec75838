"""Chimeway: durable, explainable notifications in your own database and transaction."""

from chimeway.app import Chimeway
from chimeway.digest import Digest
from chimeway.errors import ChimewayError
from chimeway.explain import Explanation, TimelineEntry, Trace
from chimeway.inbox import Inbox, InboxItem, InboxPage
from chimeway.inbox_live import InboxChange
from chimeway.notifier import Notifier
from chimeway.planning import TriggerRequest, TriggerResult
from chimeway.policy import Cap, Dedupe, PreviewItem
from chimeway.queue import Cancel, JobEvent, JobInfo, Retry, Snooze
from chimeway.retention import Retention
from chimeway.traces import OutcomeCount, Outcomes, TracePage
from chimeway.values import DeliveryResult, Feedback, Message, Recipient

__all__ = [
    "Cancel",
    "Cap",
    "Chimeway",
    "ChimewayError",
    "Dedupe",
    "DeliveryResult",
    "Digest",
    "Explanation",
    "Feedback",
    "Inbox",
    "InboxChange",
    "InboxItem",
    "InboxPage",
    "JobEvent",
    "JobInfo",
    "Message",
    "Notifier",
    "OutcomeCount",
    "Outcomes",
    "PreviewItem",
    "Recipient",
    "Retention",
    "Retry",
    "Snooze",
    "TimelineEntry",
    "Trace",
    "TracePage",
    "TriggerRequest",
    "TriggerResult",
]

__version__ = "0.1.0"
