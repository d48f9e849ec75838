"""Rewriting encrypted columns under the newest key (key rotation).

After a new key is put first in ``encryption_keys``, rows written before
still decrypt with the older keys; :func:`reencrypt` rewrites them under
the new key (and encrypts rows written before encryption was turned on),
after which the old key can be dropped.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from chimeway.db import is_postgres, writer
from chimeway.encryption import encryption_for
from chimeway.errors import ConfigurationError, InvalidInputError
from chimeway.models import metadata
from chimeway.types import SealedJSON

__all__ = ["reencrypt", "sealed_columns"]


def sealed_columns() -> list[tuple[sa.Table, list[sa.Column[Any]]]]:
    """Every table with encrypted columns, and those columns."""
    out = []
    for table in metadata.sorted_tables:
        columns = [c for c in table.columns if isinstance(c.type, SealedJSON)]
        if columns:
            out.append((table, columns))
    return out


def reencrypt(engine: Engine, *, batch: int = 500) -> int:
    """Rewrite every encrypted column under the first key; returns the rows rewritten.

    Each batch is one short transaction holding its rows' locks, so sends
    and inbox updates carry on meanwhile and none is overwritten.

    Args:
        engine: Chimeway's engine (bound to its encryption keys).
        batch: rows per transaction.
    """
    if encryption_for(engine.dialect) is None:
        raise ConfigurationError("reencrypt needs the app's encryption_keys")
    if not isinstance(batch, int) or batch < 1:
        raise InvalidInputError(f"batch must be a positive int, got {batch!r}")
    total = 0
    for table, columns in sealed_columns():
        key = next(iter(table.primary_key.columns))
        update = (
            sa.update(table)
            .where(key == sa.bindparam("b_key"))
            .values({c.name: sa.bindparam(f"b_{c.name}", type_=c.type) for c in columns})
        )
        last: Any = None
        while True:
            with writer(engine).begin() as conn:
                query = sa.select(key, *columns).order_by(key).limit(batch)
                if last is not None:
                    query = query.where(key > last)
                if is_postgres(conn):
                    query = query.with_for_update()
                rows = conn.execute(query).all()
                if not rows:
                    break
                conn.execute(update, [
                    {"b_key": row[0], **{f"b_{c.name}": row[i + 1] for i, c in enumerate(columns)}}
                    for row in rows
                ])
            total += len(rows)
            last = rows[-1][0]
    return total
