"""The orders store on SQLite: forward-only progress, history, keys, keyset pages."""

from __future__ import annotations

import asyncio
import uuid

from services.orders.model import Line, OrderStatus
from services.orders.store import KeyHolder, KeyTaken, NewOrder
from tests.support.orders_domain import Domain

USER = str(uuid.uuid4())


async def insert(d: Domain, created_us: int, user: str = USER) -> str:
    oid = str(uuid.uuid4())
    async with d.store.sessions.begin() as s:
        await d.store.insert_order(
            s,
            NewOrder(oid, oid, user, [Line(str(uuid.uuid4()), 1)], "USD", "4242", None),
            created_us,
        )
    return oid


async def test_progress_never_goes_backwards_and_history_counts(domain: Domain) -> None:
    oid = await insert(domain, 1)
    async with domain.store.sessions.begin() as s:
        assert await domain.store.advance(s, oid, OrderStatus.PAID)
        assert not await domain.store.advance(s, oid, OrderStatus.RESERVED)  # behind: no-op
        assert not await domain.store.advance(s, oid, OrderStatus.PAID)  # there already
        assert await domain.store.advance(s, oid, OrderStatus.COMPLETED)
        assert not await domain.store.advance(  # behind, with values: nothing written
            s, oid, OrderStatus.PAID, values={"payment_id": "late"})  # fmt: skip
    order = await domain.store.get(oid)
    assert order is not None and order.status is OrderStatus.COMPLETED
    assert [c.status for c in order.history] == [
        OrderStatus.PENDING, OrderStatus.PAID, OrderStatus.COMPLETED]  # fmt: skip
    assert order.payment_id == ""  # the late advance changed nothing


async def test_set_values_sets_the_columns_given_and_leaves_the_status(domain: Domain) -> None:
    # What the saga's step does when its advance found the order PAID already.
    oid, other = await insert(domain, 1), await insert(domain, 2)
    async with domain.store.sessions.begin() as s:
        assert await domain.store.advance(s, oid, OrderStatus.PAID)
        await domain.store.set_values(s, oid, {"payment_id": "pay-step"})
        await domain.store.set_values(s, oid, {"total_minor": 1500, "payment_id": "pay-2"})
        await domain.store.set_values(s, other, {"payment_id": "pay-other"})
        head = await domain.store.head(s, oid)
    assert head is not None and head.status is OrderStatus.PAID and head.cancel_reason is None
    order, untouched = await domain.store.get(oid), await domain.store.get(other)
    assert order is not None and (order.payment_id, order.total_minor) == ("pay-2", 1500)
    assert order.status is OrderStatus.PAID and len(order.history) == 2
    assert untouched is not None and untouched.payment_id == "pay-other"
    assert untouched.status is OrderStatus.PENDING and untouched.total_minor == 0


async def test_cancel_flags_only_orders_in_flight(domain: Domain) -> None:
    pending, done, other = await insert(domain, 1), await insert(domain, 2), await insert(
        domain, 3, user=str(uuid.uuid4()))  # fmt: skip
    async with domain.store.sessions.begin() as s:
        await domain.store.advance(s, done, OrderStatus.COMPLETED)
        flagged = await domain.store.request_cancel_of_user(s, USER, "gone")
        again = await domain.store.request_cancel_of_user(s, USER, "gone")
    assert flagged == [pending] and again == []
    async with domain.store.sessions() as s:
        head = await domain.store.head(s, pending)
        assert head is not None and head.cancel_reason == "gone"
        assert (await domain.store.head(s, other)).cancel_reason is None  # type: ignore[union-attr]


async def test_keyset_pages_survive_equal_timestamps(domain: Domain) -> None:
    ids = [await insert(domain, 100 if i % 2 else 200) for i in range(7)]
    expected = [o.order_id for o in await domain.store.list_for_user(USER)]
    assert sorted(expected) == sorted(ids)
    seen: list[str] = []
    after = None
    while True:
        page = await domain.orders.page(USER, 3, after)
        seen += [o.order_id for o in page.orders]
        if page.next_cursor is None:
            break
        after = (int(page.next_cursor["t"]), str(page.next_cursor["i"]))
    assert seen == expected


async def test_one_insert_wins_a_key_and_swaps_are_compare_and_set(domain: Domain) -> None:
    async def attempt(saga_id: str) -> bool:
        try:
            async with domain.store.sessions.begin() as s:
                await domain.store.insert_key(s, USER, "k", saga_id, "fp")
        except KeyTaken:
            return False
        return True

    sagas = [str(uuid.uuid4()) for _ in range(10)]
    won = await asyncio.gather(*(attempt(saga_id) for saga_id in sagas))
    assert won.count(True) == 1
    holder = await domain.store.find_key(USER, "k")
    assert holder is not None and holder.saga_id == sagas[won.index(True)]
    assert holder.fingerprint == "fp"
    old = holder.saga_id
    assert await domain.store.swap_key(USER, "k", old, "new")
    assert not await domain.store.swap_key(USER, "k", old, "newer")
    assert (await domain.store.find_key(USER, "k")) == KeyHolder("new", "fp")
    assert await domain.store.find_key(USER, "unknown") is None
