"""The default retry schedule."""

from __future__ import annotations

import random

from chimeway.queue import default_backoff


def test_grows_exponentially_with_bounded_jitter() -> None:
    rng = random.Random(7)
    for attempt in range(1, 25):
        base = 15 + 2 ** min(attempt, 20)
        for _ in range(50):
            delay = default_backoff(attempt, rng=rng)
            assert base * 0.9 <= delay <= base * 1.1


def test_jitter_spreads_jobs_that_failed_together() -> None:
    rng = random.Random(1)
    delays = {round(default_backoff(5, rng=rng), 3) for _ in range(100)}
    assert len(delays) > 50


def test_is_capped() -> None:
    rng = random.Random(3)
    assert default_backoff(100, rng=rng) <= (15 + 2**20) * 1.1
