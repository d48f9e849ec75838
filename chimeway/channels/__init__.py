"""Channels: where messages go.

``Channel`` is the base class for your own; ``HTTPChannel`` for one that calls
an HTTP API (pooled connections, response classification, ``Retry-After``).
"""

from chimeway.channels._http import HTTPChannel, classify_http, parse_retry_after
from chimeway.channels.apns import Apns
from chimeway.channels.base import Channel
from chimeway.channels.discord import Discord
from chimeway.channels.email import Email
from chimeway.channels.email_providers import Postmark, Resend, SendGrid
from chimeway.channels.email_smtp import SMTP
from chimeway.channels.failover import Failover
from chimeway.channels.in_app import InApp
from chimeway.channels.log import Log
from chimeway.channels.push import Push
from chimeway.channels.ratelimit import RateLimited
from chimeway.channels.slack import Slack
from chimeway.channels.sms import Sms
from chimeway.channels.teams import Teams
from chimeway.channels.webhook import Webhook, sign_webhook, verify_webhook

__all__ = [
    "SMTP",
    "Apns",
    "Channel",
    "Discord",
    "Email",
    "Failover",
    "HTTPChannel",
    "InApp",
    "Log",
    "Postmark",
    "Push",
    "RateLimited",
    "Resend",
    "SendGrid",
    "Slack",
    "Sms",
    "Teams",
    "Webhook",
    "classify_http",
    "parse_retry_after",
    "sign_webhook",
    "verify_webhook",
]
