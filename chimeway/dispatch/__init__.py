"""Dispatchers: ``sync`` (in-process after commit) and ``queue`` (the job queue)."""

from chimeway.dispatch.base import Dispatcher, Due
from chimeway.dispatch.executor import DeliveryOutcome, Executor
from chimeway.dispatch.sync import SyncDispatcher

__all__ = ["DeliveryOutcome", "Dispatcher", "Due", "Executor", "SyncDispatcher"]
