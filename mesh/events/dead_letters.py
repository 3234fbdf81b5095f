"""The dead-letter stream, read and worked off: list, replay, drop.

A consumer that gives up on an event (mesh/events/consumer.py) republishes it to
`dlq.<subject>` with why (`Shop-Dlq-Error`), who (`Shop-Dlq-Consumer`), how often it
was tried and its original message id, and terminates it. The `DLQ` stream keeps it
for 30 days; nothing else looked at it. Here:

- `dead_letters` reads them in stream order (the `dead-letters` identity may read and
  delete the `DLQ` stream's messages and nothing else: mesh/events/nats_auth.py);
- `replay` publishes the event again to its subject as the identity that owns its
  domain (the only one allowed to publish it), so every consumer of the subject gets it
  again: the one that gave up handles it (once fixed), and one that had handled it
  skips it by its event id (an idempotent consumer, `Inbox`). A consumer that is not
  idempotent sees it twice. What is published is the event **as its own stream holds
  it** (its owner reads it back by the sequence the dead letter names), never the dead
  letter's copy: a consumer's identity may write anything to `dlq.<what it consumes>`,
  and replaying that copy as the owner would publish a forgery under the owner's
  name. The subject is the dead letter's own (`dlq.<subject>`, which NATS permissions
  bind to the consumers of `<subject>`), not a header; the original must be an event of
  that subject, or the replay is refused. It goes with a new `Nats-Msg-Id`
  (`<original id>:replay:<dead letter's sequence>`: a second replay of the same dead
  letter within the duplicate window is folded into the first, while the original id
  would be dropped as a duplicate);
- `remove` deletes a dead letter (after its replay was acknowledged, or to drop it).

Limits: replay goes to every consumer of the subject, not only to the one that gave
up (JetStream cannot redeliver a terminated message to one durable); a dead letter
replayed and given up on again comes back as a new dead letter; one whose original has
left its stream (its limits), or one from before 7 Dec 2026 (no sequence recorded),
cannot be replayed, only dropped.
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
    HDR_DLQ_STREAM_SEQ,
)
from mesh.events.envelope import HDR_MSG_ID
from mesh.events.streams import DLQ_PREFIX

EVERY = f"{DLQ_PREFIX}.>"


class DeadLetterNotFound(LookupError):
    """No dead letter with that sequence (never was, or already replayed or dropped)."""


class NotReplayable(ValueError):
    """The dead letter names no original of its subject in its stream (module doc)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    seq: int  # in the DLQ stream
    time: dt.datetime | None
    subject: str  # the event's own subject (its dead letter's, `dlq.` removed)
    consumer: str  # the durable that gave up
    deliveries: str
    error: str
    original_id: str
    original_seq: int | None  # where the event is in its own stream

    @classmethod
    def of(cls, msg: nats.js.api.RawStreamMsg) -> DeadLetter:
        headers = {k: str(v) for k, v in (msg.headers or {}).items()}
        seq = headers.get(HDR_DLQ_STREAM_SEQ, "")
        return cls(
            seq=msg.seq or 0,
            time=msg.time,
            subject=(msg.subject or "").removeprefix(f"{DLQ_PREFIX}."),
            consumer=headers.get(HDR_DLQ_CONSUMER, ""),
            deliveries=headers.get(HDR_DLQ_DELIVERIES, ""),
            error=headers.get(HDR_DLQ_ERROR, ""),
            original_id=headers.get(HDR_DLQ_ORIGINAL_ID, ""),
            original_seq=int(seq) if seq.isdigit() else None,
        )


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


async def replay(owner: JetStreamContext, stream: str, dead: DeadLetter) -> int:
    """Publish `dead`'s event again, read back from `stream` (the one holding its subject)
    by its owner's client `owner`; the sequence JetStream stored it under. NotReplayable
    when there is no such original (module doc)."""
    if dead.original_seq is None:
        raise NotReplayable(f"dead letter #{dead.seq} names no position in {stream}"
                            " (dead-lettered before 7 Dec 2026?): drop it")  # fmt: skip
    try:
        original = await owner.get_msg(stream, dead.original_seq)
    except nats.js.errors.NotFoundError:
        raise NotReplayable(f"dead letter #{dead.seq}: {stream} #{dead.original_seq} is gone"
                            " (past the stream's limits): drop it") from None  # fmt: skip
    if original.subject != dead.subject:
        raise NotReplayable(
            f"dead letter #{dead.seq} sits on {DLQ_PREFIX}.{dead.subject} but {stream}"
            f" #{dead.original_seq} is {original.subject}: not replayed"
        )
    headers = {k: str(v) for k, v in (original.headers or {}).items()}
    headers[HDR_MSG_ID] = f"{headers.get(HDR_MSG_ID) or 'dlq'}:replay:{dead.seq}"
    ack = await owner.publish(dead.subject, original.data or b"", headers=headers, timeout=5)
    return int(ack.seq)


async def remove(js: JetStreamContext, stream: str, seq: int) -> None:
    try:
        await js.delete_msg(stream, seq)
    except nats.js.errors.NotFoundError:
        raise DeadLetterNotFound(f"no dead letter #{seq} in {stream}") from None
