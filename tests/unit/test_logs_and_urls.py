"""Masked URLs and structured log lines."""

from __future__ import annotations

import io
import json
import logging

import sqlalchemy as sa

from chimeway.db import mask_url
from chimeway.logs import configure_logging, log_event


def test_mask_url_hides_every_password_in_text_and_urls() -> None:
    assert mask_url("postgresq://admin:PASSWORD@db:5432/app") == "postgresq://admin:***@db:5432/app"
    assert mask_url("postgresql://u:p@ss@h/d") == "postgresql://u:***@h/d"
    assert mask_url("see redis://:pw@h and amqp://g:g@h/v") == "see redis://:***@h and amqp://g:***@h/v"
    assert mask_url("sqlite:///x.db postgresql://h:5432/d") == "sqlite:///x.db postgresql://h:5432/d"
    assert mask_url(sa.make_url("postgresql://a:b@h/d")) == "postgresql://a:***@h/d"


def test_log_lines_carry_stable_event_names_as_json_and_text() -> None:
    logger = logging.getLogger("chimeway.test")
    for fmt in ("json", "text"):
        stream = io.StringIO()
        configure_logging("info", fmt, stream)
        log_event(logger, logging.DEBUG, "test.hidden", "below the level")
        log_event(logger, logging.WARNING, "job.retry", "job 7 failed", job_id=7, error="boom")
        lines = stream.getvalue().splitlines()
        assert len(lines) == 1
        if fmt == "json":
            record = json.loads(lines[0])
            assert (record["event"], record["level"], record["job_id"], record["error"]) == (
                "job.retry", "warning", 7, "boom")
        else:
            assert "WARNING job.retry: job 7 failed" in lines[0]
    logging.getLogger("chimeway").handlers.clear()
    logging.getLogger("chimeway").addHandler(logging.NullHandler())
    logging.getLogger("chimeway").propagate = True
    logging.getLogger("chimeway").setLevel(logging.NOTSET)
