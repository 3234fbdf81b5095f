"""Errors raised by the event runtime."""

from __future__ import annotations

import asyncio


class EventsError(Exception):
    """Base of every error raised by `mesh.events`."""


class EventsTimeoutError(EventsError, asyncio.TimeoutError):
    """An events operation ran out of time; catchable as `asyncio.TimeoutError` too."""


class PublishTimeoutError(EventsTimeoutError):
    """JetStream did not acknowledge a publish in time."""


class UnknownEventError(EventsError, ValueError):
    """An event type or payload that the envelope does not know."""
