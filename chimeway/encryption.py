"""Encryption at rest of what a notification says.

With ``Chimeway(encryption_keys=[...])`` the columns that hold a
notification's content — the event's (redacted) params, each delivery's
rendered message, each notification's recipient and inbox content, and the
params collected into digests — are stored as Fernet tokens (AES-128-CBC with
an HMAC-SHA256, from ``cryptography``) and read back in clear only inside a
process that has the keys: to send, to render later workflow steps, and for
``explain`` and the inbox. A database dump, a replica or a SQL console sees
``"fernet:gAAAA..."``.

The column type (:class:`chimeway.types.SealedJSON`) does the work on every
read and write, so no code path can forget it. It finds the keys through the
SQLAlchemy dialect of the connection, an object unique to each engine:
the app binds its own engine's dialect, and the dialect of every caller's
session it is handed (``trigger``, ``inbox(session=...)``).

Keys rotate the ``MultiFernet`` way: put a new key first (it encrypts), keep
the old ones after it (they still decrypt), run ``app.reencrypt()`` to
rewrite stored rows under the new key, then drop the old key.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy.engine import Dialect

from chimeway.errors import ConfigurationError

__all__ = ["SEALED_PREFIX", "Encryption", "bind", "encryption_for", "is_sealed", "unbind"]

SEALED_PREFIX = "fernet:"


class Encryption:
    """A list of Fernet keys: the first encrypts, every one decrypts.

    Args:
        keys: Fernet keys (``Fernet.generate_key()``: 32 url-safe base64-encoded bytes).
    """

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if isinstance(keys, str | bytes) or not isinstance(keys, Sequence) or not keys:
            raise ConfigurationError(
                "encryption_keys must be a non-empty list of Fernet keys, newest first "
                "(make one with cryptography.fernet.Fernet.generate_key())"
            )
        fernets = []
        digests = []
        for index, key in enumerate(keys):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError) as exc:
                raise ConfigurationError(
                    f"encryption_keys[{index}] is not a Fernet key (32 url-safe base64-encoded "
                    "bytes, as Fernet.generate_key() makes)"
                ) from exc
            digests.append(hashlib.sha256(key if isinstance(key, bytes) else key.encode()).hexdigest())
        self._fernet = MultiFernet(fernets)
        # Identifies the key list without keeping a second copy of the keys.
        self.key_ids: tuple[str, ...] = tuple(digests)

    def __repr__(self) -> str:
        return f"Encryption({len(self.key_ids)} key(s))"

    def seal(self, value: Any) -> str:
        """``value`` (JSON) as a Fernet token under the first key."""
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        return SEALED_PREFIX + self._fernet.encrypt(data).decode("ascii")

    def open(self, stored: str) -> Any:
        """The JSON value inside a token made by :meth:`seal` with any of the keys."""
        try:
            data = self._fernet.decrypt(stored[len(SEALED_PREFIX):].encode("ascii"))
        except (InvalidToken, UnicodeEncodeError) as exc:
            raise ConfigurationError(
                "stored data was encrypted with a key that is not in encryption_keys "
                "(keep retired keys after the new one until app.reencrypt() has run)"
            ) from exc
        return json.loads(data)


def is_sealed(value: Any) -> bool:
    """Whether a stored JSON value is a token made by :meth:`Encryption.seal`."""
    return isinstance(value, str) and value.startswith(SEALED_PREFIX)


_BOUND: weakref.WeakKeyDictionary[Dialect, Encryption] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def bind(dialect: Dialect, encryption: Encryption) -> None:
    """Encrypt what goes through connections of ``dialect``'s engine with ``encryption``.

    Raises:
        ConfigurationError: the engine is already bound to other keys.
    """
    with _LOCK:
        current = _BOUND.get(dialect)
        if current is not None and current.key_ids != encryption.key_ids:
            raise ConfigurationError(
                "this engine is already used by a Chimeway app with other encryption_keys"
            )
        _BOUND[dialect] = encryption


def unbind(dialect: Dialect, encryption: Encryption) -> None:
    """Undo :func:`bind` (when the app that bound it closes)."""
    with _LOCK:
        if _BOUND.get(dialect) is encryption:
            del _BOUND[dialect]


def encryption_for(dialect: Dialect) -> Encryption | None:
    """The keys bound to ``dialect``'s engine, if any."""
    return _BOUND.get(dialect)
