"""Chunk functions: several claimed jobs of one worker in one call, one outcome each."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest
import sqlalchemy as sa

from chimeway.errors import InvalidInputError
from chimeway.queue import Cancel, JobEvent, JobInfo, JobQueue, Retry, Snooze


def _states(q: JobQueue, ids: list[int]) -> list[str]:
    return [q.get(i).state for i in ids]  # type: ignore[union-attr]


def _run_worker_until(q: JobQueue, done: threading.Event, concurrency: int) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=q.run_worker, kwargs={
        "queues": {"default": concurrency}, "poll_interval": 0.05, "stop_event": stop})
    thread.start()
    try:
        assert done.wait(30)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def test_chunk_must_be_a_positive_int(q: JobQueue) -> None:
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InvalidInputError):
            q.register(lambda jobs: [None] * len(jobs), name="bad", chunk=bad)  # type: ignore[arg-type]


def test_a_worker_hands_a_chunk_function_several_jobs_at_once(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    calls: list[list[int]] = []
    lock = threading.Lock()
    all_done = threading.Event()

    def add(jobs: list[JobInfo]) -> list[object]:
        with lock:
            calls.append([job.args["n"] for job in jobs])
            if sum(map(len, calls)) == 30:
                all_done.set()
        return [job.args["n"] * 2 for job in jobs]

    q.register(add, name="add", chunk=4)
    with sqlite_engine.begin() as conn:
        ids = q.insert_many(conn, [{"worker": "add", "args": {"n": i}} for i in range(30)])
    _run_worker_until(q, all_done, concurrency=10)
    assert sorted(n for call in calls for n in call) == list(range(30))
    assert max(map(len, calls)) == 4  # never more than the chunk
    assert len(calls) < 30  # some calls took several jobs
    assert set(_states(q, ids)) == {"completed"}


def test_each_job_of_a_chunk_gets_its_own_outcome(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    outcomes: dict[str, object] = {
        "ok": "done", "cancel": Cancel("gone"), "snooze": Snooze(60), "retry": Retry("later", after=300),
        "fail": LookupError("no such thing"),
    }
    seen = threading.Event()

    def steer(jobs: list[JobInfo]) -> list[object]:
        if len(jobs) == len(outcomes):
            seen.set()
        return [outcomes[job.args["kind"]] for job in jobs]

    q.register(steer, name="steer", chunk=10)
    with sqlite_engine.begin() as conn:
        ids = q.insert_many(conn, [{"worker": "steer", "args": {"kind": k}} for k in outcomes])
    done = threading.Event()
    q.on_event(lambda event: done.set() if event.kind != "start" and event.job_id == ids[-1] else None)
    _run_worker_until(q, done, concurrency=10)
    assert seen.is_set()  # all five in one call
    assert _states(q, ids) == ["completed", "cancelled", "scheduled", "retryable", "retryable"]
    snoozed, retried, failed = (q.get(i) for i in ids[2:])
    assert snoozed is not None and retried is not None and failed is not None
    assert snoozed.attempt == 0
    assert (retried.scheduled_at - retried.attempted_at).total_seconds() >= 300  # type: ignore[operator]
    assert failed.errors[-1]["error"] == "LookupError: no such thing"


@pytest.mark.parametrize("body", ["raise", "short"])
def test_a_chunk_function_that_raises_or_miscounts_fails_every_job(
    q: JobQueue, sqlite_engine: sa.Engine, body: str
) -> None:
    def broken(jobs: list[JobInfo]) -> list[object]:
        if body == "raise":
            raise RuntimeError("provider down")
        return [None] * (len(jobs) - 1)

    q.register(broken, name="broken", chunk=10)
    with sqlite_engine.begin() as conn:
        ids = q.insert_many(conn, [{"worker": "broken", "args": {"n": i}} for i in range(3)])
    assert q.work() == 3
    assert set(_states(q, ids)) == {"retryable"}
    errors = {q.get(i).errors[-1]["error"] for i in ids}  # type: ignore[union-attr]
    assert len(errors) == 1
    assert errors.pop().startswith("RuntimeError" if body == "raise" else "TypeError: chunk function 'broken'")


def test_work_and_direct_calls_run_a_chunk_function_one_job_at_a_time(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    sizes: list[int] = []

    def count(jobs: list[JobInfo]) -> list[object]:
        sizes.append(len(jobs))
        return [None for _ in jobs]

    handle = q.register(count, name="count", chunk=5)
    with sqlite_engine.begin() as conn:
        ids = [handle.enqueue(conn, n=i) for i in range(3)]
    assert q.work() == 3
    assert sizes == [1, 1, 1]
    assert set(_states(q, [i for i in ids if i is not None])) == {"completed"}


def test_event_callbacks_see_every_job_of_a_chunk(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    events: list[tuple[str, int, str | None]] = []
    lock = threading.Lock()
    done = threading.Event()

    def note(event: JobEvent) -> None:
        with lock:
            events.append((event.kind, event.job_id, event.state))
            if sum(kind != "start" for kind, _, _ in events) == 3:
                done.set()

    def half(jobs: list[JobInfo]) -> list[Any]:
        return [None if job.args["n"] % 2 == 0 else ValueError("odd") for job in jobs]

    q.register(half, name="half", chunk=3)
    q.on_event(note)
    with sqlite_engine.begin() as conn:
        ids = q.insert_many(conn, [{"worker": "half", "args": {"n": i}} for i in range(3)])
    _run_worker_until(q, done, concurrency=3)
    assert sorted(i for kind, i, _ in events if kind == "start") == ids
    assert sorted((i, kind, state) for kind, i, state in events if kind != "start") == [
        (ids[0], "stop", "completed"), (ids[1], "exception", "retryable"), (ids[2], "stop", "completed")]


def test_a_job_given_a_future_keeps_its_slot_until_it_resolves_and_the_others_end_at_once(
        q: JobQueue, sqlite_engine: sa.Engine) -> None:
    later: Future[object] = Future()
    returned = threading.Event()

    def split(jobs: list[JobInfo]) -> list[object]:
        returned.set()
        return [later if job.args["n"] == 0 else "done" for job in jobs]

    q.register(split, name="split", chunk=10)
    with sqlite_engine.begin() as conn:
        ids = q.insert_many(conn, [{"worker": "split", "args": {"n": n}} for n in range(3)])
    events: list[JobEvent] = []
    q.on_event(events.append)
    stop = threading.Event()
    worker = threading.Thread(target=q.run_worker, kwargs={
        "queues": {"default": 3}, "poll_interval": 0.05, "stop_event": stop})
    worker.start()
    try:
        assert returned.wait(30)
        deadline = time.monotonic() + 30
        while _states(q, ids[1:]) != ["completed"] * 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        # The call has returned and two jobs are acknowledged; the third is
        # still running, its slot taken, until its future resolves.
        assert _states(q, ids) == ["executing", "completed", "completed"]
        assert [e.kind for e in events if e.job_id == ids[0]] == ["start"]
        later.set_result(Retry("the provider said later", after=600))
        while _states(q, ids[:1]) != ["retryable"] and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        worker.join(30)
    job = q.get(ids[0])
    assert job is not None and job.state == "retryable"
    assert "the provider said later" in job.errors[-1]["error"]
    assert [e.kind for e in events if e.job_id == ids[0]] == ["start", "exception"]


def test_run_alone_a_chunk_job_given_a_future_waits_for_it(q: JobQueue, sqlite_engine: sa.Engine) -> None:
    def slow(jobs: list[JobInfo]) -> list[object]:
        future: Future[object] = Future()
        threading.Timer(0.05, future.set_result, [Cancel(f"nothing to do for {jobs[0].args['n']}")]).start()
        return [future]

    q.register(slow, name="slow_alone", chunk=5)
    with sqlite_engine.begin() as conn:
        [job_id] = q.insert_many(conn, [{"worker": "slow_alone", "args": {"n": 41}}])
    assert q.work() == 1
    assert _states(q, [job_id]) == ["cancelled"]  # what the future gave, once it resolved
