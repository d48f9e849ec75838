"""Group commit: concurrent callers share one database round trip.

A Celery worker runs many delivery tasks at once, each on its own thread, and
a queue worker many chunks of delivery jobs. Each must claim its deliveries
and record their attempts in a transaction; done one by one, that is several
round trips per delivery. A :class:`Combiner` lets
whichever thread arrives first become the leader: it takes every request
queued so far and runs them as one batch, while the others wait for their
share of the answer. Under load batches grow by themselves; a lone caller
pays nothing extra (there is no waiting for company).

Each waiter sleeps on a lock of its own, and is woken exactly once: when its
answer is ready, or when it is handed the lead for the requests that queued up
during the batch before. Nothing wakes every waiter at once, so fifty threads
waiting cost no more than one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Combiner", "concatenated"]

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T, R]):
    __slots__ = ("done", "error", "item", "lead", "result", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False
        self.lead = False
        self.result: R | None = None
        self.error: BaseException | None = None
        # Held from birth; released once, by whoever finishes or hands over.
        self.wake = threading.Lock()
        self.wake.acquire()


class Combiner(Generic[T, R]):
    """Runs ``fn`` over batches of items submitted concurrently by many threads.

    Args:
        fn: takes a list of items, returns one result per item, in order.
        max_batch: the most items one call of ``fn`` gets.
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], *, max_batch: int = 200) -> None:
        self._fn = fn
        self._max = max_batch
        self._mutex = threading.Lock()
        self._queue: list[_Slot[T, R]] = []
        self._busy = False

    def call(self, item: T) -> R:
        """Submit ``item`` and wait for its result (an exception of ``fn`` is re-raised)."""
        slot: _Slot[T, R] = _Slot(item)
        with self._mutex:
            self._queue.append(slot)
            if not self._busy:
                self._busy = slot.lead = True
        if not slot.lead:
            slot.wake.acquire()
        if not slot.done:
            self._lead(slot)
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _lead(self, own: _Slot[T, R]) -> None:
        try:
            while not own.done:
                with self._mutex:
                    batch = self._queue[: self._max]
                    del self._queue[: self._max]
                self._run(batch, own)
        finally:
            with self._mutex:
                # Hand the lead to the oldest waiter, or stand down.
                heir = self._queue[0] if self._queue else None
                self._busy = heir is not None
            if heir is not None:
                heir.lead = True
                heir.wake.release()

    def _run(self, batch: list[_Slot[T, R]], own: _Slot[T, R]) -> None:
        try:
            results = self._fn([slot.item for slot in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
        except BaseException as exc:  # every waiter must learn of the failure
            for slot in batch:
                slot.error = exc
                slot.done = True
        else:
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
                slot.done = True
        for slot in batch:
            if slot is not own:
                slot.wake.release()


def concatenated(fn: Callable[[list[T]], Sequence[R]]) -> Callable[[list[list[T]]], list[list[R]]]:
    """``fn`` for a :class:`Combiner` whose callers each bring a list: one call on all of them, split back.

    Args:
        fn: takes a list of items, returns one result per item, in order.
    """

    def run(lists: list[list[T]]) -> list[list[R]]:
        results = fn([item for items in lists for item in items])
        out: list[list[R]] = []
        start = 0
        for items in lists:
            out.append(list(results[start:start + len(items)]))
            start += len(items)
        return out

    return run
