"""Fetch batches from a durable JetStream pull consumer over one core NATS subscription.

A pull is a core NATS request: publish `{"batch": n, ...}` to
`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` with a reply inbox, and the server
sends up to `n` messages to that inbox, then (if it delivered fewer) a status message:
404 "No Messages" for a `no_wait` request, 408 when a waiting request expires, 409 for
a request it drops (leadership change, too many waiting); 100 is a heartbeat. nats-py's
`PullSubscription.fetch` waits for each message of a batch with `next_msg`, which makes
a task, a uuid4 and a `wait_for` per message: a fifth of the consumer's CPU at
thousands of events per second (profile: docs/performance-log.md,
"Events"). Here a callback appends the inbox's messages to a buffer and a fetch waits
on one event per step. Public nats-py API only (`NATS.subscribe`, `NATS.publish`,
`NATS.new_inbox`; the messages are ordinary `Msg`s with `ack`/`nak`/`metadata`).

A fetch: take what the buffer holds (messages of an earlier request that arrived after
its fetch returned); if that is short of `batch` and no waiting request of ours is open,
ask for the rest with `no_wait` and wait for them or the 404; if still nothing, wait on
the open waiting request, or send one (`expires` = what is left of the timeout), and
return at its first message. Raises `nats.errors.TimeoutError` when nothing came in
time, and the JetStream error for any other status (503 when the consumer is gone or
the server is shutting down): the consume loop re-binds. Unlike nats-py 2.16's fetch,
an error status never drops messages already received; they stay in the buffer for
the next fetch.

One waiting request at a time, kept across fetches until it is used up (`batch`
messages), expires (408), is dropped (409) or the client reconnects, as nats.go's
`Consume` keeps its pull request open: a fetch that returned at a waiting request's
first message leaves it open with room for `batch - 1` more, and the next fetch waits
on it instead of asking again. Asking again each time (a `no_wait` request, its 404,
a new waiting request per message) left a waiting request open per message for its
whole `expires`, and each one's 408 ended the current fetch's wait and started two
more requests: at 100 messages/s the consumer's connection sent 8.2 and received 7.6
NATS messages per message consumed and nats-server spent ~2 ms of CPU on each
(measured: "A consumer at the shop's rates" in docs/performance-log.md).

Limits: one fetch at a time; the inbox lives as long as the fetcher (the client
re-subscribes it after a reconnect), so a message answering a request sent before an
outage still lands here. A waiting request the server forgot without a status (its
restart without a reconnect of ours) is waited on until its `expires` and
`_EXPIRY_GRACE_S` have passed, at most a fetch timeout plus a quarter second.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections import deque
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

_STATUS = "Status"
_HEARTBEAT = "100"
_EMPTY = "404"  # the end of a no_wait request; 408 and 409 end a waiting one
# How long `close` waits for the server to confirm the inbox's end (one round trip).
_DRAIN_TIMEOUT_S = 2.0
_ENDED = frozenset({_EMPTY, "408", "409"})  # the request is over; not an error
_NO_RESPONDERS = "503"
# How long after its `expires` a waiting request still counts as open without its 408.
_EXPIRY_GRACE_S = 0.25


class PullFetcher:
    """`fetch(batch, timeout)` for one durable consumer; `close()` when done."""

    def __init__(
        self, nc: NATS, stream: str, consumer: str, *, api_prefix: str = "$JS.API"
    ) -> None:
        self._nc = nc
        self._next = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._buf: deque[Msg] = deque()
        self._ended = 0  # 404/408/409s seen: a request is over
        self._error: BaseException | None = None
        self._wake = asyncio.Event()
        # The open waiting request: how many messages it may still bring, until when it
        # counts as open (monotonic) and the client's reconnect count when it was sent.
        self._waiting_left = 0
        self._waiting_until = 0.0
        self._waiting_reconnects = 0

    async def start(self) -> None:
        if self._sub is None:
            self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)

    async def close(self) -> None:
        """Stop taking messages and hand back those received but not returned by a fetch.

        The inbox is drained (nats-py's `drain`: the unsubscribe, then a round trip, then
        the messages queued here handed to the buffer), so the open waiting request ends
        with it (the server stops delivering to a reply subject nobody listens on) and
        whatever the server sent before it saw the unsubscribe is in the buffer. Then each
        buffered message is nak'ed: redelivered at once to whichever instance fetches
        next, instead of after `ack_wait` (30 s by default) as a message a stopped
        consumer just held would be. Not connected (an outage), or no answer within
        `_DRAIN_TIMEOUT_S`, the inbox is dropped without the round trip, as before, and
        only what is in the buffer already is nak'ed."""
        sub, self._sub = self._sub, None
        if sub is None or self._nc.is_closed:
            return
        drained = False
        if self._nc.is_connected:
            with contextlib.suppress(TimeoutError, nats.errors.Error):
                async with asyncio.timeout(_DRAIN_TIMEOUT_S):
                    await sub.drain()  # type: ignore[no-untyped-call]
                    drained = True
        if not drained:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        held, self._buf = list(self._buf), deque()
        for msg in held:
            await msg.nak()

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get(_STATUS) if msg.headers else None
        if not status:
            self._buf.append(msg)
            if self._waiting_left > 0:
                self._waiting_left -= 1
        elif status == _HEARTBEAT:
            return
        elif status in _ENDED:
            self._ended += 1
            if status != _EMPTY:
                self._waiting_left = 0
        elif status == _NO_RESPONDERS:
            self._waiting_left = 0
            self._error = nats.js.errors.ServiceUnavailableError()
        else:
            self._waiting_left = 0
            code = int(status) if status.isdigit() else None
            self._error = nats.js.errors.APIError(code=code, description=str(msg.headers))
        self._wake.set()

    def _answered(self, ended: int) -> bool:
        """A message came, or a request ended since `ended` requests had."""
        return bool(self._buf) or self._ended > ended

    def _waiting(self, now: float) -> bool:
        """Whether our waiting request is still open at the server (as far as we know)."""
        return (
            self._waiting_left > 0
            and now < self._waiting_until
            and self._nc.stats["reconnects"] == self._waiting_reconnects
        )

    async def fetch(self, batch: int, timeout_s: float) -> list[Msg]:
        """Up to `batch` messages, at least one, within `timeout_s` seconds."""
        start = time.monotonic()
        deadline = start + timeout_s
        self._raise_error()
        if len(self._buf) < batch and not self._waiting(start):
            # What is there now, without waiting for the server to have more. (An
            # earlier request ending meanwhile ends this wait early: harmless.)
            ended = self._ended
            await self._request({"batch": batch - len(self._buf), "no_wait": True})
            await self._wait(lambda: len(self._buf) >= batch or self._ended > ended, deadline)
        while not self._buf and self._error is None:
            # Nothing yet: wait on our waiting request (sent now if none is open),
            # answered by the first message or its end (408).
            now = time.monotonic()
            left = deadline - now
            if left <= 0.01:
                break
            if not self._waiting(now):
                expires = left - 0.005
                self._waiting_left = batch
                self._waiting_until = now + expires + _EXPIRY_GRACE_S
                self._waiting_reconnects = self._nc.stats["reconnects"]
                await self._request({"batch": batch, "expires": int(expires * 1e9)})
            await self._wait(functools.partial(self._answered, self._ended),
                             min(deadline, self._waiting_until))  # fmt: skip
        if not self._buf:
            self._raise_error()
            raise nats.errors.TimeoutError
        n = min(batch, len(self._buf))
        return [self._buf.popleft() for _ in range(n)]

    async def _request(self, body: dict[str, int | bool]) -> None:
        await self.start()
        await self._nc.publish(self._next, json.dumps(body).encode(), reply=self._inbox)

    async def _wait(self, done: Callable[[], bool], deadline: float) -> None:
        while not done() and self._error is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            try:
                async with asyncio.timeout(left):
                    await self._wake.wait()
            except TimeoutError:
                return

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error
