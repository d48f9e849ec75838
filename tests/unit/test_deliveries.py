"""The delivery state machine, send leases, and provider hints that must not hurt anyone."""

from __future__ import annotations

import math
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from support import OnlyRec

from chimeway import Chimeway, DeliveryResult, Notifier, Recipient
from chimeway.channels._http import RETRY_AFTER_CEILING, parse_retry_after
from chimeway.deliveries import FINAL, TRANSITIONS, Status, check_transition
from chimeway.errors import ChimewayError, InvalidTransitionError
from chimeway.models import deliveries_table
from chimeway.testing import FakeClock, RecordingChannel

# --- the state machine ---------------------------------------------------------------------


def test_every_status_is_in_the_table_and_final_ones_stay_final() -> None:
    assert set(TRANSITIONS) == set(Status)
    assert TRANSITIONS[Status.SUPPRESSED] == frozenset()
    # A cancelled delivery moves again only when an operator sends it again (resend).
    assert TRANSITIONS[Status.CANCELLED] == {Status.PENDING}
    # A success can only be undone by a provider's bounce report.
    assert TRANSITIONS[Status.SUCCEEDED] == {Status.CANCELLED}
    assert {Status.SUCCEEDED, Status.CANCELLED, Status.SUPPRESSED} == FINAL


@pytest.mark.parametrize(("source", "target"), [
    ("succeeded", "pending"), ("cancelled", "dispatched"), ("suppressed", "pending"),
    ("pending", "succeeded"), ("failed", "succeeded"), ("pending", "failed"), ("deferred", "pending"),
])
def test_a_move_the_table_forbids_raises(source: str, target: str) -> None:
    with pytest.raises(InvalidTransitionError, match=f"from '{source}' to '{target}'"):
        check_transition([source], target)
    assert issubclass(InvalidTransitionError, ChimewayError)


def test_an_unknown_status_raises() -> None:
    with pytest.raises(InvalidTransitionError, match="'sent' is not a delivery status"):
        check_transition(["pending"], "sent")


def test_allowed_moves_pass() -> None:
    assert check_transition(["pending", "failed", "deferred"], "dispatched") == ("pending", "failed", "deferred")
    assert check_transition(["dispatched"], "pending") == ("dispatched",)


# --- Retry-After ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "1e400", "100000000000000", "inf", "Infinity", "-inf", "nan", "-5", "", "  ", "soon",
    "Wed, 21 Oct 99999 07:28:00 GMT", "Wed, 21 Oct 2015 07:28:00 GMT", "Mon, 99 Foo 2020 99:99:99 GMT",
    "9" * 400, "\x00", "1" + "0" * 308,
])
def test_parse_retry_after_never_raises_and_stays_finite(value: str) -> None:
    seconds = parse_retry_after(value, now=lambda: 1_700_000_000.0)
    assert seconds is None or (math.isfinite(seconds) and 0.0 <= seconds <= RETRY_AFTER_CEILING)


def test_parse_retry_after_reads_seconds_and_dates() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=lambda: 40.0) == 60.0
    assert parse_retry_after("100000000000000") == RETRY_AFTER_CEILING


class ThreeWays(Notifier):
    key = "test_three_ways"
    channels = ["a", "b", "c"]
    templates = {"a": {"body": "x"}, "b": {"body": "x"}, "c": {"body": "x"}}

    def recipients(self, params: object) -> list[Recipient]:
        return [Recipient(id="user:1")]


@pytest.mark.parametrize("hint", [math.inf, 1e300, 10.0**14, math.nan, -3.0])
def test_a_poison_retry_hint_is_clamped_and_the_batch_is_recorded(sqlite_engine: sa.Engine, hint: float) -> None:
    clock = FakeClock()
    poison = RecordingChannel(lambda m: DeliveryResult.temporary("HTTP 429", retry_after=hint))
    good_b, good_c = RecordingChannel(), RecordingChannel()
    app = Chimeway(engine=sqlite_engine, clock=clock, channels={"a": poison, "b": good_b, "c": good_c},
                   max_retry_after=timedelta(minutes=10))
    with Session(app.engine) as session, session.begin():
        ids = app.trigger(session, ThreeWays, {}, idempotency_key="poison").delivery_ids
    statuses = {app.explain(i).channel: app.explain(i) for i in ids}
    assert statuses["b"].status == statuses["c"].status == "succeeded"
    failed = statuses["a"]
    assert failed.status == "failed"
    with sqlite_engine.connect() as conn:
        not_before = conn.execute(sa.select(deliveries_table.c.not_before)
                                  .where(deliveries_table.c.id == failed.delivery_id)).scalar_one()
    wait = (not_before - clock.now()).total_seconds()
    if (math.isfinite(hint) and hint > 600) or math.isinf(hint):
        assert wait == 600.0  # cut to max_retry_after
    else:
        assert wait == 15.0  # no usable hint: the backoff alone
    # recover() keeps working and never re-sends the healthy deliveries.
    clock.advance(minutes=11)
    assert app.recover(older_than=timedelta(0)) == 1
    assert len(good_b.calls) == len(good_c.calls) == 1
    assert len(poison.calls) == 2


