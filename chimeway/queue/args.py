"""Job arguments: JSON with string keys, checked before anything is written."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from chimeway.errors import InvalidInputError, ParamsNotJSONError
from chimeway.validation import check_chars

__all__ = ["UniqueSpec", "check_args", "unique_key"]

UniqueSpec = bool | tuple[str, ...] | Callable[[dict[str, Any]], str | None] | None

_SCALARS = (str, int, bool, type(None))


def check_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``args`` as a plain dict (``args`` itself when it is one), or raise naming the first bad field.

    Args:
        args: the job's arguments.

    Raises:
        ParamsNotJSONError: a key is not a string, or a value is not JSON
            (objects, sets, bytes, datetimes, NaN and infinities included).
    """
    if type(args) is dict:
        _check(args, "args")
        return args
    if not isinstance(args, Mapping):
        raise ParamsNotJSONError(f"job args must be a mapping, got {type(args).__name__}")
    _check(args, "args")
    return dict(args)


_PLAIN = frozenset({str, int, bool, type(None)})


def _check(value: Any, path: str) -> None:
    kind = type(value)
    if kind is str:
        check_chars(value, f"job {path}")
        return
    if kind in _PLAIN:
        return
    if kind is dict:
        # The common case, checked without ABC machinery; the path string is
        # only built when something below turns out to be wrong.
        for key, item in value.items():
            if type(key) is not str or type(item) not in _PLAIN or (
                    type(item) is str and ("\x00" in item or not item.isascii())) or "\x00" in key:
                break
        else:
            return
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ParamsNotJSONError(f"job {path} is {value!r}, which JSON cannot store")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ParamsNotJSONError(
                    f"job {path} has key {key!r} of type {type(key).__name__}; keys must be str"
                )
            check_chars(key, f"a key of job {path}")
            _check(item, f"{path}.{key}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]")
        return
    raise ParamsNotJSONError(
        f"job {path} is a {type(value).__name__}, which is not JSON; pass ids and plain values"
    )


def unique_key(worker: str, spec: UniqueSpec, args: dict[str, Any]) -> str | None:
    """The ``unique_key`` stored on a job, or ``None`` when it is not unique.

    The key is the worker name plus a digest of the chosen arguments, so two
    workers never collide and long arguments still fit the column.

    Args:
        worker: the worker name.
        spec: ``None``/``False`` (not unique), ``True`` (all args), a tuple
            of argument names, or a callable returning a key or ``None``.
        args: the job's (already checked) arguments.
    """
    if spec is None or spec is False:
        return None
    material: Any
    if spec is True:
        material = args
    elif isinstance(spec, tuple):
        material = {name: args.get(name) for name in spec}
    elif callable(spec):
        material = spec(args)
        if material is None:
            return None
        if not isinstance(material, str):
            raise InvalidInputError(
                f"unique callable for worker {worker!r} returned {type(material).__name__}, "
                "expected str or None"
            )
    else:
        raise InvalidInputError(f"unique for worker {worker!r} must be None, True, a tuple or a callable")
    raw = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return f"{worker}:{hashlib.sha256(raw.encode()).hexdigest()}"
