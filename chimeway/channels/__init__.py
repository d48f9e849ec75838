"""Channels: where messages go. ``Channel`` is the base class for your own."""

from chimeway.channels.base import Channel
from chimeway.channels.in_app import InApp

__all__ = ["Channel", "InApp"]
