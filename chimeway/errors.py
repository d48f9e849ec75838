"""Chimeway's exceptions.

Every error Chimeway raises on purpose derives from one root, so callers can
catch everything with a single ``except ChimewayError``. Errors raised by a
driver or a third-party library are wrapped at the boundary; the original is
kept as ``__cause__``.

::

    ChimewayError
    ├── ConfigurationError          the app or a channel is set up wrongly
    │   └── UnknownChannelError     a channel name with no configured channel
    ├── InvalidNotifierError        a Notifier class is malformed (no key, duplicate key, ...)
    ├── InvalidWorkflowError        a workflow's steps are malformed
    ├── InvalidInputError           bad arguments to trigger/track/enqueue
    │   ├── IdempotencyKeyError     missing or blank idempotency key
    │   │   └── IdempotencyConflictError  a used key sent again with another payload
    │   ├── ParamsNotJSONError      params (or job args) that are not JSON
    │   ├── InvalidRecipientError   recipients() returned something that is not a Recipient
    │   └── InvalidScheduleError    a cron expression or time zone that cannot be used
    ├── TemplateRenderError         a template references a missing variable or fails
    ├── NotFoundError               no delivery / event / notification / job with that id
    ├── SignatureError              a webhook or token failed verification
    ├── QueueError                  the job queue refused an operation
    │   └── UnknownQueueError       a queue name no worker serves
    ├── InvalidTransitionError      a delivery status change the state machine forbids (a bug)
    └── DatabaseError               the database failed underneath Chimeway

Every message names the field or value at fault.
"""

from __future__ import annotations

__all__ = [
    "ChimewayError",
    "ConfigurationError",
    "DatabaseError",
    "IdempotencyConflictError",
    "IdempotencyKeyError",
    "InvalidInputError",
    "InvalidNotifierError",
    "InvalidRecipientError",
    "InvalidScheduleError",
    "InvalidTransitionError",
    "InvalidWorkflowError",
    "NotFoundError",
    "ParamsNotJSONError",
    "QueueError",
    "SignatureError",
    "TemplateRenderError",
    "UnknownChannelError",
    "UnknownQueueError",
]


class ChimewayError(Exception):
    """The root of every error Chimeway raises on purpose."""


class ConfigurationError(ChimewayError):
    """The application, a channel or a dispatcher is configured wrongly."""


class UnknownChannelError(ConfigurationError):
    """A notifier asked for a channel name that has no configured channel."""


class InvalidNotifierError(ChimewayError):
    """A ``Notifier`` subclass is malformed (missing key, duplicate key, bad attribute)."""


class InvalidWorkflowError(ChimewayError):
    """A workflow declaration is malformed (empty, unknown channel, negative duration)."""


class InvalidInputError(ChimewayError):
    """Bad arguments were passed to a Chimeway call."""


class IdempotencyKeyError(InvalidInputError):
    """The idempotency key is missing, blank or too long."""


class IdempotencyConflictError(IdempotencyKeyError):
    """An idempotency key already used for an event with another notifier, params or recipients."""


class ParamsNotJSONError(InvalidInputError):
    """Params or job args cannot be stored as JSON."""


class InvalidRecipientError(InvalidInputError):
    """``recipients()`` returned something that is not a list of ``Recipient``."""


class InvalidScheduleError(InvalidInputError):
    """A cron expression, time zone or schedule cannot be used."""


class TemplateRenderError(ChimewayError):
    """A template references a variable that is missing, or fails to render."""


class NotFoundError(ChimewayError):
    """No row with the given id exists."""


class SignatureError(ChimewayError):
    """A signed payload or token failed verification (tampered, expired, unsigned)."""


class QueueError(ChimewayError):
    """The job queue refused an operation."""


class UnknownQueueError(QueueError):
    """A job was enqueued to a queue that is not declared."""


class InvalidTransitionError(ChimewayError):
    """Code asked for a delivery status change that ``chimeway.deliveries`` does not allow."""


class DatabaseError(ChimewayError):
    """The database failed underneath Chimeway; the driver's error is ``__cause__``."""
