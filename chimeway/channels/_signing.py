"""Reading untrusted request parts for signature checks.

Signature checks read headers and bodies that anyone on the network can
send. Whatever arrives (lone surrogates, bytes where text was expected,
enormous numbers), the only error a check may raise is
:class:`~chimeway.errors.SignatureError`, which the feedback endpoints turn
into ``401``. These helpers convert without raising.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from chimeway.errors import SignatureError

__all__ = ["as_bytes", "lowered_headers", "unix_seconds"]

# Unix seconds as ASCII digits: int() would also take "1_700", " 17 " or
# Arabic-Indic digits, and an unbounded number overflows float arithmetic.
_UNIX_SECONDS = re.compile(r"[0-9]{1,15}")


def as_bytes(value: str | bytes | bytearray | memoryview) -> bytes:
    """``value`` as bytes; text is UTF-8 and lone surrogates cannot make it fail."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return bytes(value)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        # What WSGI servers do with header bytes.
        return bytes(value).decode("latin-1")
    return str(value)


def lowered_headers(headers: Mapping[Any, Any]) -> dict[str, str]:
    """Headers by lowercase name, with every value as text."""
    return {_text(name).lower(): _text(value) for name, value in headers.items()}


def unix_seconds(value: str, *, name: str) -> int:
    """A signed timestamp header as an int, or :class:`SignatureError` naming the header.

    Args:
        value: the header's value.
        name: the header's name, for the error message.
    """
    text = value.strip(" \t")
    if not _UNIX_SECONDS.fullmatch(text):
        raise SignatureError(f"{name} must be unix seconds: an integer of at most 15 ASCII digits")
    return int(text)
