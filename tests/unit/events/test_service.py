"""mesh.events.service: the subscriber (background connect, durable consumers through the
inbox, stop, inbox purge) and the publisher's lease holder, on a real nats-server and a
real SQLite database; the shop's event types serve as any project's would."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from meshproto.events.v1.envelope_pb2 import Envelope
from shop.events.v1 import events_pb2
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mesh.db import Migration, create_engine, migrate, session_factory
from mesh.events import (
    EventBus,
    Outbox,
    RelayConfig,
    SubscribeOptions,
    encode,
    inbox_migrations,
    new_envelope,
    outbox_migrations,
)
from mesh.events.envelope import HDR_MSG_ID
from mesh.events.inbox import inbox_table
from mesh.events.service import (
    BusAccess,
    EventPublisher,
    EventSubscriber,
    InboxPurge,
    SubscriptionSpec,
)
from mesh.events.streams import DAY_S
from services.common.event_types import EVENTS, shop_streams
from tests.support.nats import NatsServer, nats_server
from tests.support.poll import eventually

Sessions = async_sessionmaker[AsyncSession]

# No credentials (the test's nats-server has none); every stream declared and known.
ACCESS = BusAccess(streams=tuple(shop_streams()), declares=tuple(shop_streams()))
FAST = SubscribeOptions(backoff_s=(0.05,), fetch_timeout_s=0.5, check_consumer_every_s=1.0)
EFFECTS = Migration(
    version=1,
    name="effects",
    statements=("CREATE TABLE effects (id VARCHAR(64) PRIMARY KEY, n INTEGER NOT NULL)",),
)


@pytest.fixture
async def nats(tmp_path: Path) -> AsyncIterator[NatsServer]:
    async with nats_server(tmp_path / "nats") as server:
        yield server


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'svc.db'}")
    await migrate(engine, [EFFECTS, *outbox_migrations(), *inbox_migrations()])
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def bus(nats: NatsServer) -> AsyncIterator[EventBus]:
    """The test's own connection, publishing as another service would."""
    b = await EventBus.connect(nats.url, name="test", streams=shop_streams())
    await b.ensure_streams()
    try:
        yield b
    finally:
        await b.close()


async def count_effect(env: Envelope, session: AsyncSession) -> None:
    # n counts effects: handled at most once per event id leaves n == 1.
    await session.execute(
        text("INSERT INTO effects (id, n) VALUES (:i, 1)"
             " ON CONFLICT (id) DO UPDATE SET n = effects.n + 1"),
        {"i": env.subject},
    )  # fmt: skip


async def effects(sessions: Sessions) -> dict[str, int]:
    async with sessions() as s:
        return {r[0]: r[1] for r in (await s.execute(text("SELECT id, n FROM effects"))).all()}


def user_deleted() -> Envelope:
    uid = str(uuid.uuid4())
    return new_envelope(
        events_pb2.UserDeleted(user_id=uid), types=EVENTS, source="users", subject=uid
    )


def payment_completed() -> Envelope:
    pid = str(uuid.uuid4())
    return new_envelope(events_pb2.PaymentCompleted(payment_id=pid, saga_id="s"),
                        types=EVENTS, source="payments", subject=pid)  # fmt: skip


def subscriber(url: str, sessions: Sessions, purge: InboxPurge | None = None) -> EventSubscriber:
    specs = [
        SubscriptionSpec("user.deleted", "svc-user-deleted", count_effect),
        SubscriptionSpec("payment.completed", "svc-payment-completed", count_effect),
    ]
    return EventSubscriber(
        url, sessions, "svc", specs, name="svc-1", options=FAST, purge=purge, access=ACCESS
    )


async def acked_through(bus: EventBus, stream: str, durable: str, seq: int) -> bool:
    info = await bus.js.consumer_info(stream, durable)
    return info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= seq


async def test_each_subscription_runs_its_handler_through_the_inbox_once(
    nats: NatsServer, sessions: Sessions, bus: EventBus
) -> None:
    sub = subscriber(nats.url, sessions)
    await sub.start()
    try:
        await asyncio.wait_for(sub.ready.wait(), 10)
        deleted, paid = user_deleted(), payment_completed()
        await bus.publish(deleted)
        await bus.publish(paid)
        # A copy beyond JetStream's dedupe (another Nats-Msg-Id): only the inbox stops it.
        body, headers = encode(deleted)
        copy = await bus.js.publish(
            "user.deleted", body, headers={**headers, HDR_MSG_ID: f"{deleted.id}-copy"}
        )

        async def both_handled() -> bool:
            return await acked_through(bus, "USER", "svc-user-deleted", copy.seq) and (
                paid.subject in await effects(sessions)
            )

        await eventually(both_handled, what="both events and the copy handled")
        assert await effects(sessions) == {deleted.subject: 1, paid.subject: 1}
        assert await sub.inbox.seen(deleted.id) and await sub.inbox.seen(paid.id)
    finally:
        await sub.stop()
    assert sub.bus is None and not sub.ready.is_set()


