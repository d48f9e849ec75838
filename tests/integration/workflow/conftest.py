"""Workflow integration fixtures: the shared journey notifiers are importable here too."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
for path in (HERE, HERE.parents[1] / "unit" / "workflow"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
