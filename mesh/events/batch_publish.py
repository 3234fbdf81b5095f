"""Publish a batch to JetStream and await its acks with one reply subscription.

A JetStream publish is a core NATS publish with a reply subject: the stream answers
there with a PubAck (`{"stream":...,"seq":...}`) or `{"error":{...}}`, and the server
with a 503 status message when no stream takes the subject. nats-py's `publish_async`
does this per message with a semaphore wait, a NUID plus a random token, a Future with
a done callback, and a PubAck dataclass parsed from every answer; in the outbox relay at
thousands of events per second that overhead was about half the relay's CPU (profile:
docs/performance-log.md, "Events"). Here one wildcard subscription per
publisher takes the answers of a batch: message `i` of batch `g` gets the reply subject
`<inbox>.<g>.<i>`, and an answer only marks slot `i`; a success is recognised without
parsing JSON, only an error answer is parsed. The batch itself is written to the client
as one (`mesh.events.nats_writes`, the fenced module that reads nats-py's internals;
`NATS.publish` per message where that is off); otherwise public nats-py API
(`NATS.subscribe`, `NATS.new_inbox`); the client re-subscribes the inbox after a
reconnect, as it does for `publish_async`'s.

Limits: one batch at a time per publisher (the relay's rounds are sequential; a second
concurrent `publish` is refused); answers to an earlier batch that arrive after its
timeout are ignored; the result per message is ok or an exception, not a PubAck.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from mesh.events.errors import PublishTimeoutError
from mesh.events.nats_writes import Outgoing, publish_batch

_STATUS = "Status"
_NO_RESPONDERS = "503"
_PENDING: BaseException = PublishTimeoutError("pending")  # sentinel, never raised


class BatchPublisher:
    """Publishes batches over one NATS connection; `publish()` returns one result each."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._sub: Subscription | None = None
        self._batch = 0
        self._tag = ""
        self._results: list[BaseException | None] | None = None
        self._left = 0
        self._all_answered = asyncio.Event()

    async def publish(
        self, messages: Sequence[Outgoing], timeout_s: float
    ) -> list[BaseException | None]:
        """Publish `messages` pipelined; per message None (acked, duplicates included) or
        the error (JetStream's answer, or PublishTimeoutError if none within `timeout_s`
        of the last publish). A publish that raises (e.g. connection closed) raises."""
        if self._results is not None:
            raise RuntimeError("BatchPublisher: one batch at a time")
        if self._sub is None:
            self._prefix = f"{self._nc.new_inbox()}."
            self._sub = await self._nc.subscribe(f"{self._prefix}>", cb=self._on_answer)
        self._batch += 1
        self._tag = str(self._batch)
        reply = f"{self._prefix}{self._tag}."
        results: list[BaseException | None] = [_PENDING] * len(messages)
        self._results, self._left = results, len(messages)
        self._all_answered.clear()
        try:
            await publish_batch(self._nc, messages, reply)
            if self._left:
                async with asyncio.timeout(timeout_s):
                    await self._all_answered.wait()
        except TimeoutError:
            pass
        finally:
            self._results = None
        timeout = PublishTimeoutError(f"no ack within {timeout_s}s")
        return [timeout if r is _PENDING else r for r in results]

    async def _on_answer(self, msg: Msg) -> None:
        results = self._results
        if results is None:
            return  # an answer to a batch that timed out
        batch, _, index = msg.subject[len(self._prefix) :].partition(".")
        if batch != self._tag or not index.isdigit():
            return
        i = int(index)
        if i >= len(results) or results[i] is not _PENDING:
            return
        results[i] = _error_of(msg)
        self._left -= 1
        if not self._left:
            self._all_answered.set()

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None and not self._nc.is_closed:
            await sub.unsubscribe()


def _error_of(msg: Msg) -> BaseException | None:
    """None for a PubAck, else the error the answer carries."""
    if msg.headers and msg.headers.get(_STATUS):
        status = msg.headers[_STATUS]
        if status == _NO_RESPONDERS:
            return nats.js.errors.NoStreamResponseError()
        code = int(status) if status.isdigit() else None
        return nats.js.errors.APIError(code=code, description=str(msg.headers))
    data = msg.data
    if b'"error"' not in data:
        return None if data[:1] == b"{" else nats.js.errors.APIError(description=repr(data[:200]))
    try:
        # Raises the APIError subclass for the answer's code (NotFoundError, ...).
        nats.js.errors.APIError.from_error(json.loads(data)["error"])
    except Exception as exc:  # a malformed answer is a failed publish too, never an ack
        return exc
    return nats.js.errors.APIError(description=repr(data[:200]))