async def test_events_published_while_stopped_are_handled_by_the_next_start(
    nats: NatsServer, sessions: Sessions, bus: EventBus
) -> None:
    first = subscriber(nats.url, sessions)
    await first.start()
    await asyncio.wait_for(first.ready.wait(), 10)
    await first.stop()

    # A fetch still waiting on the server (up to its 1 s expiry) would take the next
    # message for the stopped subscriber, to be redelivered only after ack_wait.
    async def no_waiting_pull() -> bool:
        info = await bus.js.consumer_info("USER", "svc-user-deleted")
        return not info.num_waiting

    await eventually(no_waiting_pull, what="the stopped subscriber's last fetch to expire")
    env = user_deleted()
    await bus.publish(env)  # nobody consuming: it waits in the durable consumer

    # The server counts it pending a moment after the publish is acknowledged.
    async def waiting_in_the_consumer() -> bool:
        info = await bus.js.consumer_info("USER", "svc-user-deleted")
        return info.num_pending == 1 and not info.num_ack_pending

    await eventually(waiting_in_the_consumer, 5, "the event pending, delivered to nobody")

    second = subscriber(nats.url, sessions)
    await second.start()
    try:

        async def handled() -> bool:
            return env.subject in await effects(sessions)

        await eventually(handled, what="the event published while stopped")
    finally:
        await second.stop()


async def test_the_subscriber_connects_in_the_background_once_nats_is_up(
    nats: NatsServer, sessions: Sessions
) -> None:
    await nats.stop()  # its port and store stay: the same URL serves again on start()
    sub = subscriber(nats.url, sessions)
    await sub.start()  # returns at once, NATS or not
    try:
        assert not sub.ready.is_set()
        await nats.start()
        await asyncio.wait_for(sub.ready.wait(), 20)
        assert sub.bus is not None and sub.bus.nc.is_connected
        assert [s.durable for s in sub.bus.subscriptions] == [
            "svc-user-deleted",
            "svc-payment-completed",
        ]
    finally:
        await sub.stop()


# -- inbox purge ---------------------------------------------------------------------


async def add_inbox_row(sessions: Sessions, consumer: str, age: timedelta) -> str:
    event_id = str(uuid.uuid4())
    async with sessions.begin() as s:
        await s.execute(
            insert(inbox_table()).values(consumer=consumer, event_id=event_id,
                                         event_type="user.deleted",
                                         handled_at=datetime.now(UTC) - age)
        )  # fmt: skip
    return event_id


async def inbox_ids(sessions: Sessions) -> set[str]:
    c = inbox_table().c
    async with sessions() as s:
        return set((await s.execute(select(c.event_id))).scalars())


def test_the_inbox_outlives_every_consumed_stream_by_default() -> None:
    purge = InboxPurge()
    consumed = [s.max_age_s for s in shop_streams() if s.name != "DLQ"]
    assert purge.older_than_s > max(consumed)
    assert purge.older_than_s == 8 * DAY_S and purge.every_s == 3600.0


async def test_the_inbox_is_purged_periodically_and_keeps_recent_ids(sessions: Sessions) -> None:
    old = await add_inbox_row(sessions, "svc", timedelta(days=9))
    recent = await add_inbox_row(sessions, "svc", timedelta(days=7))
    others = await add_inbox_row(sessions, "another-consumer", timedelta(days=9))
    # No NATS: purging needs only the database.
    sub = subscriber("", sessions, purge=InboxPurge(every_s=0.05))
    await sub.start()
    try:

        async def old_gone() -> bool:
            return old not in await inbox_ids(sessions)

        await eventually(old_gone, what="the first purge")
        # A later round removes what has aged since.
        rounds = sub.purges
        older = await add_inbox_row(sessions, "svc", timedelta(days=8, minutes=1))

        async def older_gone() -> bool:
            return sub.purges > rounds and older not in await inbox_ids(sessions)

        await eventually(older_gone, what="a later purge")
        assert await inbox_ids(sessions) == {recent, others}
    finally:
        await sub.stop()
    assert sub.bus is None  # never connected: NATS_URL was empty


# -- publisher ---------------------------------------------------------------------------


async def test_the_publisher_relays_under_the_holder_it_is_given(
    nats: NatsServer, sessions: Sessions, bus: EventBus
) -> None:
    outbox = Outbox()
    pub = EventPublisher(nats.url, sessions, outbox, name="svc-1", holder="svc-1",
                         relay_config=RelayConfig(poll_interval_s=0.05),
                         access=ACCESS)  # fmt: skip
    await pub.start()
    try:
        await asyncio.wait_for(pub.ready.wait(), 10)
        assert pub.relay is not None and pub.relay.holder == "svc-1"
        env = user_deleted()
        async with sessions.begin() as s:
            await outbox.add(s, env)

        async def published() -> bool:
            return (await bus.js.stream_info("USER")).state.messages == 1

        await eventually(published, what="the event published")
        async with sessions() as s:
            holder = (await s.execute(text("SELECT holder FROM mesh_outbox_lease"))).scalar()
        assert holder == "svc-1"
    finally:
        await pub.stop()
    assert pub.relay is None and pub.bus is None
