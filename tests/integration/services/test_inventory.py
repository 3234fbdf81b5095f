"""The inventory service over gRPC on loopback, against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from shop.common.v1 import money_pb2
from shop.events.v1 import events_pb2
from shop.inventory.v1 import inventory_pb2 as inv
from shop.inventory.v1 import inventory_pb2_grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.events import unpack
from services.common.pagination import encode_page_token
from services.inventory.app import build
from services.inventory.config import InventoryConfig
from services.inventory.validation import MAX_STOCK
from tests.support.pki import mtls_channel
from tests.support.services import (
    Served,
    outbox_events,
    rpc_error_details,
    serve,
    service_settings,
)
from tests.support.statements import recorded_statements

THRESHOLD = 5
HELD = inv.RESERVATION_STATUS_HELD
CONFIRMED = inv.RESERVATION_STATUS_CONFIRMED
RELEASED = inv.RESERVATION_STATUS_RELEASED
RETURNED = inv.RESERVATION_STATUS_RETURNED


@pytest.fixture
async def served(engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[Served]:
    s = await serve(
        build,
        service_settings("inventory", tmp_path),
        engine=engine,
        config=InventoryConfig(low_stock_threshold=THRESHOLD),
    )
    yield s
    await s.close()


def catalogue(s: Served) -> inventory_pb2_grpc.InventoryServiceAsyncStub:
    return inventory_pb2_grpc.InventoryServiceStub(s.channel)  # type: ignore[return-value]


def reservations(s: Served) -> inventory_pb2_grpc.ReservationServiceAsyncStub:
    return inventory_pb2_grpc.ReservationServiceStub(s.channel)  # type: ignore[return-value]


def usd(minor: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", amount_minor=minor)


async def product(s: Served, sku: str, stock: int, price: int = 1999) -> inv.Product:
    return await catalogue(s).CreateProduct(
        inv.CreateProductRequest(sku=sku, name=f"Product {sku}", price=usd(price),
                                 initial_stock=stock)
    )  # fmt: skip


def saga() -> str:
    return str(uuid.uuid4())


def lines(*pairs: tuple[str, int]) -> list[inv.LineItem]:
    return [inv.LineItem(product_id=p, quantity=q) for p, q in pairs]


async def stock(s: Served, product_id: str) -> tuple[int, int]:
    p = await catalogue(s).GetProduct(inv.GetProductRequest(product_id=product_id))
    return p.available, p.reserved


async def event_types(engine: AsyncEngine) -> list[str]:
    return [e.type for e in await outbox_events(engine)]


async def test_create_get_and_duplicate_sku(served: Served, engine: AsyncEngine) -> None:
    p = await product(served, "MUG-1", 10)
    assert (p.sku, p.available, p.reserved, p.price) == ("MUG-1", 10, 0, usd(1999))
    assert await catalogue(served).GetProduct(inv.GetProductRequest(product_id=p.product_id)) == p
    with pytest.raises(grpc.RpcError) as err:
        await product(served, "MUG-1", 1)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert rpc_error_details(err.value).reason == "SKU_TAKEN"
    with pytest.raises(grpc.RpcError) as err:
        await catalogue(served).GetProduct(inv.GetProductRequest(product_id=saga()))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert await event_types(engine) == []


async def test_create_product_validation(served: Served) -> None:
    with pytest.raises(grpc.RpcError) as err:
        await catalogue(served).CreateProduct(
            inv.CreateProductRequest(
                sku="has space",
                name="",
                price=money_pb2.Money(currency_code="XXX", amount_minor=0),
                initial_stock=-1,
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(rpc_error_details(err.value).violations) == {
        "sku", "name", "price.currency_code", "price.amount_minor", "initial_stock"
    }  # fmt: skip
    with pytest.raises(grpc.RpcError) as err:
        await catalogue(served).CreateProduct(inv.CreateProductRequest(sku="A", name="a"))
    assert set(rpc_error_details(err.value).violations) == {"price"}
    with pytest.raises(grpc.RpcError) as err:
        await catalogue(served).CreateProduct(
            inv.CreateProductRequest(sku="A", name="a", price=usd(2**63 - 1))
        )
    assert set(rpc_error_details(err.value).violations) == {"price.amount_minor"}


async def test_list_products_pages_in_sku_order(served: Served) -> None:
    skus = [f"SKU-{i:02d}" for i in range(7)]
    for sku in random.sample(skus, len(skus)):
        await product(served, sku, 1)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await catalogue(served).ListProducts(
            inv.ListProductsRequest(page_size=3, page_token=token)
        )
        pages += 1
        seen += [p.sku for p in page.products]
        token = page.next_page_token
        if not token:
            break
    assert seen == skus and pages == 3
    everything = await catalogue(served).ListProducts(inv.ListProductsRequest())
    assert [p.sku for p in everything.products] == skus and everything.next_page_token == ""

    bad = [
        (inv.ListProductsRequest(page_size=101), "page_size"),
        (inv.ListProductsRequest(page_size=-1), "page_size"),
        (inv.ListProductsRequest(page_token="not a token"), "page_token"),
        (inv.ListProductsRequest(page_token=encode_page_token("orders", {"sku": "A"})),
         "page_token"),
        (inv.ListProductsRequest(page_token=encode_page_token("inventory.products", {"x": 1})),
         "page_token"),
        (inv.ListProductsRequest(
            page_token=encode_page_token("inventory.products", {"sku": "A\x00"})), "page_token"),
    ]  # fmt: skip
    for req, field in bad:
        with pytest.raises(grpc.RpcError) as err:
            await catalogue(served).ListProducts(req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(rpc_error_details(err.value).violations) == {field}


async def test_add_stock_and_availability(served: Served) -> None:
    a = await product(served, "A", 2)
    b = await product(served, "B", 0)
    added = await catalogue(served).AddStock(inv.AddStockRequest(product_id=b.product_id,
                                                                 quantity=3))  # fmt: skip
    assert added.available == 3
    check = await catalogue(served).CheckAvailability(
        inv.CheckAvailabilityRequest(items=lines((a.product_id, 2), (b.product_id, 4)))
    )
    assert not check.all_available
    assert [(i.product_id, i.requested, i.available, i.sufficient) for i in check.items] == [
        (a.product_id, 2, 2, True),
        (b.product_id, 4, 3, False),
    ]
    with pytest.raises(grpc.RpcError) as err:
        await catalogue(served).AddStock(inv.AddStockRequest(product_id=saga(), quantity=1))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        await catalogue(served).AddStock(inv.AddStockRequest(product_id=a.product_id,
                                                             quantity=10**12))  # fmt: skip
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rpc_error_details(err.value).reason == "STOCK_LIMIT"
    assert await stock(served, a.product_id) == (2, 0)
    with pytest.raises(grpc.RpcError) as err:
        await catalogue(served).CheckAvailability(
            inv.CheckAvailabilityRequest(items=lines((saga(), 1)))
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reserve_is_idempotent_by_saga(served: Served, engine: AsyncEngine) -> None:
    a = await product(served, "A", 10, price=250)
    b = await product(served, "B", 10, price=100)
    sid = saga()
    req = inv.ReserveItemsRequest(saga_id=sid, items=lines((b.product_id, 3), (a.product_id, 2)))
    first = await reservations(served).ReserveItems(req)
    assert first.saga_id == sid and first.status == HELD
    assert {(i.product_id, i.quantity, i.unit_price.amount_minor) for i in first.items} == {
        (a.product_id, 2, 250),
        (b.product_id, 3, 100),
    }
    again = await reservations(served).ReserveItems(req)
    assert again == first
    assert await stock(served, a.product_id) == (8, 2)
    assert await stock(served, b.product_id) == (7, 3)
    events = await outbox_events(engine)
    assert [e.type for e in events] == ["inventory.reserved"]
    assert events[0].subject == sid
    assert {
        (x.product_id, x.quantity) for x in unpack(events[0], events_pb2.InventoryReserved).items
    } == {
        (a.product_id, 2),
        (b.product_id, 3),
    }


async def test_concurrent_duplicates_of_one_saga_reserve_once(served: Served) -> None:
    a = await product(served, "A", 100)
    req = inv.ReserveItemsRequest(saga_id=saga(), items=lines((a.product_id, 7)))
    results = await asyncio.gather(*(reservations(served).ReserveItems(req) for _ in range(10)))
    assert all(r == results[0] for r in results)
    assert await stock(served, a.product_id) == (93, 7)


async def test_insufficient_stock_reserves_nothing(served: Served, engine: AsyncEngine) -> None:
    a = await product(served, "A", 10)
    b = await product(served, "B", 1)
    sid = saga()
    with pytest.raises(grpc.RpcError) as err:
        await reservations(served).ReserveItems(
            inv.ReserveItemsRequest(saga_id=sid, items=lines((a.product_id, 5), (b.product_id, 2)))
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = rpc_error_details(err.value)
    assert details.reason == "INSUFFICIENT_STOCK"
    assert details.metadata == {"product_id": b.product_id, "requested": "2", "available": "1"}
    # All or nothing: A was not taken either, and nothing was published or recorded.
    assert await stock(served, a.product_id) == (10, 0)
    assert await event_types(engine) == []
    with pytest.raises(grpc.RpcError) as err:
        await reservations(served).ConfirmReservation(inv.ConfirmReservationRequest(saga_id=sid))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.RpcError) as err:
        await reservations(served).ReserveItems(
            inv.ReserveItemsRequest(saga_id=sid, items=lines((a.product_id, 1), (saga(), 1)))
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert rpc_error_details(err.value).reason == "PRODUCT_NOT_FOUND"
    assert await stock(served, a.product_id) == (10, 0)


async def test_confirm_sells_and_reports_low_stock(served: Served, engine: AsyncEngine) -> None:
    a = await product(served, "A", 8)
    first, second = saga(), saga()
    for sid, qty in ((first, 2), (second, 3)):
        await reservations(served).ReserveItems(
            inv.ReserveItemsRequest(saga_id=sid, items=lines((a.product_id, qty)))
        )
    assert await stock(served, a.product_id) == (3, 5)
    confirmed = await reservations(served).ConfirmReservation(
        inv.ConfirmReservationRequest(saga_id=first)
    )
    assert confirmed.status == CONFIRMED
    assert await stock(served, a.product_id) == (3, 3)  # the 2 units left for good
    # Confirming twice is a no-op.
    again = await reservations(served).ConfirmReservation(
        inv.ConfirmReservationRequest(saga_id=first)
    )
    assert again == confirmed
    assert await stock(served, a.product_id) == (3, 3)
    await reservations(served).ConfirmReservation(inv.ConfirmReservationRequest(saga_id=second))
    assert await stock(served, a.product_id) == (3, 0)
    events = await outbox_events(engine)
    low = [e for e in events if e.type == "inventory.low_stock"]
    assert len(low) == 1  # under the threshold since the first confirm: reported once
    first_low = unpack(low[0], events_pb2.InventoryLowStock)
    assert (first_low.product_id, first_low.available, first_low.threshold) == (
        a.product_id, 3, THRESHOLD,
    )  # fmt: skip
    # Restocked above the threshold, sold under it again: reported again.
    await catalogue(served).AddStock(inv.AddStockRequest(product_id=a.product_id, quantity=10))
    third = saga()
    await reservations(served).ReserveItems(
        inv.ReserveItemsRequest(saga_id=third, items=lines((a.product_id, 12)))
    )
    await reservations(served).ConfirmReservation(inv.ConfirmReservationRequest(saga_id=third))
    assert (await event_types(engine)).count("inventory.low_stock") == 2
    with pytest.raises(grpc.RpcError) as err:
        await reservations(served).ConfirmReservation(inv.ConfirmReservationRequest(saga_id=saga()))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_release_returns_stock_once(served: Served, engine: AsyncEngine) -> None:
    a = await product(served, "A", 10)
    sid = saga()
    await reservations(served).ReserveItems(
        inv.ReserveItemsRequest(saga_id=sid, items=lines((a.product_id, 4)))
    )
    req = inv.ReleaseReservationRequest(saga_id=sid, reason="payment declined")
    released = await reservations(served).ReleaseReservation(req)
    assert released.status == RELEASED and [i.quantity for i in released.items] == [4]
    assert await stock(served, a.product_id) == (10, 0)
    assert await reservations(served).ReleaseReservation(req) == released
    assert await stock(served, a.product_id) == (10, 0)
    events = await outbox_events(engine)
    assert [e.type for e in events] == ["inventory.reserved", "inventory.released"]
    assert unpack(events[1], events_pb2.InventoryReleased).reason == "payment declined"
    # A released reservation cannot be confirmed; a reserve retried later takes nothing.
    with pytest.raises(grpc.RpcError) as err:
        await reservations(served).ConfirmReservation(inv.ConfirmReservationRequest(saga_id=sid))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rpc_error_details(err.value).reason == "RESERVATION_RELEASED"
    late = await reservations(served).ReserveItems(
        inv.ReserveItemsRequest(saga_id=sid, items=lines((a.product_id, 4)))
    )
    assert late.status == RELEASED
    assert await stock(served, a.product_id) == (10, 0)


async def test_release_before_reserve_is_a_safe_no_op(served: Served, engine: AsyncEngine) -> None:
    a = await product(served, "A", 10)
    sid = saga()
    released = await reservations(served).ReleaseReservation(
        inv.ReleaseReservationRequest(saga_id=sid, reason="compensating")
    )
    assert released.status == RELEASED and list(released.items) == []
    # The original reserve, overtaken by its compensation, arrives: nothing is taken.
    late = await reservations(served).ReserveItems(
        inv.ReserveItemsRequest(saga_id=sid, items=lines((a.product_id, 1)))
    )
    assert late.status == RELEASED and list(late.items) == []
    assert await stock(served, a.product_id) == (10, 0)
    assert await event_types(engine) == []


async def test_confirmed_reservation_cannot_be_released(served: Served) -> None:
    a = await product(served, "A", 10)
    sid = saga()
    await reservations(served).ReserveItems(
        inv.ReserveItemsRequest(saga_id=sid, items=lines((a.product_id, 1)))
    )
    await reservations(served).ConfirmReservation(inv.ConfirmReservationRequest(saga_id=sid))
    with pytest.raises(grpc.RpcError) as err:
        await reservations(served).ReleaseReservation(inv.ReleaseReservationRequest(saga_id=sid))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rpc_error_details(err.value).reason == "RESERVATION_CONFIRMED"
    assert await stock(served, a.product_id) == (9, 0)


async def test_a_sale_is_returned_once_beyond_the_stock_limit(
    served: Served, engine: AsyncEngine
) -> None:
    """ReturnReservation puts a confirmed sale's units back once however often it is
    called, also on a product AddStock has since filled to the limit (a cancel used to
    be refused there with STOCK_LIMIT, its order already refunded)."""
    a = await product(served, "A", 10)
    sid = saga()
    await reservations(served).ReserveItems(
        inv.ReserveItemsRequest(saga_id=sid, items=lines((a.product_id, 4)))
    )
    await reservations(served).ConfirmReservation(inv.ConfirmReservationRequest(saga_id=sid))
    filled = await catalogue(served).AddStock(
        inv.AddStockRequest(product_id=a.product_id, quantity=MAX_STOCK - 6)
    )
    assert filled.available == MAX_STOCK
    with pytest.raises(grpc.RpcError) as err:  # an admin cannot go beyond it
        await catalogue(served).AddStock(inv.AddStockRequest(product_id=a.product_id, quantity=1))
    assert rpc_error_details(err.value).reason == "STOCK_LIMIT"
    req = inv.ReturnReservationRequest(saga_id=sid, reason="order cancelled")
    returned = await reservations(served).ReturnReservation(req)
    assert returned.status == RETURNED and [i.quantity for i in returned.items] == [4]
    assert await stock(served, a.product_id) == (MAX_STOCK + 4, 0)
    assert await reservations(served).ReturnReservation(req) == returned  # again: no-op
    assert await stock(served, a.product_id) == (MAX_STOCK + 4, 0)
    events = await outbox_events(engine)
    assert [e.type for e in events][-1] == "inventory.returned"
    assert [e.type for e in events].count("inventory.returned") == 1
    assert unpack(events[-1], events_pb2.InventoryReturned).reason == "order cancelled"
    with pytest.raises(grpc.RpcError) as err:  # a returned sale cannot be confirmed again
        await reservations(served).ConfirmReservation(inv.ConfirmReservationRequest(saga_id=sid))
    assert rpc_error_details(err.value).reason == "RESERVATION_RETURNED"


async def test_only_orders_may_return_a_reservation(served: Served) -> None:
    """ReturnReservation puts units back into stock: the contract's callers (orders) may,
    the edge, a developer's mesh-client and another service may not, and nothing comes
    back for their calls."""
    a = await product(served, "A", 10)
    sid = saga()
    await reservations(served).ReserveItems(
        inv.ReserveItemsRequest(saga_id=sid, items=lines((a.product_id, 4)))
    )
    await reservations(served).ConfirmReservation(inv.ConfirmReservationRequest(saga_id=sid))
    req = inv.ReturnReservationRequest(saga_id=sid, reason="not mine to return")
    for caller in ("edge", "mesh-client", "payments"):
        async with mtls_channel(served.address, "inventory", caller=caller) as channel:
            with pytest.raises(grpc.RpcError) as err:
                await inventory_pb2_grpc.ReservationServiceStub(channel).ReturnReservation(req)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, caller
    assert await stock(served, a.product_id) == (6, 0)
    async with mtls_channel(served.address, "inventory", caller="orders") as channel:
        back = await inventory_pb2_grpc.ReservationServiceStub(channel).ReturnReservation(req)
    assert back.status == RETURNED
    assert await stock(served, a.product_id) == (10, 0)


async def test_returning_a_held_released_or_unknown_reservation(served: Served) -> None:
    """A held reservation (its `order.completed` not handled yet) comes back from
    `reserved`; a released one is answered as it is (its units are back already);
    a saga without a reservation is NOT_FOUND."""
    a = await product(served, "A", 10)
    held, released = saga(), saga()
    for sid in (held, released):
        await reservations(served).ReserveItems(
            inv.ReserveItemsRequest(saga_id=sid, items=lines((a.product_id, 3)))
        )
    assert await stock(served, a.product_id) == (4, 6)
    back = await reservations(served).ReturnReservation(inv.ReturnReservationRequest(saga_id=held))
    assert back.status == RETURNED
    assert await stock(served, a.product_id) == (7, 3)
    await reservations(served).ReleaseReservation(inv.ReleaseReservationRequest(saga_id=released))
    again = await reservations(served).ReturnReservation(
        inv.ReturnReservationRequest(saga_id=released)
    )
    assert again.status == RELEASED
    assert await stock(served, a.product_id) == (10, 0)
    with pytest.raises(grpc.RpcError) as err:
        await reservations(served).ReturnReservation(inv.ReturnReservationRequest(saga_id=saga()))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert rpc_error_details(err.value).reason == "RESERVATION_NOT_FOUND"
    with pytest.raises(grpc.RpcError) as err:
        await reservations(served).ReturnReservation(
            inv.ReturnReservationRequest(saga_id="x", reason="bad\x00reason")
        )
    assert set(rpc_error_details(err.value).violations) == {"saga_id", "reason"}


async def test_reserve_validation(served: Served) -> None:
    pid = saga()
    cases = [
        (inv.ReserveItemsRequest(), {"saga_id", "items"}),
        (inv.ReserveItemsRequest(saga_id="x", items=lines((pid, 0))),
         {"saga_id", "items[0].quantity"}),
        (inv.ReserveItemsRequest(saga_id=saga(), items=lines((pid, -3), ("bad", 1), (pid, 1))),
         {"items[0].quantity", "items[1].product_id", "items[2].product_id"}),
        (inv.ReserveItemsRequest(saga_id=saga(), items=lines(*[(saga(), 1)] * 101)), {"items"}),
        (inv.ReserveItemsRequest(saga_id=saga(), items=lines((pid, 2**63 - 1))),
         {"items[0].quantity"}),
    ]  # fmt: skip
    for req, fields in cases:
        with pytest.raises(grpc.RpcError) as err:
            await reservations(served).ReserveItems(req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(rpc_error_details(err.value).violations) == fields
    with pytest.raises(grpc.RpcError) as err:
        await reservations(served).ReleaseReservation(
            inv.ReleaseReservationRequest(saga_id=saga(), reason="bad\x00reason")
        )
    assert set(rpc_error_details(err.value).violations) == {"reason"}


async def test_concurrent_reservations_never_oversell(served: Served, engine: AsyncEngine) -> None:
    """200 sagas race for 1 unit each of 50 in stock: exactly 50 get one."""
    a = await product(served, "HOT", 50)

    async def one() -> bool:
        try:
            await reservations(served).ReserveItems(
                inv.ReserveItemsRequest(saga_id=saga(), items=lines((a.product_id, 1))),
                timeout=60,
            )
            return True
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
            assert rpc_error_details(exc).reason == "INSUFFICIENT_STOCK"
            return False

    results = await asyncio.gather(*(one() for _ in range(200)))
    assert results.count(True) == 50
    assert await stock(served, a.product_id) == (0, 50)
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT COUNT(*) FROM reservations")) == 50
        assert await conn.scalar(text("SELECT SUM(quantity) FROM reservation_items")) == 50
    assert (await event_types(engine)).count("inventory.reserved") == 50


async def test_concurrent_multi_line_reservations_in_any_order(served: Served) -> None:
    """Sagas taking two products listed in random order neither deadlock nor oversell."""
    a = await product(served, "A", 20)
    b = await product(served, "B", 20)

    async def one() -> bool:
        pair = [(a.product_id, 1), (b.product_id, 1)]
        random.shuffle(pair)
        try:
            await reservations(served).ReserveItems(
                inv.ReserveItemsRequest(saga_id=saga(), items=lines(*pair)), timeout=60
            )
            return True
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
            return False

    results = await asyncio.gather(*(one() for _ in range(40)))
    assert results.count(True) == 20
    assert await stock(served, a.product_id) == (0, 20)
    assert await stock(served, b.product_id) == (0, 20)


async def test_reserve_and_confirm_statements(served: Served, engine: AsyncEngine) -> None:
    # Every order reserves and confirms: their statements are the inventory's share of
    # an order's CPU. Confirming a HELD reservation: its status UPDATE (the check), the
    # lines' SELECT, one UPDATE per line returning what the low-stock check needs.
    a, b = await product(served, "A", 50), await product(served, "B", 50)
    sid = saga()
    tables = ("reservations", "reservation_items", "products", "mesh_outbox")
    with recorded_statements(engine, tables) as reserve:
        await reservations(served).ReserveItems(
            inv.ReserveItemsRequest(saga_id=sid, items=lines((a.product_id, 1), (b.product_id, 2)))
        )
    # The reservation, one UPDATE per line, the lines (one executemany), the event.
    assert len(reserve) == 5, reserve
    with recorded_statements(engine, tables) as confirm:
        await reservations(served).ConfirmReservation(inv.ConfirmReservationRequest(saga_id=sid))
    assert len(confirm) == 4, confirm
    assert await stock(served, a.product_id) == (49, 0)
    assert await stock(served, b.product_id) == (48, 0)
