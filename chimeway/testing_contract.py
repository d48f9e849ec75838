"""A reusable contract for channel authors: run it in your own test suite.

``channel_contract`` builds your channel against a few local endpoints and
checks the promises every channel makes to the executor:

* ``send`` and ``send_async`` return a :class:`~chimeway.values.DeliveryResult`
  with a known outcome; they do not raise;
* a provider that cannot be reached (connection refused) or that hangs up
  mid-conversation is reported as ``temporary``, so the delivery is retried;
* ``validate`` returns a string or ``None``, also for a message with no fields;
* the secrets you configured never appear in a result's ``detail``,
  ``error_class``, ``vendor_code`` or ``provider_message_id``, nor in the
  channel's ``repr``.

::

    def test_pager_contract(pager_server):
        channel_contract(
            lambda host, port: Pager(url=f"http://{host}:{port}", token="s3cret"),
            server=("127.0.0.1", pager_server.port),   # a fake that accepts
            secrets=["s3cret"],
        )

It checks behaviour at the channel's boundary only; it does not know your
provider's protocol, so keep your own tests for request shapes and error
mapping.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import get_args

from chimeway.channels.base import Channel
from chimeway.values import DeliveryResult, Message, Outcome, Recipient

__all__ = ["ContractReport", "ContractViolation", "channel_contract", "contract_message"]

OUTCOMES = frozenset(get_args(Outcome))


class ContractViolation(AssertionError):
    """The channel broke one or more of the contract's promises."""


@dataclass
class ContractReport:
    """What the contract checked.

    Args:
        passed: names of the checks that passed.
        results: the results the channel returned, by check name.
    """

    passed: list[str] = field(default_factory=list)
    results: dict[str, DeliveryResult] = field(default_factory=dict)


def contract_message(fields: dict[str, object] | None = None) -> Message:
    """A message with the fields most channels read, for a fully known recipient.

    Args:
        fields: the rendered fields to use instead of the defaults.
    """
    return Message(
        delivery_id=uuid.uuid4(),
        notification_id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        tenant="contract",
        channel="contract",
        notifier_key="contract_check",
        recipient=Recipient(
            id="user:contract",
            email="contract@example.test",
            phone="+15005550006",
            name="Contract Check",
            push_tokens=("contract-device-token",),
        ),
        fields=fields
        if fields is not None
        else {
            "subject": "Contract check",
            "title": "Contract check",
            "body": "Contract check body",
            "text": "Contract check body",
            "html": "<p>Contract check body</p>",
        },
    )


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _hangup_server() -> Iterator[int]:
    """A server that accepts each connection and closes it at once."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()


def channel_contract(
    channel_factory: Callable[[str, int], Channel],
    *,
    server: tuple[str, int] | None = None,
    message: Message | None = None,
    secrets: Iterable[str] = (),
    expect: Outcome | None = "succeeded",
) -> ContractReport:
    """Check a channel against the contract; raise :class:`ContractViolation` listing every breach.

    Args:
        channel_factory: builds the channel to talk to ``(host, port)``.
        server: a live local fake of your provider; when given, ``send`` and
            ``send_async`` are each called against it once.
        message: the message to send (default: :func:`contract_message`).
        secrets: values you configured (tokens, passwords) that must never
            leak into results.
        expect: the outcome the live ``server`` should produce, or ``None``
            to accept any valid outcome.
    """
    message = message or contract_message()
    hidden = [s for s in secrets if s]
    report = ContractReport()
    problems: list[str] = []

    def check_result(check: str, result: object, outcome: Outcome | None) -> None:
        if not isinstance(result, DeliveryResult):
            problems.append(f"{check}: returned {type(result).__name__}, not a DeliveryResult")
            return
        report.results[check] = result
        ok = True
        if result.outcome not in OUTCOMES:
            problems.append(f"{check}: unknown outcome {result.outcome!r}")
            ok = False
        elif outcome is not None and result.outcome != outcome:
            problems.append(f"{check}: expected {outcome}, got {result.outcome} ({result.detail})")
            ok = False
        texts = (result.detail, result.error_class, result.vendor_code, result.provider_message_id)
        for secret in hidden:
            if any(text and secret in text for text in texts):
                problems.append(f"{check}: a configured secret appears in the result")
                ok = False
        if ok:
            report.passed.append(check)

    def send(check: str, channel: Channel, outcome: Outcome | None) -> None:
        try:
            result = channel.send(message)
        except Exception as exc:
            problems.append(
                f"{check}: send raised {type(exc).__name__} instead of returning a result"
            )
        else:
            check_result(check, result, outcome)

    def send_async(check: str, channel: Channel, outcome: Outcome | None) -> None:
        try:
            result = asyncio.run(channel.send_async(message))
        except Exception as exc:
            problems.append(
                f"{check}: send_async raised {type(exc).__name__} instead of returning a result"
            )
        else:
            check_result(check, result, outcome)

    def build(host: str, port: int) -> Channel:
        channel = channel_factory(host, port)
        if any(secret in repr(channel) for secret in hidden):
            problems.append("repr: a configured secret appears in repr(channel)")
        return channel

    dead = build("127.0.0.1", _unused_port())
    try:
        for check, fields, recipient in (
            ("validate", message.fields, message.recipient),
            ("validate_empty", {}, Recipient(id="user:contract-empty")),
        ):
            try:
                answer = dead.validate(fields, recipient)
            except Exception as exc:
                problems.append(f"{check}: raised {type(exc).__name__}")
                continue
            if answer is None or isinstance(answer, str):
                report.passed.append(check)
            else:
                problems.append(f"{check}: returned {type(answer).__name__}, not str or None")
        if dead.validate(message.fields, message.recipient) is None:
            send("unreachable", dead, "temporary")
            send_async("unreachable_async", dead, "temporary")
    finally:
        dead.close()

    with _hangup_server() as port:
        hangup = build("127.0.0.1", port)
        try:
            send("hangup", hangup, "temporary")
        finally:
            hangup.close()

    if server is not None:
        live = build(*server)
        try:
            send("server", live, expect)
            send_async("server_async", live, expect)
        finally:
            live.close()

    if problems:
        raise ContractViolation("channel contract broken:\n  " + "\n  ".join(problems))
    return report
