"""What the shop-events tests observe: a durable subscriber of their own, the raw
stream, and the services' databases and logs.

`Recorder` is a subscriber as a service would be one: durable pull consumers on a
`mesh.events.EventBus`, handlers through an `Inbox` in a database of its own
(SQLite), one `effects` row per event whose `n` counts applied effects (a second
effect of one event would make it 2). It also notes every delivery, before the
inbox, and the trace id the consume loop continued (from the message headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
from meshproto.events.v1.envelope_pb2 import Envelope
from nats.aio.msg import Msg
from opentelemetry import trace
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from mesh.db import Migration, create_engine, migrate, session_factory
from mesh.events import EventBus, Inbox, SubscribeOptions, decode, inbox_migrations
from services.common.event_types import shop_streams
from tests.support.poll import eventually

EFFECTS = Migration(
    version=1,
    name="effects",
    statements=(
        "CREATE TABLE effects ("
        " event_id VARCHAR(64) PRIMARY KEY,"
        " type VARCHAR(255) NOT NULL,"
        " subject VARCHAR(64) NOT NULL,"
        " trace_id VARCHAR(32) NOT NULL,"
        " n INTEGER NOT NULL)",
    ),
)

# Quick re-binding after a NATS restart, so outage tests finish in test time.
FAST = SubscribeOptions(backoff_s=(0.1,), fetch_timeout_s=0.5, check_consumer_every_s=1.0)


@dataclass(frozen=True, slots=True)
class Effect:
    event_id: str
    type: str
    subject: str
    trace_id: str
    n: int


class Recorder:
    """Durable consumers `shop-events-test-<subject>` recording each event's effects."""

    def __init__(self, nats_url: str, db_path: Path, subjects: Sequence[str]) -> None:
        self.nats_url = nats_url
        self.subjects = tuple(subjects)
        self.engine = create_engine(f"sqlite+aiosqlite:///{db_path}")
        self.sessions = session_factory(self.engine)
        self.inbox = Inbox(self.sessions, "shop-events-test")
        self.deliveries: dict[str, int] = {}
        self.bus: EventBus | None = None

    async def start(self) -> None:
        await migrate(self.engine, [EFFECTS, *inbox_migrations()])
        self.bus = await EventBus.connect(
            self.nats_url, name="shop-events-test", streams=shop_streams()
        )
        await self.bus.ensure_streams()
        apply = self.inbox.idempotent(self._apply)

        async def handler(env: Envelope) -> None:
            self.deliveries[env.id] = self.deliveries.get(env.id, 0) + 1
            await apply(env)

        for subject in self.subjects:
            await self.bus.subscribe(subject, handler, durable=self.durable(subject), options=FAST)

    @staticmethod
    def durable(subject: str) -> str:
        return "shop-events-test-" + subject.replace(".", "-")

    async def close(self) -> None:
        if self.bus is not None:
            await self.bus.close()
        await self.engine.dispose()

    @staticmethod
    async def _apply(env: Envelope, session: AsyncSession) -> None:
        # The consume loop made the producer's context (from the headers) current.
        span_context = trace.get_current_span().get_span_context()
        trace_id = f"{span_context.trace_id:032x}" if span_context.is_valid else ""
        await session.execute(
            text(
                "INSERT INTO effects (event_id, type, subject, trace_id, n)"
                " VALUES (:i, :t, :s, :tr, 1)"
                " ON CONFLICT (event_id) DO UPDATE SET n = effects.n + 1"
            ),
            {"i": env.id, "t": env.type, "s": env.subject, "tr": trace_id},
        )

    async def effects(self, event_type: str, subject: str) -> list[Effect]:
        async with self.sessions() as s:
            rows = (
                await s.execute(
                    text(
                        "SELECT event_id, type, subject, trace_id, n FROM effects"
                        " WHERE type = :t AND subject = :s"
                    ),
                    {"t": event_type, "s": subject},
                )
            ).all()
        return [Effect(*r) for r in rows]

    async def wait_for(self, event_type: str, subject: str, within_s: float = 20.0) -> Effect:
        """The effect of the one event of `event_type` about `subject`, once it is there."""

        async def found() -> list[Effect]:
            return await self.effects(event_type, subject)

        [effect] = await eventually(found, within_s, f"{event_type} of {subject} recorded")
        return effect


