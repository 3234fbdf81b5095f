"""The relay's lease holder: a relay restarted under its old holder id (a service instance
restarted with the same MESH_INSTANCE_ID) takes the publishing lease back at once;
a relay of another holder still waits for the lease to expire."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from meshproto.events.v1.envelope_pb2 import Envelope
from shop.events.v1 import events_pb2
from sqlalchemy import text

from mesh.events import Outbox, OutboxRelay, RelayConfig, new_envelope
from mesh.events import relay as relay_module
from services.common.event_types import EVENTS
from tests.support.events_db import Db
from tests.support.poll import eventually
from tests.support.statements import recorded_statements

# A lease far longer than the test may wait: publishing in time proves it was taken
# back, not waited out.
LONG_LEASE = RelayConfig(lease_s=60.0, poll_interval_s=0.05, ack_timeout_s=1.0,
                         backoff_max_s=0.5)  # fmt: skip


def user_created() -> Envelope:
    uid = str(uuid.uuid4())
    return new_envelope(events_pb2.UserCreated(user_id=uid, email=f"{uid}@example.com"),
                        types=EVENTS, source="users", subject=uid)  # fmt: skip


async def lease_holder(db: Db) -> str:
    async with db.sessions() as s:
        row = (await s.execute(text("SELECT holder FROM mesh_outbox_lease"))).one()
    return str(row[0])


async def crash_while_leading(relay: OutboxRelay) -> None:
    """Run the relay until it holds the lease, then end it as kill -9 would: the lease
    row stays, unreleased, until it expires."""
    task = relay.start()
    await eventually(lambda: relay.is_leader, what="the lease")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_relay_restarted_with_its_holder_takes_its_lease_back_at_once(
    db: Db, bus_factory: Any, outbox: Outbox
) -> None:
    bus = await bus_factory()
    await crash_while_leading(
        OutboxRelay(db.sessions, bus.js, outbox, config=LONG_LEASE, holder="users-1")
    )
    env = user_created()
    async with db.sessions.begin() as s:
        await outbox.add(s, env)

    restarted = OutboxRelay(db.sessions, bus.js, outbox, config=LONG_LEASE, holder="users-1")
    other = OutboxRelay(db.sessions, bus.js, outbox, config=LONG_LEASE, holder="users-2")
    other.start()
    restarted.start()
    try:
        await eventually(lambda: restarted.published == 1, within_s=5.0, what="published")
        info = await bus.js.stream_info("USER")
        assert info.state.messages == 1
        # The dead holder's lease was live: the other instance stands by.
        assert restarted.is_leader and not other.is_leader
        assert other.published == 0
        assert await lease_holder(db) == "users-1"
    finally:
        await other.stop()
        await restarted.stop()


async def test_relays_without_a_holder_get_one_each(db: Db, bus_factory: Any) -> None:
    bus = await bus_factory()
    relays = [OutboxRelay(db.sessions, bus.js, Outbox()) for _ in range(2)]
    assert relays[0].holder != relays[1].holder
    assert all(r.holder.startswith("relay-") for r in relays)


@contextlib.asynccontextmanager
async def leading_and_standing_by(
    db: Db, bus: Any, outbox: Outbox, standby_lease_s: float
) -> AsyncIterator[tuple[OutboxRelay, OutboxRelay, list[str]]]:
    """A leader holding a 60 s lease, then a standby (lease `standby_lease_s`: a look every
    third of it) started inside `recorded_statements` on the lease table; both stopped
    after. Yields (leader, standby, the lease statements seen since the standby started)."""
    leader = OutboxRelay(db.sessions, bus.js, outbox, config=LONG_LEASE, holder="users-1")
    leader.start()
    config = RelayConfig(lease_s=standby_lease_s, poll_interval_s=0.05)
    standby = OutboxRelay(db.sessions, bus.js, outbox, holder="users-2", config=config)
    try:
        await eventually(lambda: leader.is_leader, what="the leader's lease")
        with recorded_statements(db.engine, ["mesh_outbox_lease"]) as seen:
            standby.start()
            await eventually(lambda: len(seen) >= 1, what="the standby's first look")
            yield leader, standby, seen
        assert not standby.is_leader and standby.published == 0
        assert await lease_holder(db) == "users-1"
    finally:
        await standby.stop()
        await leader.stop()


async def test_a_standby_relay_only_reads_the_lease_while_it_is_held(
    db: Db, bus_factory: Any, outbox: Outbox
) -> None:
    # Each try of a standby used to be two write transactions (UPDATE, failing INSERT)
    # queueing for the database's write lock; while the lease is live it is one read.
    # A look every 0.1 s here, under the leader's 60 s lease.
    async with leading_and_standing_by(db, await bus_factory(), outbox, 0.3) as (_, _, seen):
        await eventually(lambda: len(seen) >= 3, what="three tries of the standby")
        looks = list(seen)
    assert all(s.startswith("SELECT") for s in looks), looks


async def test_a_standby_does_not_look_at_the_lease_on_every_commit(
    db: Db, bus_factory: Any, outbox: Outbox
) -> None:
    # Commits of the standby's own process wake it (they share the outbox), but they are
    # the holder's to publish: looking at the lease on each was a read session per commit.
    # A look every 2 s here, longer than the commits below take.
    async with leading_and_standing_by(db, await bus_factory(), outbox, 6.0) as (leader, _, seen):
        for _ in range(20):
            async with db.sessions.begin() as s:
                await outbox.add(s, user_created())
            await asyncio.sleep(0.01)  # poll: one commit at a time, each waking the relays
        await eventually(lambda: leader.published == 20, within_s=5.0, what="published")
        looks = list(seen)
    assert len(looks) == 1, looks  # one look in all, not one per commit


async def test_a_standby_takes_over_when_the_lease_lapses_not_a_third_of_its_own_later(
    db: Db, bus_factory: Any, outbox: Outbox
) -> None:
    bus = await bus_factory()
    short = RelayConfig(lease_s=1.0, poll_interval_s=0.05, ack_timeout_s=1.0)
    await crash_while_leading(OutboxRelay(db.sessions, bus.js, outbox, config=short,
                                          holder="users-1"))  # fmt: skip
    async with db.sessions.begin() as s:
        await outbox.add(s, user_created())
    # The standby's own lease is 30 s (a look every 10 s): it looks again when the dead
    # holder's 1 s lease lapses, and publishes what was left.
    standby = OutboxRelay(db.sessions, bus.js, Outbox(), holder="users-2",
                          config=RelayConfig(lease_s=30.0, poll_interval_s=0.05))  # fmt: skip
    standby.start()
    try:
        await eventually(lambda: standby.published == 1, within_s=4.0, what="the takeover")
        assert standby.is_leader
        assert await lease_holder(db) == "users-2"
    finally:
        await standby.stop()


class _WallClock:
    """`time` for the relay module: the wall clock reads `first` once, then `after`."""

    def __init__(self, first: float, after: float) -> None:
        self.readings = [first]
        self.after = after

    def time(self) -> float:
        return self.readings.pop() if self.readings else self.after

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()


async def test_a_standby_whose_look_finds_the_lease_at_its_last_millisecond_looks_again_at_once(
    db: Db, bus_factory: Any, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The look sees the holder's lease expiring this very millisecond (not yet lapsed);
    # the standby used to find its next look already due when it computed its wait and
    # fall back to a third of its own lease (10 s here) instead of looking again.
    bus = await bus_factory()
    expires_ms = int(time.time() * 1000) + 60_000
    async with db.sessions.begin() as s:
        await s.execute(
            text("INSERT INTO mesh_outbox_lease (name, holder, expires_at) VALUES (:n, :h, :e)"),
            {"n": OutboxRelay.LEASE_NAME, "h": "users-1", "e": expires_ms},
        )
        await outbox.add(s, user_created())
    monkeypatch.setattr(relay_module, "time", _WallClock(expires_ms / 1000, expires_ms / 1000 + 1))
    standby = OutboxRelay(db.sessions, bus.js, Outbox(), holder="users-2",
                          config=RelayConfig(lease_s=30.0, poll_interval_s=0.05))  # fmt: skip
    standby.start()
    try:
        await eventually(lambda: standby.published == 1, within_s=3.0, what="the takeover")
        assert await lease_holder(db) == "users-2"
    finally:
        await standby.stop()
