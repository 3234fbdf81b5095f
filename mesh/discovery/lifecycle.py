"""Small pieces every backend shares: outage logging and close-aware waiting.

`Availability` turns a stream of successes and failures into two log lines per
outage (one when it starts, one when it ends), so a registry that is down for
an hour does not log once per poll. `Closer` lets background loops and watches
sleep or wait on a request while still ending promptly on `close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


class Closed(Exception):
    """The registry was closed while waiting (internal: ends watches and loops)."""


class Availability:
    """Tracks whether one kind of registry access works, logging only transitions."""

    def __init__(
        self,
        what: str,
        logger: logging.Logger,
        consequence: str = "keeping the last known instances and retrying",
    ) -> None:
        self.what = what
        self._log = logger
        self._consequence = consequence
        self._down = False

    @property
    def down(self) -> bool:
        return self._down

    def failed(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            self._log.warning(
                "%s unreachable (%s); %s",
                self.what,
                exc if str(exc) else type(exc).__name__,
                self._consequence,
            )

    def ok(self) -> None:
        if self._down:
            self._down = False
            self._log.info("%s reachable again", self.what)


class Closer:
    """A close flag that sleeping or waiting coroutines notice at once.

    `sleep` is what every registry watch and heartbeat loop waits in, several times a
    second in each process (an idle process's largest cost; `asyncio.wait_for` on the
    event made a task, a timer and a cancellation per sleep): a sleep is one future and
    one timer, which `close` wakes early.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._sleepers: set[asyncio.Future[None]] = set()

    @property
    def closed(self) -> bool:
        return self._event.is_set()

    def close(self) -> None:
        self._event.set()
        for sleeper in self._sleepers:
            _wake(sleeper)

    async def sleep(self, delay_s: float) -> None:
        """Sleep `delay_s`; raise `Closed` as soon as the registry closes."""
        if self._event.is_set():
            raise Closed
        loop = asyncio.get_running_loop()
        sleeper: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(delay_s, _wake, sleeper)
        self._sleepers.add(sleeper)
        try:
            await sleeper
        finally:
            timer.cancel()
            self._sleepers.discard(sleeper)
        if self._event.is_set():
            raise Closed

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` unless the registry closes first (then cancel it, raise Closed)."""
        if self._event.is_set():
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise Closed
        work: asyncio.Future[T] = asyncio.ensure_future(awaitable)
        closing: asyncio.Future[bool] = asyncio.ensure_future(self._event.wait())
        pending: set[asyncio.Future[Any]] = {work, closing}
        try:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
        if work.cancelled():
            raise Closed
        return work.result()


def _wake(sleeper: asyncio.Future[None]) -> None:
    if not sleeper.done():
        sleeper.set_result(None)
