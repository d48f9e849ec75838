"""Bad input to trigger(): a typed error naming the field, and nothing written."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from support import OnlyRec, total_rows

from chimeway import Chimeway, Notifier, Recipient
from chimeway.errors import (
    ChimewayError,
    ConfigurationError,
    IdempotencyKeyError,
    InvalidNotifierError,
    InvalidRecipientError,
    ParamsNotJSONError,
    TemplateRenderError,
    UnknownChannelError,
)
from chimeway.testing import RecordingChannel


class UsesMissingVar(Notifier):
    key = "bad_missing_var"
    channels = ["rec"]
    templates = {"rec": {"body": "Hi {{ name }}, your code is {{ code }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id="user:1")]


class UsesUnknownChannel(Notifier):
    key = "bad_unknown_channel"
    channels = ["rec", "carrier_pigeon"]
    templates = {"rec": {"body": "x"}, "carrier_pigeon": {"body": "x"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id="user:1")]


class ReturnsDicts(Notifier):
    key = "bad_recipients"
    channels = ["rec"]
    templates = {"rec": {"body": "x"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id="user:1"), {"id": "user:2"}]  # type: ignore[list-item]


class ReturnsOne(Notifier):
    key = "bad_recipients_not_list"
    channels = ["rec"]
    templates = {"rec": {"body": "x"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return Recipient(id="user:1")  # type: ignore[return-value]


@pytest.fixture
def app(sqlite_engine: sa.Engine) -> Chimeway:
    return Chimeway(engine=sqlite_engine, channels={"rec": RecordingChannel()})


def _trigger(app: Chimeway, notifier: type[Notifier], params: Any, key: Any = "k-1") -> None:
    with Session(app.engine) as session, session.begin():
        app.trigger(session, notifier, params, idempotency_key=key)


@pytest.mark.parametrize(
    ("key", "match"),
    [(None, "idempotency_key is required"), ("", "idempotency_key is blank"),
     ("   ", "idempotency_key is blank"), (42, "idempotency_key must be a string"),
     ("x" * 501, "idempotency_key is 501 characters")],
)
def test_bad_idempotency_key(app: Chimeway, key: Any, match: str) -> None:
    with pytest.raises(IdempotencyKeyError, match=match):
        _trigger(app, OnlyRec, {"n": 1}, key)
    assert total_rows(app.engine) == 0


@pytest.mark.parametrize(
    ("params", "match"),
    [({"n": datetime(2026, 1, 1)}, r"params\['n'\] is a datetime"),
     ({"n": 1, "nested": {"deep": [1, {1, 2}]}}, r"params\['nested'\]\['deep'\]\[1\] is a set"),
     ({"n": float("nan")}, r"params\['n'\] is nan"),
     ({"n": 1, 5: "x"}, "has a key 5 of type int")],
)
def test_params_that_are_not_json(app: Chimeway, params: Any, match: str) -> None:
    with pytest.raises(ParamsNotJSONError, match=match):
        _trigger(app, OnlyRec, params)
    assert total_rows(app.engine) == 0


def test_template_with_missing_variable_names_field_and_variable(app: Chimeway) -> None:
    with pytest.raises(TemplateRenderError, match=r"bad_missing_var.*'rec'.*'body'.*'code' is undefined"):
        _trigger(app, UsesMissingVar, {"name": "Ada"})
    assert total_rows(app.engine) == 0


def test_unknown_channel(app: Chimeway) -> None:
    with pytest.raises(UnknownChannelError, match=r"'carrier_pigeon'.*configured: in_app, rec"):
        _trigger(app, UsesUnknownChannel, {})
    assert total_rows(app.engine) == 0
    assert issubclass(UnknownChannelError, ConfigurationError)


@pytest.mark.parametrize(("notifier", "match"), [
    (ReturnsDicts, r"recipients\(\)\[1\] is a dict, not a Recipient"),
    (ReturnsOne, "must return a list of Recipient"),
])
def test_recipients_must_be_a_list_of_recipient(app: Chimeway, notifier: type[Notifier], match: str) -> None:
    with pytest.raises(InvalidRecipientError, match=match):
        _trigger(app, notifier, {})
    assert total_rows(app.engine) == 0


def test_notifier_without_key_fails_at_definition() -> None:
    with pytest.raises(InvalidNotifierError, match="NoKey has no `key`"):
        class NoKey(Notifier):
            channels = ["rec"]


def test_duplicate_notifier_key_is_an_error() -> None:
    with pytest.raises(InvalidNotifierError, match="key 'test_only_rec' is already used"):
        class Again(Notifier):
            key = "test_only_rec"


def test_not_a_notifier(app: Chimeway) -> None:
    with pytest.raises(InvalidNotifierError, match="must be a Notifier subclass"):
        _trigger(app, dict, {})  # type: ignore[arg-type]
    assert total_rows(app.engine) == 0


def test_every_error_is_a_chimeway_error() -> None:
    for error in (IdempotencyKeyError, ParamsNotJSONError, TemplateRenderError, UnknownChannelError,
                  InvalidRecipientError, InvalidNotifierError):
        assert issubclass(error, ChimewayError)


def test_bad_configuration() -> None:
    with pytest.raises(ConfigurationError, match=r"channels\['x'\] is a str"):
        Chimeway("sqlite://", channels={"x": "nope"})  # type: ignore[dict-item]
    with pytest.raises(ConfigurationError, match="dispatcher must be"):
        Chimeway("sqlite://", dispatcher="carrier")