# --- leases --------------------------------------------------------------------------------


def _dispatched_under_a_dead_holder(engine: sa.Engine, clock: FakeClock, **options: object) -> tuple[Chimeway, uuid.UUID]:
    """Plan a delivery, claim it with an executor that then 'dies' (never sends or records)."""
    dead = Chimeway(engine=engine, clock=clock, channels={"rec": RecordingChannel()}, dispatcher="queue",
                    **options)  # type: ignore[arg-type]
    with Session(dead.engine) as session, session.begin():
        did = dead.trigger(session, OnlyRec, {"n": 1}, idempotency_key="lease").delivery_ids[0]
    claimed = dead.executor.claim([did])
    assert [c.message.delivery_id for c in claimed] == [did]
    dead.executor.close()
    dead.executor.leases.drop([did])
    return dead, did


def test_a_live_lease_is_never_taken_over(sqlite_engine: sa.Engine) -> None:
    clock = FakeClock()
    _dead, did = _dispatched_under_a_dead_holder(sqlite_engine, clock)
    rec = RecordingChannel()
    other = Chimeway(engine=sqlite_engine, clock=clock, channels={"rec": rec})
    clock.advance(seconds=59)
    assert other.executor.claim([did]) == []
    assert not other.executor.release_expired()
    assert other.recover(older_than=timedelta(0)) == 0
    explanation = other.explain(did)
    assert explanation.status == "dispatched"
    in_flight = explanation.timeline[-1]
    assert in_flight.event == "dispatched" and in_flight.detail["holder"] == _dead.executor.leases.holder
    assert in_flight.detail["lease_until"] == (clock.now() + timedelta(seconds=1)).isoformat()
    assert rec.calls == []


def test_an_expired_lease_is_released_and_resent_with_the_same_delivery_id(sqlite_engine: sa.Engine) -> None:
    clock = FakeClock()
    dead, did = _dispatched_under_a_dead_holder(sqlite_engine, clock)
    holder = dead.executor.leases.holder
    rec = RecordingChannel()
    other = Chimeway(engine=sqlite_engine, clock=clock, channels={"rec": rec})
    clock.advance(seconds=61)
    assert other.recover(older_than=timedelta(hours=1)) == 1
    assert [m.delivery_id for m in rec.sent] == [did]
    explanation = other.explain(did)
    assert explanation.status == "succeeded" and explanation.attempts == 2
    expired = [t for t in explanation.timeline if t.event == "lease_expired"]
    assert len(expired) == 1 and expired[0].detail["holder"] == holder
    assert "re-sent: lease of" in str(explanation)


def test_a_lease_that_expires_on_the_last_attempt_cancels(sqlite_engine: sa.Engine) -> None:
    clock = FakeClock()
    _dead, did = _dispatched_under_a_dead_holder(sqlite_engine, clock)
    other = Chimeway(engine=sqlite_engine, clock=clock, channels={"rec": RecordingChannel()}, max_attempts=1)
    clock.advance(minutes=2)
    released = other.executor.release_expired()
    assert len(released.exhausted) == 1 and not released.redrive
    explanation = other.explain(did)
    assert explanation.status == "cancelled"
    assert explanation.reason == "retries_exhausted: the lease expired during attempt 1"


