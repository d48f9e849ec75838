"""Ids: UUIDv7 that sort in the order they were made and carry the clock's time, however many are made."""

from __future__ import annotations

import itertools
import time
import uuid

from chimeway.ids import new_id


def _millis(value: uuid.UUID) -> int:
    return value.int >> 80


def test_ids_made_in_a_burst_sort_in_order_and_are_not_dated_ahead_of_the_clock() -> None:
    burst = [new_id() for _ in range(20_000)]
    now = time.time_ns() // 1_000_000
    assert all(a < b for a, b in itertools.pairwise(burst))
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in (burst[0], burst[-1]))
    # Dated ahead, a burst's ids would sort after ids another process makes
    # a moment later: a signal recorded just after a run started (in a
    # process that had planned thousands of rows) would look older than the
    # run, which would take it for one it already used. uuid6's uuid7 added
    # a millisecond per id in a burst: 20 s ahead after 20,000.
    assert _millis(burst[-1]) <= now

