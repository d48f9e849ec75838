"""The group-commit combiner: concurrent callers share batches, each gets its own answer."""

from __future__ import annotations

import threading

import pytest

from chimeway.dispatch.batching import Combiner


def test_concurrent_callers_are_batched_and_get_their_own_results() -> None:
    batches: list[list[int]] = []
    gate = threading.Event()

    def square_all(items: list[int]) -> list[int]:
        if not batches:
            gate.wait(5)  # hold the first batch so the others pile up behind it
        batches.append(list(items))
        return [i * i for i in items]

    combiner: Combiner[int, int] = Combiner(square_all)
    results: dict[int, int] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, combiner.call(i))) for i in range(40)]
    threads[0].start()
    while not combiner._busy:  # the first caller leads
        pass
    for t in threads[1:]:
        t.start()
    while len(combiner._queue) < 39:
        pass
    gate.set()
    for t in threads:
        t.join()
    assert results == {i: i * i for i in range(40)}
    assert sorted(i for batch in batches for i in batch) == list(range(40))
    assert len(batches) == 2  # the leader's own batch, then everyone who queued meanwhile


def test_errors_reach_every_caller_of_the_batch() -> None:
    def boom(items: list[int]) -> list[int]:
        raise ValueError("database went away")

    combiner: Combiner[int, int] = Combiner(boom)
    with pytest.raises(ValueError, match="database went away"):
        combiner.call(1)
    # The combiner is usable again afterwards.
    ok: Combiner[int, int] = Combiner(lambda items: [i + 1 for i in items])
    assert ok.call(1) == 2


def test_max_batch_splits_large_queues() -> None:
    seen: list[int] = []
    combiner: Combiner[int, int] = Combiner(lambda items: (seen.append(len(items)), items)[1], max_batch=3)
    threads = [threading.Thread(target=combiner.call, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(seen) == 10 and max(seen) <= 3


def test_many_threads_hammering_one_combiner_each_get_their_own_answer() -> None:
    # Leadership passes from thread to thread as batches finish; nobody may be
    # left waiting, answered twice, or given another caller's result.
    calls: list[int] = []
    combiner: Combiner[int, int] = Combiner(lambda items: (calls.append(len(items)), [-i for i in items])[1],
                                            max_batch=7)
    results: dict[int, int] = {}
    lock = threading.Lock()

    def caller(base: int) -> None:
        for k in range(200):
            n = base * 1000 + k
            r = combiner.call(n)
            with lock:
                assert n not in results
                results[n] = r

    threads = [threading.Thread(target=caller, args=(b,)) for b in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert results == {b * 1000 + k: -(b * 1000 + k) for b in range(16) for k in range(200)}
    assert sum(calls) == 16 * 200 and max(calls) <= 7
    assert not combiner._busy and not combiner._queue
