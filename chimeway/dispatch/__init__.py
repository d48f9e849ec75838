"""Dispatchers: ``sync`` (in-process after commit), ``queue`` (the job queue) and, with the
``celery`` extra, :mod:`chimeway.dispatch.celery` (an outbox relayed to Celery)."""

from chimeway.dispatch.base import Dispatcher, Due
from chimeway.dispatch.executor import DeliveryOutcome, Executor
from chimeway.dispatch.sync import SyncDispatcher

__all__ = ["DeliveryOutcome", "Dispatcher", "Due", "Executor", "SyncDispatcher"]