@dataclass(frozen=True, slots=True)
class RawEvent:
    headers: Mapping[str, str]
    envelope: Envelope


async def stream_events(nats_url: str, stream: str, subject: str) -> list[RawEvent]:
    """Every message of `subject` in `stream` from the start, with its headers (through an
    ephemeral consumer: no state left on the server once read)."""
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe(subject, stream=stream)
        out: list[RawEvent] = []
        # Read until the consumer has nothing pending (not until a fetch times out: on a
        # loaded box the first fetch can take longer than any short timeout).
        deadline = time.monotonic() + 20
        while (await sub.consumer_info()).num_pending:
            assert time.monotonic() < deadline, f"{stream}/{subject}: not read within 20 s"
            try:
                msgs: list[Msg] = await sub.fetch(256, timeout=2)
            except nats.errors.TimeoutError:
                continue
            for m in msgs:
                await m.ack()
                out.append(RawEvent(dict(m.headers or {}), decode(m.data)))
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        return out
    finally:
        await nc.close()


async def republish(nats_url: str, raw: RawEvent) -> int:
    """Publish a stored event again, as a relay would after JetStream's duplicate window
    (a fresh Nats-Msg-Id, so the stream keeps the copy); its stream sequence."""
    nc = await nats.connect(nats_url)
    try:
        headers = {**raw.headers, "Nats-Msg-Id": f"{raw.envelope.id}:replay"}
        ack = await nc.jetstream().publish(
            raw.envelope.type, raw.envelope.SerializeToString(), headers=headers, timeout=5
        )
        return int(ack.seq)
    finally:
        await nc.close()


async def acked_through(nats_url: str, stream: str, durable: str, seq: int) -> bool:
    """Whether the durable consumer has acked every message up to stream sequence `seq`."""
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().consumer_info(stream, durable)
        return info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= seq
    finally:
        await nc.close()


async def consumers_of(nats_url: str, stream: str) -> list[str]:
    """The names of the durable consumers `stream` has."""
    nc = await nats.connect(nats_url)
    try:
        return sorted(c.name for c in await nc.jetstream().consumers_info(stream))
    finally:
        await nc.close()


def trace_id_of(traceparent: str) -> str:
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 else ""


@contextlib.asynccontextmanager
async def database(url: str) -> AsyncIterator[Any]:
    """An engine on a service's database (read by the test beside the running service)."""
    engine = create_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def scalar(url: str, sql: str, **params: Any) -> Any:
    async with database(url) as engine, engine.connect() as conn:
        return await conn.scalar(text(sql), params)


async def rows(url: str, sql: str, **params: Any) -> list[Any]:
    async with database(url) as engine, engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def outbox_rows(url: str) -> list[tuple[Envelope, bool]]:
    """(envelope, sent) of every row of a service's outbox, oldest first."""
    found = await rows(url, "SELECT payload, sent_at FROM mesh_outbox ORDER BY seq")
    return [(decode(bytes(payload)), sent_at is not None) for payload, sent_at in found]


async def log_line(path: Path, *needles: str, within_s: float = 10.0) -> str:
    """The first line of a process log containing every needle (polled: logs are written
    by another process)."""
    deadline = time.monotonic() + within_s

    async def found() -> str | None:
        content = await asyncio.to_thread(path.read_text, errors="replace")
        for line in content.splitlines():
            if all(n in line for n in needles):
                return line
        return None

    return await eventually(found, max(0.1, deadline - time.monotonic()), f"{needles} in {path}")


LOW_STOCK_THRESHOLD = 5
