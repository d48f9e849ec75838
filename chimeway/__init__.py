"""Chimeway: durable, explainable notifications in your own database and transaction."""

from chimeway.app import Chimeway
from chimeway.errors import ChimewayError
from chimeway.explain import Explanation, TimelineEntry, Trace
from chimeway.inbox import Inbox, InboxItem, InboxPage
from chimeway.notifier import Notifier
from chimeway.planning import TriggerResult
from chimeway.values import DeliveryResult, Feedback, Message, Recipient

__all__ = [
    "Chimeway",
    "ChimewayError",
    "DeliveryResult",
    "Explanation",
    "Feedback",
    "Inbox",
    "InboxItem",
    "InboxPage",
    "Message",
    "Notifier",
    "Recipient",
    "TimelineEntry",
    "Trace",
    "TriggerResult",
]

__version__ = "0.1.0"
