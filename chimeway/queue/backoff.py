"""Retry delays: exponential with jitter, the schedule Oban uses by default."""

from __future__ import annotations

import random

__all__ = ["MAX_POWER", "default_backoff"]

# 2**20 s is about twelve days; later attempts wait no longer than that.
MAX_POWER = 20
BASE_SECONDS = 15.0
JITTER = 0.10


def default_backoff(attempt: int, *, rng: random.Random | None = None) -> float:
    """Seconds to wait before retrying after failed attempt number ``attempt``.

    ``15 + 2**attempt`` seconds, plus or minus 10% jitter so jobs that failed
    together (a provider outage) do not all retry in the same instant.

    Args:
        attempt: the attempt that just failed, starting at 1.
        rng: random source, for reproducible schedules in tests.
    """
    base = BASE_SECONDS + 2.0 ** min(max(attempt, 1), MAX_POWER)
    spread = (rng or random).uniform(-JITTER, JITTER)
    return base * (1.0 + spread)
