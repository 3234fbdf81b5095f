"""The orders store and the order saga's database cost on SQLite and PostgreSQL: `get`'s
one query against the list path's three, a keyed order's pinned statements and
transactions, and a taken idempotency key's rollback (the fake shop stands in for
users, inventory and payments, so every statement counted is orders'); on PostgreSQL,
an order's transaction and a `user.deleted` handler's overlapping without both missing
each other."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from meshproto.events.v1.envelope_pb2 import Envelope
from shop.events.v1 import events_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from base.errors import FailedPrecondition
from mesh.events import new_envelope
from services.common.event_types import EVENTS
from services.orders.events import USER_DELETED_REASON, OrderEventHandlers
from services.orders.model import Address, Card, Line, Order, OrderStatus, PlaceOrder
from services.orders.store import NewOrder, now_us
from tests.support.orders_domain import Domain, fail, open_domain
from tests.support.poll import eventually
from tests.support.shop_calls import count
from tests.support.statements import recorded_commits, recorded_statements

USER = str(uuid.uuid4())
P1, P2, P3 = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
TABLES = ("orders", "order_items", "order_status_history", "order_idempotency_keys",
          "mesh_saga", "mesh_outbox", "mesh_inbox")  # fmt: skip
ADDRESS = Address("Ada", ("1 Main St", "Flat 2"), "Springfield", "12345", "US")


@pytest.fixture
async def domain(engine: AsyncEngine) -> AsyncIterator[Domain]:
    # A long lease: no heartbeat writes while a test counts statements.
    async with open_domain(engine, lease_s=120) as d:
        d.fake.users.add(USER)
        d.fake.prices.update({P1: 250, P2: 1000, P3: 99})
        yield d


async def _listed(d: Domain) -> dict[str, Order]:
    # The list path still reads head, lines and history with three statements.
    return {o.order_id: o for o in await d.store.list_for_user(USER)}


async def test_get_returns_the_order_the_list_path_builds(domain: Domain) -> None:
    completed = await domain.orders.place(domain.order(USER, [(P1, 2), (P2, 1), (P3, 7)]))
    card = Card("4242424242424242", 12, 2040, "123")
    lines = (Line(P3, 1), Line(P1, 3))
    shipped = await domain.orders.place(
        PlaceOrder(USER, lines, "USD", card, ADDRESS, "ship", "f" * 64, 2)
    )
    domain.fake.faults["Charge"] = [
        fail("payments", grpc.StatusCode.FAILED_PRECONDITION, "CARD_DECLINED", "declined")
    ]
    with pytest.raises(FailedPrecondition):
        await domain.orders.place(domain.order(USER, [(P2, 1), (P1, 1)]))
    # Unpriced lines, a NULL shipping address, one history row: straight from the store.
    pending = str(uuid.uuid4())
    async with domain.store.sessions.begin() as s:
        await domain.store.insert_order(
            s, NewOrder(pending, pending, USER, [Line(P2, 4), Line(P1, 5)], "USD", "4242", None),
            1_000,
        )  # fmt: skip
    listed = await _listed(domain)
    assert len(listed) == 4
    for order_id, expected in listed.items():
        assert await domain.store.get(order_id) == expected
    assert listed[completed.order_id] == completed
    got = await domain.store.get(shipped.order_id)
    assert got is not None and got.shipping == ADDRESS
    assert [(x.product_id, x.quantity, x.unit_price_minor) for x in got.lines] == [
        (P3, 1, 99), (P1, 3, 250)]  # fmt: skip
    assert [c.status for c in got.history] == [OrderStatus.PENDING, OrderStatus.RESERVED,
                                               OrderStatus.PAID, OrderStatus.COMPLETED]  # fmt: skip
    failed = next(o for o in listed.values() if o.status is OrderStatus.FAILED)
    assert failed.history[-1].reason and failed.failure_reason == failed.history[-1].reason
    raw = await domain.store.get(pending)
    assert raw is not None and raw.shipping is None and raw.created_us == 1_000
    assert [(x.product_id, x.unit_price_minor) for x in raw.lines] == [(P2, None), (P1, None)]


async def test_get_of_a_missing_order_is_none(domain: Domain) -> None:
    await domain.orders.place(domain.order(USER, [(P1, 1)]))
    assert await domain.store.get(str(uuid.uuid4())) is None


async def test_a_keyed_order_costs_its_pinned_statements_and_transactions(
    domain: Domain, engine: AsyncEngine
) -> None:
    # An order's CPU in orders is mostly per statement and per transaction. A keyed
    # two-line order: the saga row with its key (1 transaction, 2 statements);
    # create_order: order, lines (executemany), history, saga row (4); record_prices:
    # prices (executemany), advance, history, saga row (4); record_payment,
    # confirm_stock (nothing) and complete_order, chained in one transaction: advance,
    # history, advance, history, outbox, saga row (6); the answer: `get` (1).
    # 17 statements in 4 transactions, whatever the line count.
    cmd = domain.order(USER, [(P1, 2), (P2, 1)], key="pinned")
    with recorded_statements(engine, TABLES) as seen, recorded_commits(engine) as commits:
        order = await domain.orders.place(cmd)
    assert order.status is OrderStatus.COMPLETED
    assert len(seen) == 17, "\n".join(seen)
    assert len(commits) == 4, "\n".join(seen)


async def _count(engine: AsyncEngine, table: str) -> int:
    return await count(engine, f"SELECT count(*) FROM {table}")


async def test_a_taken_key_leaves_no_saga_behind(domain: Domain, engine: AsyncEngine) -> None:
    cmd = domain.order(USER, [(P1, 1)], key="twice")
    with recorded_statements(engine, ["order_idempotency_keys"]) as seen:
        first, second = await asyncio.gather(domain.orders.place(cmd), domain.orders.place(cmd))
    # Both requests tried to insert the key with a saga of their own; one lost and
    # rolled its saga back, then joined the winner's.
    assert sum(s.startswith("INSERT INTO order_idempotency_keys") for s in seen) == 2, seen
    assert first == second and first.status is OrderStatus.COMPLETED
    assert await _count(engine, "mesh_saga") == 1
    assert await _count(engine, "orders") == 1
    assert await _count(engine, "order_idempotency_keys") == 1
    holder = await domain.store.find_key(USER, "twice")
    assert holder is not None and holder.saga_id == first.saga_id
    assert domain.fake.calls["Charge"] == 1 and domain.fake.calls["GetUser"] == 1
    # The same key for a different order: refused, and still nothing left behind.
    with pytest.raises(FailedPrecondition) as reused:
        await domain.orders.place(domain.order(USER, [(P2, 1)], key="twice"))
    assert reused.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert await _count(engine, "mesh_saga") == 1 and await _count(engine, "orders") == 1


# -- a deletion and an order overlapping on PostgreSQL (read committed) ---------------------


@pytest.fixture
async def pg_domain(pg_engine: AsyncEngine) -> AsyncIterator[Domain]:
    async with open_domain(pg_engine) as d:
        yield d


async def _backend_pid(s: AsyncSession) -> int:
    return int(await s.scalar(text("SELECT pg_backend_pid()")))


async def _waits_for_a_lock(engine: AsyncEngine, pid: int) -> bool:
    """Whether backend `pid` is waiting for an advisory lock (seen from another one)."""
    waiting = "SELECT count(*) FROM pg_locks WHERE pid = :pid AND locktype = 'advisory'"
    return await count(engine, f"{waiting} AND NOT granted", pid=pid) > 0


def _user_deleted(user_id: str) -> Envelope:
    payload = events_pb2.UserDeleted(user_id=user_id)
    return new_envelope(payload, types=EVENTS, source="users", subject=user_id)


async def _insert_order(d: Domain, s: AsyncSession, user_id: str) -> str:
    """The first thing the saga's create_order does in its transaction: insert the order
    (`user_deleted`, its check, is left to the test)."""
    order_id = str(uuid.uuid4())
    new = NewOrder(order_id, order_id, user_id, [Line(P1, 1)], "USD", "4242", None)
    await d.store.insert_order(s, new, now_us())
    return order_id


async def test_a_deletion_handled_while_an_order_is_created_waits_and_flags_it(
    pg_domain: Domain, pg_engine: AsyncEngine
) -> None:
    """The order's transaction checked first and is still open: the handler waits for
    it, then sees the order and flags it. Before the lock the handler ran at once,
    saw no order (uncommitted) and the order, having seen no record, went through."""
    d, user = pg_domain, str(uuid.uuid4())
    handlers = OrderEventHandlers(d.store)
    pid: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handle() -> None:
        async with d.store.sessions.begin() as s:
            pid.set_result(await _backend_pid(s))
            await handlers.user_deleted(_user_deleted(user), s)

    async with d.store.sessions.begin() as s:
        order_id = await _insert_order(d, s, user)
        assert not await d.store.user_deleted(s, user)
        handling = asyncio.create_task(handle())
        waiting = await asyncio.wait_for(pid, 10)
        what = "the handler waiting for the order's transaction"
        await eventually(lambda: _waits_for_a_lock(pg_engine, waiting), what=what)
        assert not handling.done()
    await asyncio.wait_for(handling, 10)

    async with d.store.sessions() as s:
        head = await d.store.head(s, order_id)
        assert head is not None and head.cancel_reason == USER_DELETED_REASON
        assert await d.store.user_deleted(s, user)


async def test_an_order_created_while_a_deletion_is_handled_waits_and_is_refused(
    pg_domain: Domain, pg_engine: AsyncEngine
) -> None:
    """The handler's transaction is still open: the order's check waits for it and then
    sees the record. Before the lock the check ran at once and saw nothing."""
    d, user = pg_domain, str(uuid.uuid4())
    pid: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def create() -> bool:
        async with d.store.sessions.begin() as s:
            pid.set_result(await _backend_pid(s))
            await _insert_order(d, s, user)
            return await d.store.user_deleted(s, user)

    async with d.store.sessions.begin() as s:
        await OrderEventHandlers(d.store).user_deleted(_user_deleted(user), s)
        creating = asyncio.create_task(create())
        waiting = await asyncio.wait_for(pid, 10)
        what = "the order's check waiting for the handler's transaction"
        await eventually(lambda: _waits_for_a_lock(pg_engine, waiting), what=what)
        assert not creating.done()
    assert await asyncio.wait_for(creating, 10) is True


async def test_orders_of_one_user_do_not_wait_for_each_other(pg_domain: Domain) -> None:
    """The order's side of the lock is shared: a second order of the user, its first
    transaction still open, is checked at once."""
    d, user = pg_domain, str(uuid.uuid4())
    async with d.store.sessions.begin() as first:
        await _insert_order(d, first, user)
        assert not await d.store.user_deleted(first, user)
        async with d.store.sessions.begin() as second:
            await _insert_order(d, second, user)
            assert not await asyncio.wait_for(d.store.user_deleted(second, user), 5)
