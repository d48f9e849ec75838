"""PostgreSQL's plan for a statement exactly as the driver sent it, for the plan tests.

A statement captured from ``before_cursor_execute`` (``%(name)s``
parameters) is prepared under its own name and explained with its values as
literals, in the plan-cache mode asked for: ``force_generic_plan`` is what a
prepared statement gets after a few runs, ``force_custom_plan`` what a first
run gets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.sql import Literal

__all__ = ["captured", "nodes", "plan_nodes", "sent_plan"]


@contextmanager
def captured(engine: sa.Engine) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every statement ``engine`` sends meanwhile, with its parameters, as the driver gets them."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def keep(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        seen.append((statement, dict(parameters) if isinstance(parameters, Mapping) else {}))

    sa.event.listen(engine, "before_cursor_execute", keep)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", keep)


def plan_nodes(engine: sa.Engine, statement: str, params: Mapping[str, Any], *,
               mode: str = "force_generic_plan") -> list[dict[str, Any]]:
    """Every node of the plan of a captured statement, on a connection of ``engine`` (rolled back)."""
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert isinstance(raw, psycopg.Connection)
        plan = sent_plan(raw, statement, params, mode=mode)
        conn.rollback()
    return list(nodes(plan))


def sent_plan(raw: psycopg.Connection[Any], statement: str, params: Mapping[str, Any], *,
              mode: str = "force_generic_plan", analyze: bool = False, name: str = "planned") -> dict[str, Any]:
    """The root plan node of ``statement`` with ``params``, planned in ``mode``."""
    names: list[str] = []

    def positional(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    raw.execute(f"SET plan_cache_mode = {mode}")
    raw.execute(f"PREPARE {name} AS " + re.sub(r"%\((\w+)\)s", positional, statement).replace("%%", "%"))
    args = ", ".join(Literal(params[n]).as_string(raw) for n in names)
    options = "ANALYZE, FORMAT JSON" if analyze else "FORMAT JSON"
    row = raw.execute(f"EXPLAIN ({options}) EXECUTE {name} ({args})").fetchone()
    raw.execute(f"DEALLOCATE {name}")
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    return dict(plan[0]["Plan"])


def nodes(node: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a plan, the root first."""
    yield dict(node)
    for child in node.get("Plans", []):
        yield from nodes(child)
