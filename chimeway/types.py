"""Column types shared by every Chimeway table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.types import TypeEngine

from chimeway.encryption import encryption_for, is_sealed
from chimeway.errors import ConfigurationError

__all__ = ["JSONType", "SealedJSON", "UTCDateTime", "stored_values"]


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so values are
    stored as naive UTC and given back as aware UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType: Any = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


class SealedJSON(sa.TypeDecorator[Any]):
    """JSON that is stored encrypted when the engine has encryption keys.

    See :mod:`chimeway.encryption`. Without keys it is plain JSON (JSONB on
    PostgreSQL), so turning encryption on needs no migration; rows written
    before are read as they are (``app.reencrypt()`` encrypts them).
    """

    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.JSONB())
        return dialect.type_descriptor(sa.JSON())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        encryption = encryption_for(dialect)
        if value is None or encryption is None:
            return value
        return encryption.seal(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if not is_sealed(value):
            return value
        encryption = encryption_for(dialect)
        if encryption is None:
            raise ConfigurationError(
                "Chimeway's stored messages are encrypted: build the app with its "
                "encryption_keys to read them"
            )
        return encryption.open(value)


def stored_values(
    conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """``rows`` with each :class:`SealedJSON` value as it is stored.

    For statements whose values bypass column types (rows sent as one JSON
    document to ``json_populate_recordset``).

    Args:
        conn: the connection the rows will be written through.
        table: their table.
        rows: column name → value.
    """
    sealed = [c.name for c in table.columns if isinstance(c.type, SealedJSON)]
    if not sealed or encryption_for(conn.dialect) is None:
        return [dict(row) for row in rows]
    seal = SealedJSON().process_bind_param
    return [{**row, **{name: seal(row[name], conn.dialect) for name in sealed if name in row}}
            for row in rows]
