"""``Notifier``: what users subclass to declare a kind of notification.

A notifier says who receives it (``recipients``), over which channels
(``channels`` / ``channels_for``), and what each channel's message says
(``templates`` or ``build``). Classes register by ``key`` when defined, so a
worker process that imports the user's app knows every notifier.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from chimeway.errors import InvalidNotifierError
from chimeway.values import Recipient
from chimeway.workflow.steps import validate_workflow

__all__ = ["Notifier", "Recipient", "get_notifier", "possible_channels", "registered_notifiers"]

_REGISTRY: dict[str, type[Notifier]] = {}


class Notifier:
    """Base class for notifications.

    Class attributes:
        key: stable string stored with every event (required).
        version: bump when the meaning of the notifier changes.
        category: optional grouping used by preferences.
        channels: default channel names for every recipient.
        templates: Jinja2 source per channel per message field.
        critical: ``True`` for messages that bypass opt-outs (password resets).
        abstract: ``True`` on intermediate base classes that are not registered.
        workflow: optional list of steps (see :mod:`chimeway.workflow`).
        digest: optional ``chimeway.digest.Digest``: batch events per recipient.
        dedupe_key: optional ``chimeway.policy.Dedupe``: drop repeats within a window.
        caps: ``chimeway.policy.Cap`` limits for this notifier, per recipient × channel.
        schedule: optional cron expression; ``app.schedule(ThisNotifier)``
            triggers it on every tick with ``params_for_schedule(tick)``.
        sensitive: more params names whose values are never stored, beside
            the secret-looking ones (compared without case or separators).
        default_channels_enabled: channel → ``False`` to start a channel off
            until the recipient opts in (preferences).
    """

    key: ClassVar[str]
    version: ClassVar[int] = 1
    category: ClassVar[str | None] = None
    channels: ClassVar[Sequence[str]] = ()
    templates: ClassVar[Mapping[str, Mapping[str, str]]] = {}
    critical: ClassVar[bool] = False
    abstract: ClassVar[bool] = False
    workflow: ClassVar[Sequence[Any] | None] = None
    digest: ClassVar[Any] = None
    dedupe_key: ClassVar[Any] = None
    caps: ClassVar[Sequence[Any]] = ()
    schedule: ClassVar[str | None] = None
    sensitive: ClassVar[Collection[str]] = frozenset()
    default_channels_enabled: ClassVar[Mapping[str, bool]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("abstract", False):
            return
        key = cls.__dict__.get("key", getattr(cls, "key", None))
        if not isinstance(key, str) or not key.strip():
            raise InvalidNotifierError(
                f"notifier {cls.__qualname__} has no `key`: set key = \"a_stable_name\" "
                "(or abstract = True on a base class)"
            )
        if not isinstance(cls.version, int) or cls.version < 1:
            raise InvalidNotifierError(
                f"notifier {cls.__qualname__}: `version` must be a positive int, got {cls.version!r}"
            )
        if isinstance(cls.channels, str) or not all(isinstance(c, str) for c in cls.channels):
            raise InvalidNotifierError(
                f"notifier {cls.__qualname__}: `channels` must be a list of channel names"
            )
        _check_spelling(cls)
        _check_templates(cls)
        _check_sensitive(cls)
        if cls.workflow is not None:
            validate_workflow(cls)
        existing = _REGISTRY.get(key)
        if existing is not None and not _same_definition(existing, cls):
            raise InvalidNotifierError(
                f"notifier key {key!r} is already used by {existing.__module__}.{existing.__qualname__}; "
                f"{cls.__module__}.{cls.__qualname__} needs another key"
            )
        _REGISTRY[key] = cls

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        """Return who receives this notification for ``params``."""
        raise NotImplementedError(f"{type(self).__name__}.recipients() is not implemented")

    def channels_for(self, params: Mapping[str, Any], recipient: Recipient) -> Sequence[str]:
        """Return the channel names for one recipient (default: ``channels``)."""
        return self.channels

    def params_for_schedule(self, tick: datetime) -> Mapping[str, Any]:
        """Return the params for the scheduled run at ``tick`` (aware UTC); default ``{}``."""
        return {}

    def build(
        self, params: Mapping[str, Any], recipient: Recipient, channel: str
    ) -> Mapping[str, Any] | None:
        """Return the message fields for one channel, or ``None`` to use ``templates``."""
        return None


def _options() -> frozenset[str]:
    # The options are what the Notifier class itself declares: a new option
    # added to the class body is known here with no second list to update.
    names = [*vars(Notifier), *Notifier.__annotations__]
    return frozenset(name for name in names if not name.startswith("_"))


def _check_spelling(cls: type[Notifier]) -> None:
    """Refuse an attribute whose name is a near miss of an option (``dedupe`` for ``dedupe_key``).

    A misspelled option would otherwise be ignored without a word. Names of
    one's own that start with an underscore are never checked.
    """
    options = _options()
    methods = sorted(name for name in options if inspect.isfunction(vars(Notifier).get(name)))
    for name, value in vars(cls).items():
        if name.startswith("_") or name in options:
            continue
        # A method of one's own (build_url) may share a stem with an option;
        # only a near-identical spelling of a method option is taken as a typo.
        if inspect.isfunction(value):
            close = difflib.get_close_matches(name, methods, n=1, cutoff=0.85)
        else:
            close = difflib.get_close_matches(name, sorted(options), n=1, cutoff=0.75)
        if close:
            raise InvalidNotifierError(
                f"notifier {cls.__qualname__}: `{name}` is not a Notifier option; did you mean "
                f"`{close[0]}`? (start a name of your own with an underscore)"
            )


def possible_channels(notifier: type[Notifier]) -> tuple[str, ...] | None:
    """The channels ``notifier`` can send over, or ``None`` when that is decided per call.

    A workflow's ``deliver`` steps (failure branches and routes included) decide for a
    notifier with a workflow; otherwise ``channels``, unless ``channels_for``
    is overridden, which may pick any channel for a given recipient.
    """
    if notifier.workflow is not None:
        return tuple(dict.fromkeys(_step_channels(notifier.workflow)))
    if notifier.channels_for is not Notifier.channels_for:
        return None
    return tuple(dict.fromkeys(notifier.channels))


def _step_channels(steps: Iterable[Any]) -> Iterator[str]:
    # Steps are validated when the class is defined; only deliver steps name a channel.
    for step in steps:
        channel = getattr(step, "channel", None)
        if isinstance(channel, str):
            yield channel
        for branch in getattr(step, "branches", ()):
            yield from _step_channels(branch)


def _check_templates(cls: type[Notifier]) -> None:
    if not isinstance(cls.templates, Mapping):
        raise InvalidNotifierError(f"notifier {cls.__qualname__}: `templates` must be a dict")
    for channel, fields in cls.templates.items():
        if not isinstance(fields, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in fields.items()
        ):
            raise InvalidNotifierError(
                f"notifier {cls.__qualname__}: templates[{channel!r}] must map field names to "
                "template strings"
            )


def _check_sensitive(cls: type[Notifier]) -> None:
    names = cls.sensitive
    if isinstance(names, str | bytes | Mapping) or not isinstance(names, Collection) or not all(
        isinstance(name, str) and name.strip() for name in names
    ):
        raise InvalidNotifierError(
            f"notifier {cls.__qualname__}: `sensitive` must be a set of params names, "
            f"e.g. {{\"ssn\", \"date_of_birth\"}}; got {names!r}"
        )


def _same_definition(a: type[Notifier], b: type[Notifier]) -> bool:
    # Re-importing a module (reloaders, `python -m` plus import) defines the
    # same class again; that is not a conflict.
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def get_notifier(key: str) -> type[Notifier]:
    """Return the notifier class registered under ``key``."""
    try:
        return _REGISTRY[key]
    except KeyError:
        raise InvalidNotifierError(f"no notifier is registered with key {key!r}") from None


def registered_notifiers() -> dict[str, type[Notifier]]:
    """A copy of the registry: key → class."""
    return dict(_REGISTRY)
