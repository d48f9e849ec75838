"""Record triggers (the import path they have always had).

The implementation lives in :mod:`chimeway.scheduling`: the declaration
(:mod:`~chimeway.scheduling.declare`), scans (:mod:`~chimeway.scheduling.scans`),
row jobs (:mod:`~chimeway.scheduling.row_jobs`) and the app's set of
triggers (:mod:`~chimeway.scheduling.triggers`).
"""

from __future__ import annotations

from chimeway.scheduling.declare import RecordTrigger, ScanResult, build
from chimeway.scheduling.row_jobs import ROW_WORKER
from chimeway.scheduling.triggers import SCAN_WORKER, RecordTriggers

__all__ = ["ROW_WORKER", "SCAN_WORKER", "RecordTrigger", "RecordTriggers", "ScanResult", "build"]
