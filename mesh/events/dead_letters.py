"""The dead-letter stream, read and worked off: list, replay, drop.

A consumer that gives up on an event (mesh/events/consumer.py) republishes it to
`dlq.<subject>` with why (`Shop-Dlq-Error`), who (`Shop-Dlq-Consumer`), how often it
was tried and its original message id, and terminates it. The `DLQ` stream keeps it
for 30 days; nothing else looked at it. Here:

- `dead_letters` reads them in stream order (the `dead-letters` identity may read and
  delete the `DLQ` stream's messages and nothing else: mesh/events/nats_auth.py);
- `replay` publishes one again to its original subject, with its original headers and
  a new `Nats-Msg-Id` (`<original id>:replay:<dead letter's sequence>`: a second
  replay of the same dead letter within the stream's duplicate window is folded into
  the first, while the original id would be dropped as a duplicate). It is published
  with the JetStream client of the identity that owns the event's domain (the only
  one allowed to publish it), so every consumer of the subject gets it again: the one
  that gave up handles it (once fixed), and one that had handled it skips it by its
  event id (an idempotent consumer, `Inbox`). A consumer that is not idempotent sees
  it twice;
- `remove` deletes a dead letter (after its replay was acknowledged, or to drop it).

Limits: replay goes to every consumer of the subject, not only to the one that gave
up (JetStream cannot redeliver a terminated message to one durable); a dead letter
replayed and given up on again comes back as a new dead letter.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext

from mesh.events.consumer import (
    HDR_DLQ_CONSUMER,
    HDR_DLQ_DELIVERIES,
    HDR_DLQ_ERROR,
    HDR_DLQ_ORIGINAL_ID,
    HDR_DLQ_STREAM,
    HDR_DLQ_SUBJECT,
)
from mesh.events.envelope import HDR_MSG_ID
from mesh.events.streams import DLQ_PREFIX

_DLQ_HEADERS = frozenset(
    {HDR_DLQ_CONSUMER, HDR_DLQ_DELIVERIES, HDR_DLQ_ERROR, HDR_DLQ_ORIGINAL_ID,
     HDR_DLQ_STREAM, HDR_DLQ_SUBJECT}
)  # fmt: skip
EVERY = f"{DLQ_PREFIX}.>"


class DeadLetterNotFound(LookupError):
    """No dead letter with that sequence (never was, or already replayed or dropped)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    seq: int  # in the DLQ stream
    time: dt.datetime | None
    subject: str  # the event's own subject, where a replay goes
    consumer: str  # the durable that gave up
    deliveries: str
    error: str
    original_id: str
    data: bytes
    headers: dict[str, str]

    @classmethod
    def of(cls, msg: nats.js.api.RawStreamMsg) -> DeadLetter:
        headers = {k: str(v) for k, v in (msg.headers or {}).items()}
        dlq_subject = msg.subject or ""
        return cls(
            seq=msg.seq or 0,
            time=msg.time,
            subject=headers.get(HDR_DLQ_SUBJECT) or dlq_subject.removeprefix(f"{DLQ_PREFIX}."),
            consumer=headers.get(HDR_DLQ_CONSUMER, ""),
            deliveries=headers.get(HDR_DLQ_DELIVERIES, ""),
            error=headers.get(HDR_DLQ_ERROR, ""),
            original_id=headers.get(HDR_DLQ_ORIGINAL_ID, ""),
            data=msg.data or b"",
            headers=headers,
        )

    def replay_headers(self) -> dict[str, str]:
        """The event's own headers, a replay's message id (module doc)."""
        kept = {k: v for k, v in self.headers.items() if k not in _DLQ_HEADERS}
        kept[HDR_MSG_ID] = f"{self.original_id or 'dlq'}:replay:{self.seq}"
        return kept


async def dead_letters(
    js: JetStreamContext, stream: str, *, subject: str = EVERY, limit: int = 100
) -> tuple[list[DeadLetter], int]:
    """The first `limit` dead letters on `subject` (a `dlq.` pattern) in stream order,
    and how many the stream holds in all."""
    info = await js.stream_info(stream)
    found: list[DeadLetter] = []
    seq = info.state.first_seq or 1
    while len(found) < limit and seq <= (info.state.last_seq or 0):
        try:
            msg = await js.get_msg(stream, seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            break
        found.append(DeadLetter.of(msg))
        seq = (msg.seq or seq) + 1
    return found, info.state.messages


async def get(js: JetStreamContext, stream: str, seq: int) -> DeadLetter:
    try:
        return DeadLetter.of(await js.get_msg(stream, seq))
    except nats.js.errors.NotFoundError:
        raise DeadLetterNotFound(f"no dead letter #{seq} in {stream}") from None


async def replay(owner: JetStreamContext, dead: DeadLetter) -> int:
    """Publish `dead` again to its subject as its domain's owner (`owner`'s client);
    the sequence JetStream stored it under."""
    ack = await owner.publish(dead.subject, dead.data, headers=dead.replay_headers(), timeout=5)
    return int(ack.seq)


async def remove(js: JetStreamContext, stream: str, seq: int) -> None:
    try:
        await js.delete_msg(stream, seq)
    except nats.js.errors.NotFoundError:
        raise DeadLetterNotFound(f"no dead letter #{seq} in {stream}") from None
