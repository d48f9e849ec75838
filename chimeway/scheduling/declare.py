"""A record trigger's declaration: what it scans, what it runs, and its options.

Everything is checked here, when the trigger is declared, and every error
names its field; nothing is written until the declaration is whole.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapper

from chimeway.cron import CronExpression
from chimeway.errors import InvalidInputError
from chimeway.jsonvalues import check_json
from chimeway.notifier import Notifier
from chimeway.queue import JobQueue
from chimeway.scheduling.actions import Action, as_action

__all__ = ["RecordTrigger", "ScanResult", "build", "row_key"]

Where = Any  # a SQL boolean expression, or a function of ``now`` (and ``tenant``) returning one
RowFn = Callable[[Any], Any]
Tenants = Callable[[], Iterable[str | None]]

ROW_EXTRAS = ("session", "actor", "tenant", "job")


@dataclass(frozen=True, kw_only=True)
class ScanResult:
    """What one scan of a record trigger did.

    Args:
        trigger: the trigger's name.
        matched: rows that matched ``where``.
        triggered: rows notified by this scan (notifier triggers).
        already: rows whose notification already existed (earlier or overlapping scans).
        failed: rows that failed and were handed to a row job.
        skipped: rows skipped because a row job is on them or gave up, or
            (``lock_for_update``) another transaction held them.
        enqueued: rows handed to a row job that runs the action (action triggers).
    """

    trigger: str
    matched: int = 0
    triggered: int = 0
    already: int = 0
    failed: int = 0
    skipped: int = 0
    enqueued: int = 0


@dataclass(frozen=True, kw_only=True, eq=False)
class RecordTrigger:
    """One declared record trigger; see :meth:`chimeway.Chimeway.record_trigger`."""

    name: str
    model: Any
    table: sa.FromClause
    pk: tuple[sa.ColumnElement[Any], ...]
    pk_attrs: tuple[str, ...]
    orm: bool
    where: Where
    notifier: type[Notifier] | None
    action: Action | None
    params: RowFn | Mapping[str, Any] | None
    idempotency_key: RowFn | None
    tenant: RowFn | str | None
    tenants: Tenants | None
    on_error: Action | None
    cron: CronExpression | None
    batch_size: int
    concurrency: int
    max_attempts: int
    queue: str
    record_limit: int | None
    lock_for_update: bool
    actor: str | None
    isolate_rows: bool = True

    @property
    def target(self) -> str:
        """What it runs, for listings: the notifier's key or the action's name."""
        if self.notifier is not None:
            return self.notifier.key
        assert self.action is not None
        return self.action.label

    def condition(self, now: datetime, tenant: str | None = None) -> Any:
        """The ``where`` expression at ``now`` (for ``tenant`` when it scans per tenant).

        Args:
            now: the time a callable ``where`` is given.
            tenant: the tenant scanned (``tenants=``).
        """
        if self.where is None:
            return sa.true()
        if not callable(self.where):
            return self.where
        got = self.where(now, tenant=tenant) if self.tenants is not None else self.where(now)
        return _check_where(self.name, got)

    def row_id(self, row: Any) -> Any:
        """The row's primary key as a JSON value (a list when composite).

        Args:
            row: a model instance or row.
        """
        values = [_json_key(getattr(row, attr)) for attr in self.pk_attrs]
        return values[0] if len(values) == 1 else values

    def key_for(self, row: Any, row_id: Any) -> str:
        """The row's idempotency key (notifier triggers).

        Args:
            row: a model instance or row.
            row_id: its :meth:`row_id`.
        """
        if self.idempotency_key is None:
            return f"{self.name}:{row_key(row_id)}"
        key = self.idempotency_key(row)
        if not isinstance(key, str):
            raise InvalidInputError(
                f"record trigger {self.name!r}: idempotency_key returned {type(key).__name__}, expected str"
            )
        return key

    def tenant_for(self, row: Any, scanned: str | None = None) -> str | None:
        """The row's tenant: the tenant scanned, or ``tenant`` (a string or a function of the row).

        Args:
            row: a model instance or row.
            scanned: the tenant a ``tenants=`` scan found the row in.
        """
        if self.tenants is not None:
            return scanned
        tenant = self.tenant(row) if callable(self.tenant) else self.tenant
        if tenant is not None and not isinstance(tenant, str):
            raise InvalidInputError(
                f"record trigger {self.name!r}: tenant returned {type(tenant).__name__}, expected str or None"
            )
        return tenant

    def tenant_list(self) -> list[str | None]:
        """The tenants one scan covers: ``tenants()``, or one scan for every tenant at once."""
        if self.tenants is None:
            return [None]
        got = self.tenants()
        listed = list(got) if isinstance(got, Iterable) and not isinstance(got, str | bytes) else None
        if listed is None or not all(t is None or (isinstance(t, str) and t) for t in listed):
            raise InvalidInputError(
                f"record trigger {self.name!r}: tenants() must return a list of tenant names, got {got!r}"
            )
        return listed

    def params_for(self, row: Any) -> Mapping[str, Any]:
        """The notifier params for the row.

        Args:
            row: a model instance or row.
        """
        params = self.params(row) if callable(self.params) else self.params
        if not isinstance(params, Mapping):
            raise InvalidInputError(
                f"record trigger {self.name!r}: params returned {type(params).__name__}, expected a dict"
            )
        return params

    def select(self, condition: Any) -> sa.Select[Any]:
        """Rows matching ``condition``, in primary-key order.

        Args:
            condition: a SQL boolean expression.
        """
        base = sa.select(self.model) if self.orm else sa.select(self.table)
        return base.where(condition).order_by(*self.pk)

    def by_key(self, row_id: Any) -> Any:
        """The predicate selecting one row by its JSON primary key.

        Args:
            row_id: a value from :meth:`row_id`.
        """
        return sa.and_(*(col == value for col, value in zip(self.pk, self.pk_values(row_id), strict=True)))

    def after(self, last: tuple[Any, ...] | None) -> Any:
        """The keyset predicate: primary key greater than ``last``.

        Args:
            last: the previous batch's last primary key, or ``None`` to start.
        """
        if last is None:
            return sa.true()
        if len(self.pk) == 1:
            return self.pk[0] > last[0]
        return sa.tuple_(*self.pk) > sa.tuple_(*last)

    def upto(self, end: tuple[Any, ...]) -> Any:
        """The keyset predicate: primary key at most ``end``.

        Args:
            end: a batch's last primary key.
        """
        if len(self.pk) == 1:
            return self.pk[0] <= end[0]
        return sa.tuple_(*self.pk) <= sa.tuple_(*end)

    def id_of(self, values: tuple[Any, ...]) -> Any:
        """A JSON row id from primary-key column values (as :meth:`row_id` gives for the row).

        Args:
            values: the primary key's column values, in order.
        """
        ids = [_json_key(v) for v in values]
        return ids[0] if len(ids) == 1 else ids

    def last_key(self, row: Any) -> tuple[Any, ...]:
        """A row's primary key as column values, for keyset paging.

        Args:
            row: a model instance or row.
        """
        return tuple(getattr(row, attr) for attr in self.pk_attrs)

    def pk_values(self, row_id: Any) -> tuple[Any, ...]:
        """Column values for a JSON row id (UUID strings back to UUIDs).

        Args:
            row_id: a value from :meth:`row_id`.
        """
        raw = row_id if len(self.pk) > 1 else [row_id]
        if not isinstance(raw, list) or len(raw) != len(self.pk):
            raise InvalidInputError(f"record trigger {self.name!r}: bad row id {row_id!r}")
        return tuple(_from_json_key(col, value) for col, value in zip(self.pk, raw, strict=True))


def build(
    name: str,
    *,
    model: Any,
    where: Where,
    notifier: Any,
    action: Any,
    params: Any,
    idempotency_key: Any,
    tenant: Any,
    tenants: Any,
    on_error: Any,
    cron: str | None,
    timezone: str,
    batch_size: int,
    concurrency: int,
    max_attempts: int,
    queue: str | None,
    record_limit: int | None,
    lock_for_update: bool,
    actor: str | None,
    jobs: JobQueue,
    isolate_rows: bool = True,
    now: datetime,
) -> RecordTrigger:
    """Validate a record trigger's declaration; every error names its field.

    Raises:
        InvalidInputError: a field is unusable (``InvalidScheduleError`` for ``cron``/``timezone``).
    """
    if not isinstance(name, str) or not name.strip() or len(name) > 150:
        raise InvalidInputError(f"record trigger name must be 1-150 characters, got {name!r}")
    label = f"record trigger {name!r}"
    table, pk, pk_attrs, orm = _model(label, model)
    if isinstance(action, type) and issubclass(action, Notifier) and notifier is None:
        notifier, action = action, None
    if (notifier is None) == (action is None):
        raise InvalidInputError(f"{label}: give a notifier= or an action= (a function or a registered job), one of them")
    ran: Action | None = None
    if notifier is not None:
        if not (isinstance(notifier, type) and issubclass(notifier, Notifier)) or notifier.__dict__.get("abstract"):
            raise InvalidInputError(f"{label}: notifier must be a Notifier subclass, got {notifier!r}")
        if params is None:
            raise InvalidInputError(f"{label}: params is required with a notifier (a function of the row or a dict)")
        if isinstance(params, Mapping):
            check_json(params, name=f"{label}: params")
        elif not callable(params):
            raise InvalidInputError(
                f"{label}: params must be a function of the row or a dict, got {type(params).__name__}")
        if idempotency_key is not None and not callable(idempotency_key):
            raise InvalidInputError(
                f"{label}: idempotency_key must be a function of the row, got {type(idempotency_key).__name__}")
    else:
        for field_, value in (("params", params), ("idempotency_key", idempotency_key)):
            if value is not None:
                raise InvalidInputError(f"{label}: {field_} applies to a notifier; an action gets the row itself")
        ran = as_action(action, field=f"{label}: action", allowed=ROW_EXTRAS)
    if tenants is not None:
        if not callable(tenants):
            raise InvalidInputError(f"{label}: tenants must be a function returning the tenants to scan")
        if tenant is not None:
            raise InvalidInputError(f"{label}: tenant and tenants cannot both be given; a tenants= scan "
                                    "hands each row the tenant it was found in")
        if not callable(where) or "tenant" not in _params_of(where):
            raise InvalidInputError(f"{label}: with tenants=, where must be a function of (now, tenant) "
                                    "so each tenant's scan sees only its rows")
    _check_where_now(name, label, where, now, tenants is not None)
    if tenant is not None and not isinstance(tenant, str) and not callable(tenant):
        raise InvalidInputError(f"{label}: tenant must be a string, None or a function of the row")
    failed: Action | None = None
    if on_error is not None:
        if not callable(on_error):
            raise InvalidInputError(f"{label}: on_error must be a function (an action run on the row "
                                    f"after the last attempt), got {type(on_error).__name__}")
        failed = as_action(on_error, field=f"{label}: on_error", allowed=(*ROW_EXTRAS, "error"), legacy_ok=True)
    _check_int(label, "batch_size", batch_size, 1, 10_000)
    _check_int(label, "concurrency", concurrency, 1, 32)
    _check_int(label, "max_attempts", max_attempts, 1, None)
    if record_limit is not None:
        _check_int(label, "record_limit", record_limit, 1, None)
    for field_, flag in (("lock_for_update", lock_for_update), ("isolate_rows", isolate_rows)):
        if not isinstance(flag, bool):
            raise InvalidInputError(f"{label}: {field_} must be True or False, got {flag!r}")
    if actor is not None and (not isinstance(actor, str) or not actor):
        raise InvalidInputError(f"{label}: actor must be a non-empty string (an id), got {actor!r}")
    if queue is None:
        if len(name) > 100:
            raise InvalidInputError(f"{label}: the name is too long to name its queue (100 characters); "
                                    "pass queue=")
        queue = name
    elif queue not in jobs.queues:
        raise InvalidInputError(f"{label}: queue {queue!r} is not declared; declared: {sorted(jobs.queues)}")
    return RecordTrigger(
        name=name, model=model, table=table, pk=pk, pk_attrs=pk_attrs, orm=orm, where=where, notifier=notifier,
        action=ran, params=params, idempotency_key=idempotency_key, tenant=tenant, tenants=tenants,
        on_error=failed, cron=None if cron is None else CronExpression(cron, timezone), batch_size=batch_size,
        concurrency=concurrency, max_attempts=max_attempts, queue=queue, record_limit=record_limit,
        lock_for_update=lock_for_update, actor=actor, isolate_rows=isolate_rows,
    )


def _check_int(label: str, field_: str, value: Any, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f">= {low}"
        raise InvalidInputError(f"{label}: {field_} must be an int {span}, got {value!r}")


def _params_of(fn: Any) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def _check_where_now(name: str, label: str, where: Where, now: datetime, per_tenant: bool) -> None:
    if where is None:
        return
    if not callable(where):
        _check_where(name, where)
        return
    try:
        sample = where(now, tenant=None) if per_tenant else where(now)
    except Exception as exc:
        raise InvalidInputError(f"{label}: where(now) raised {type(exc).__name__}: {exc}") from exc
    _check_where(name, sample)


def _model(
    label: str, model: Any
) -> tuple[sa.FromClause, tuple[sa.ColumnElement[Any], ...], tuple[str, ...], bool]:
    if isinstance(model, sa.Table):
        pk: tuple[sa.ColumnElement[Any], ...] = tuple(model.primary_key.columns)
        attrs = tuple(str(col.key) for col in pk)
        table: sa.FromClause = model
        orm = False
    else:
        mapper = sa.inspect(model, raiseerr=False) if isinstance(model, type) else None
        if not isinstance(mapper, Mapper):
            raise InvalidInputError(
                f"{label}: model must be a SQLAlchemy mapped class or Table, got {model!r}"
            )
        pk = tuple(mapper.primary_key)
        # Mapped attribute names may differ from column names.
        attrs = tuple(mapper.get_property_by_column(col).key for col in mapper.primary_key)
        table = mapper.local_table
        orm = True
    if not pk:
        raise InvalidInputError(f"{label}: model {table.description} has no primary key to page by")
    return table, pk, attrs, orm


def _check_where(name: str, expr: Any) -> Any:
    boolean = isinstance(expr, sa.ColumnElement) and isinstance(expr.type, sa.Boolean | sa.types.NullType)
    if not (boolean or isinstance(expr, sa.TextClause)):
        raise InvalidInputError(
            f"record trigger {name!r}: where must be a SQLAlchemy boolean expression "
            f"(e.g. Appointment.cancelled.is_(False)) or a function of now returning one, got {expr!r}"
        )
    return expr


def _json_key(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | str):
        return value
    return str(value)


def _from_json_key(col: sa.ColumnElement[Any], value: Any) -> Any:
    try:
        python_type = col.type.python_type
    except NotImplementedError:
        return value
    if python_type is uuid.UUID and isinstance(value, str):
        return uuid.UUID(value)
    if python_type is datetime and isinstance(value, str):
        return datetime.fromisoformat(value)
    return value


def row_key(row_id: Any) -> str:
    """A JSON row id as text (the tail of a row job's unique key).

    Args:
        row_id: a value from :meth:`RecordTrigger.row_id`.
    """
    return ",".join(str(v) for v in row_id) if isinstance(row_id, list) else str(row_id)