def test_the_job_of_a_dead_holders_delivery_waits_for_the_lease_then_resends(sqlite_engine: sa.Engine) -> None:
    clock = FakeClock()
    _dispatched_under_a_dead_holder(sqlite_engine, clock)
    rec = RecordingChannel()
    worker = Chimeway(engine=sqlite_engine, clock=clock, channels={"rec": rec}, dispatcher="queue")
    # The planned job runs while the (dead) holder's lease is still live: it
    # must not complete, or nothing would ever send the delivery again.
    assert worker.work() == 1
    assert rec.calls == []
    counts = worker.queue.counts()["chimeway_delivery"].states
    assert counts["completed"] == 0 and counts["scheduled"] == 1
    clock.advance(seconds=62)
    assert worker.work() == 1
    assert len(rec.sent) == 1
    assert worker.queue.counts()["chimeway_delivery"].states["completed"] == 1


def test_a_running_worker_rescues_a_delivery_whose_job_is_gone(sqlite_engine: sa.Engine) -> None:
    clock = FakeClock()
    _, did = _dispatched_under_a_dead_holder(sqlite_engine, clock)
    rec = RecordingChannel()
    worker = Chimeway(engine=sqlite_engine, clock=clock, channels={"rec": rec}, dispatcher="queue")
    with sqlite_engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM chimeway_jobs"))
    assert worker.rescue() == 0
    clock.advance(seconds=61)
    assert worker.rescue() == 1
    assert worker.rescue() == 0  # released once; its job is unique while active
    assert worker.work() == 1
    assert [m.delivery_id for m in rec.sent] == [did]


def test_the_sync_rescue_sends_what_a_killed_process_left_pending(sqlite_engine: sa.Engine) -> None:
    clock = FakeClock()
    rec = RecordingChannel()
    app = Chimeway(engine=sqlite_engine, clock=clock, channels={"rec": rec}, lease_ttl=timedelta(seconds=30))
    with Session(app.engine) as session, session.begin():
        with session.begin_nested():  # inside a savepoint: claimed only after the commit
            did = app.trigger(session, OnlyRec, {"n": 2}, idempotency_key="left").delivery_ids[0]
        # What a process killed right after its commit leaves: nothing sent.
        session.info["chimeway.after_commit"].clear()
    assert app.explain(did).status == "pending"
    assert app.rescue() == 0  # young: its own process may still send it
    clock.advance(seconds=31)
    assert app.rescue() == 1
    assert app.work() == 1
    assert [m.delivery_id for m in rec.sent] == [did]


def test_the_sync_rescue_sends_what_a_killed_process_claimed_in_its_trigger(sqlite_engine: sa.Engine) -> None:
    clock = FakeClock()
    rec = RecordingChannel()
    app = Chimeway(engine=sqlite_engine, clock=clock, channels={"rec": rec}, lease_ttl=timedelta(seconds=30))
    with Session(app.engine) as session, session.begin():
        did = app.trigger(session, OnlyRec, {"n": 3}, idempotency_key="claimed").delivery_ids[0]
        assert rec.sent == []  # claimed in this transaction, sent only after the commit
        session.info["chimeway.after_commit"].clear()  # killed right after the commit
    assert app.explain(did).status == "dispatched"
    assert app.rescue() == 0  # its lease is alive: its process may still send it
    clock.advance(seconds=31)
    assert app.rescue() == 1
    assert app.work() == 1
    assert [m.delivery_id for m in rec.sent] == [did]
    assert app.explain(did).status == "succeeded"


def test_a_rolled_back_trigger_leaves_no_claim_and_sends_nothing(sqlite_engine: sa.Engine) -> None:
    rec = RecordingChannel()
    app = Chimeway(engine=sqlite_engine, channels={"rec": rec})
    with Session(app.engine) as session, session.begin():
        app.trigger(session, OnlyRec, {"n": 4}, idempotency_key="undone")
        session.rollback()
    with Session(app.engine) as session, session.begin():
        with pytest.raises(RuntimeError), session.begin_nested():
            app.trigger(session, OnlyRec, {"n": 5}, idempotency_key="undone-savepoint")
            raise RuntimeError
        kept = app.trigger(session, OnlyRec, {"n": 6}, idempotency_key="kept").delivery_ids[0]
    assert [m.delivery_id for m in rec.sent] == [kept]
    with sqlite_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(deliveries_table)).scalar_one() == 1


def test_lease_options_are_checked() -> None:
    with pytest.raises(ChimewayError, match="lease_ttl must be a positive timedelta"):
        Chimeway("sqlite://", lease_ttl=timedelta(0))
    with pytest.raises(ChimewayError, match="max_retry_after must be a positive timedelta"):
        Chimeway("sqlite://", max_retry_after=5)  # type: ignore[arg-type]
