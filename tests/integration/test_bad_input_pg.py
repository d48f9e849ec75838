"""Bad input at every public entry point, on PostgreSQL: a typed error naming the field,
nothing written, and the caller's own transaction still usable afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from support import OnlyRec, total_rows

from chimeway import Chimeway, Notifier, Recipient
from chimeway.db import create_engine
from chimeway.errors import ChimewayError, DatabaseError, InvalidInputError
from chimeway.planning import TriggerRequest
from chimeway.testing import RecordingChannel

pytestmark = pytest.mark.postgres

NUL = "a\x00b"
SURROGATE = "a\ud800b"
LONG = "t" * 300


class NulRecipient(Notifier):
    key = "bad_pg_nul_recipient"
    channels = ["rec"]
    templates = {"rec": {"body": "x"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id="user:\x00")]


@pytest.fixture
def app(pg_url: str) -> Iterator[Chimeway]:
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE orders (id INTEGER PRIMARY KEY)"))
    app = Chimeway(engine=engine, channels={"rec": RecordingChannel()}, dispatcher="queue")
    app.job(lambda **_: None, name="noop_job", queue="default")
    yield app
    app.close()
    engine.dispose()


def _trigger(**overrides: Any) -> Callable[[Chimeway, Session], Any]:
    def call(app: Chimeway, session: Session) -> Any:
        options: dict[str, Any] = {"idempotency_key": "k", "params": {"n": 1}, **overrides}
        params = options.pop("params")
        notifier = options.pop("notifier", OnlyRec)
        return app.trigger(session, notifier, params, **options)
    return call


CASES: list[tuple[str, Callable[[Chimeway, Session], Any], type[ChimewayError], str]] = [
    ("tenant too long", _trigger(tenant=LONG), InvalidInputError, "tenant is 300 characters; at most 200"),
    ("tenant with NUL", _trigger(tenant=NUL), InvalidInputError, "tenant contains a NUL"),
    ("key with NUL", _trigger(idempotency_key=NUL), InvalidInputError, "idempotency_key contains a NUL"),
    ("key with a surrogate", _trigger(idempotency_key=SURROGATE), InvalidInputError,
     "idempotency_key contains a lone surrogate"),
    ("param with NUL", _trigger(params={"n": NUL}), InvalidInputError, "params['n'] contains a NUL"),
    ("param with a surrogate", _trigger(params={"n": SURROGATE}), InvalidInputError,
     "params['n'] contains a lone surrogate"),
    ("nested param key with NUL", _trigger(params={"n": {NUL: 1}}), InvalidInputError,
     "a key of params['n'] contains a NUL"),
    ("actor with NUL", _trigger(actor=NUL), InvalidInputError, "actor contains a NUL"),
    ("correlation id too long", _trigger(correlation_id=LONG), InvalidInputError, "correlation_id is 300"),
    ("recipient id with NUL", _trigger(notifier=NulRecipient), InvalidInputError,
     "recipients()[0].id contains a NUL"),
    ("one bad request in a batch",
     lambda app, s: app.trigger_many(s, OnlyRec, [TriggerRequest(params={"n": 1}, idempotency_key="ok"),
                                                   TriggerRequest(params={"n": NUL}, idempotency_key="bad")]),
     InvalidInputError, "params['n'] contains a NUL"),
    ("signal name with NUL", lambda app, s: app.track(s, NUL, actor="user:1"), InvalidInputError,
     "signal name contains a NUL"),
    ("signal actor with NUL", lambda app, s: app.track(s, "x", actor=NUL), InvalidInputError,
     "actor contains a NUL"),
    ("signal tenant too long", lambda app, s: app.track(s, "x", actor="user:1", tenant=LONG), InvalidInputError,
     "tenant is 300"),
    ("signal payload with NUL", lambda app, s: app.track(s, "x", actor="user:1", payload={"p": NUL}),
     InvalidInputError, "payload['p'] contains a NUL"),
    ("inbox recipient with NUL", lambda app, s: app.inbox(NUL, session=s).mark_all_read(), InvalidInputError,
     "recipient contains a NUL"),
    ("inbox tenant too long", lambda app, s: app.inbox("user:1", LONG, session=s).list(), InvalidInputError,
     "tenant is 300"),
    ("preferences recipient with NUL",
     lambda app, s: app.preferences(NUL, session=s).set(channel="rec", enabled=False), InvalidInputError,
     "recipient contains a NUL"),
    ("unsubscribe token with NUL", lambda app, s: app.unsubscribe(NUL, session=s), ChimewayError, ""),
    ("feedback body with NUL",
     lambda app, s: app.ingest_feedback("rec", {"webhook-id": NUL}, NUL.encode()), ChimewayError, ""),
    ("job args with NUL", lambda app, s: app.queue.enqueue(s, "noop_job", {"x": NUL}), InvalidInputError,
     "job args.x contains a NUL"),
]


@pytest.mark.parametrize(("call", "error", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_typed_writes_nothing_and_leaves_the_callers_transaction_usable(
        app: Chimeway, call: Callable[[Chimeway, Session], Any], error: type[ChimewayError], message: str) -> None:
    with Session(app.engine) as session, session.begin():
        with pytest.raises(error) as raised:
            call(app, session)
        assert message in str(raised.value)
        # The caller's own work goes on in the same transaction.
        session.execute(sa.text("INSERT INTO orders (id) VALUES (1)"))
    with app.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM orders")).scalar() == 1
    assert total_rows(app.engine) == 0


def test_a_database_without_chimeways_tables_says_to_migrate(pg_empty_url: str) -> None:
    engine = create_engine(pg_empty_url)
    app = Chimeway(engine=engine, channels={"rec": RecordingChannel()})
    try:
        with Session(engine) as session, session.begin(), pytest.raises(DatabaseError) as raised:
            app.trigger(session, OnlyRec, {"n": 1}, idempotency_key="early")
        assert "run `chimeway migrate" in str(raised.value)
        assert isinstance(raised.value.__cause__, sa.exc.DBAPIError)
        with pytest.raises(DatabaseError, match="run `chimeway migrate"):
            app.inbox("user:1").unread_count()
    finally:
        app.close()
        engine.dispose()
