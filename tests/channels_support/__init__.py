"""Local fake vendor servers and message builders shared by the channel tests and benchmarks."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from channels_support.server import FakeServer, Recorded, Reply, refused_url, running
from channels_support.vendors import (
    FakeDiscord,
    FakeFcm,
    FakeSlack,
    FakeTeams,
    FakeTwilio,
    FakeWebhookReceiver,
    discord_rate_limited,
    fcm_error,
    twilio_error,
)
from chimeway.values import Message, Recipient

__all__ = [
    "FakeDiscord",
    "FakeFcm",
    "FakeServer",
    "FakeSlack",
    "FakeTeams",
    "FakeTwilio",
    "FakeWebhookReceiver",
    "Recorded",
    "Reply",
    "discord_rate_limited",
    "fcm_error",
    "make_message",
    "refused_url",
    "running",
    "service_account",
    "twilio_error",
]


def make_message(
    channel: str,
    fields: Mapping[str, Any],
    *,
    recipient: Recipient | None = None,
    notifier_key: str = "order_shipped",
    tenant: str | None = "acme",
    attempt: int = 1,
) -> Message:
    """A rendered message as the executor would hand it to a channel."""
    return Message(
        delivery_id=uuid.uuid4(),
        notification_id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        tenant=tenant,
        channel=channel,
        notifier_key=notifier_key,
        recipient=recipient
        or Recipient(
            id="user:42",
            email="ada@example.com",
            phone="+15005550006",
            push_tokens=("device-token-aaaaaa1",),
        ),
        fields=dict(fields),
        attempt=attempt,
        created_at=datetime(2026, 11, 22, 6, 0, tzinfo=UTC),
    )


@lru_cache(maxsize=1)
def _rsa_key() -> rsa.RSAPrivateKey:
    # Generated per test run: no private key is ever stored in the repository.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def service_account(
    token_uri: str, project_id: str = "chimeway-test"
) -> tuple[dict[str, Any], Any]:
    """A Google service-account JSON with a fresh RSA key, and that key's public half."""
    key = _rsa_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    account = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": f"chimeway@{project_id}.iam.gserviceaccount.com",
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }
    return account, key.public_key()
