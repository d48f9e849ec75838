"""Log channel: one line per message, always succeeded."""

from __future__ import annotations

import asyncio
import logging

import pytest
from channels_support import make_message

from chimeway.channels.log import Log


def test_logs_one_line_summary(caplog: pytest.LogCaptureFixture) -> None:
    message = make_message("log", {"title": "Order 7\nshipped", "body": "Track it"})
    with caplog.at_level(logging.INFO, logger="chimeway.deliveries"):
        result = Log().send(message)
    assert result.outcome == "succeeded"
    [record] = caplog.records
    assert record.name == "chimeway.deliveries"
    assert record.levelno == logging.INFO
    line = record.getMessage()
    assert "\n" not in line
    assert f"delivery {message.delivery_id}" in line
    assert "notifier=order_shipped" in line
    assert "recipient=user:42" in line
    assert "tenant=acme" in line
    assert "fields=body,title" in line
    assert "title='Order 7 shipped'" in line
    assert record.delivery_id == str(message.delivery_id)  # type: ignore[attr-defined]


def test_custom_logger_level_and_preview(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("app.notifications")
    channel = Log(logger, level=logging.WARNING, preview=10)
    with caplog.at_level(logging.WARNING, logger="app.notifications"):
        channel.send(make_message("log", {"body": "x" * 50}, tenant=None))
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "tenant=" not in record.getMessage()
    assert "body='xxxxxxxxx…'" in record.getMessage()


def test_send_async(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="chimeway.deliveries"):
        result = asyncio.run(Log().send_async(make_message("log", {"body": "hi"})))
    assert result.outcome == "succeeded"
    assert len(caplog.records) == 1
