"""Inventory's `order.completed` handler in-process, on SQLite and PostgreSQL: through the
inbox a redelivery records nothing twice, low stock is reported once per crossing, the
span continues the event's trace. (The process-level path is in test_shop_events.py.)"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from meshproto.events.v1.envelope_pb2 import Envelope
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from shop.events.v1 import events_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mesh.db import create_engine, migrate, session_factory
from mesh.events import Handler, Inbox, Outbox, new_envelope, unpack
from services.common.event_types import EVENTS
from services.common.money import Amount
from services.inventory import store
from services.inventory.events import CONSUMER, InventoryEventHandlers
from services.inventory.validation import Line, NewProduct
from tests.support.postgres import pg_available
from tests.support.shop import PG_SERVER

THRESHOLD = 5


@dataclass
class Inventory:
    engine: AsyncEngine
    store: store.InventoryStore
    handle: Handler
    spans: InMemorySpanExporter


@pytest.fixture(params=["sqlite", "postgresql"])
async def inventory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Inventory]:
    schema = ""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'inventory.db'}")
    else:
        if not await pg_available():
            pytest.skip("no PostgreSQL on 127.0.0.1:5432")
        schema = f"inv_{time.time_ns()}"
        admin = create_async_engine(f"{PG_SERVER}/test")
        async with admin.begin() as conn:
            await conn.execute(text(f"CREATE SCHEMA {schema}"))
        await admin.dispose()
        engine = create_engine(
            f"{PG_SERVER}/test", connect_args={"server_settings": {"search_path": schema}}
        )
    try:
        await migrate(engine, store.migrations())
        sessions = session_factory(engine)
        inv = store.InventoryStore(sessions, Outbox(), low_stock_threshold=THRESHOLD)
        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        handlers = InventoryEventHandlers(inv, provider)
        yield Inventory(
            engine,
            inv,
            Inbox(sessions, CONSUMER).idempotent(handlers.order_completed),
            spans,
        )
    finally:
        if schema:
            async with engine.begin() as conn:
                await conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        await engine.dispose()


async def product(inv: Inventory, stock: int) -> str:
    row = await inv.store.create_product(
        NewProduct(f"SKU-{uuid.uuid4().hex[:10]}", "Thing", Amount("USD", 500), stock)
    )
    return row.product_id


def completed(order_id: str, lines: list[tuple[str, int]], trace_id: int = 0) -> Envelope:
    ctx = None
    if trace_id:
        remote = SpanContext(trace_id, 0xABC, is_remote=True, trace_flags=TraceFlags(1))
        ctx = trace.set_span_in_context(NonRecordingSpan(remote))
    payload = events_pb2.OrderCompleted(
        order_id=order_id,
        user_id="u",
        saga_id=order_id,
        items=[events_pb2.EventLine(product_id=p, quantity=q) for p, q in lines],
    )
    return new_envelope(payload, types=EVENTS, source="orders", subject=order_id, context=ctx)


async def sales(inv: Inventory, order_id: str) -> list[tuple[str, int]]:
    async with inv.engine.connect() as conn:
        found = await conn.execute(
            text("SELECT product_id, quantity FROM sales WHERE order_id = :o ORDER BY product_id"),
            {"o": order_id},
        )
        return [(r[0], int(r[1])) for r in found.all()]


async def low_stock_events(inv: Inventory) -> list[tuple[str, int]]:
    async with inv.engine.connect() as conn:
        payloads = (await conn.execute(text("SELECT payload FROM mesh_outbox ORDER BY seq"))).all()
    envs = [Envelope.FromString(bytes(p[0])) for p in payloads]
    return [
        (e.subject, unpack(e, events_pb2.InventoryLowStock).available)
        for e in envs
        if e.type == "inventory.low_stock"
    ]


async def test_a_redelivered_order_completed_records_the_sale_once(inventory: Inventory) -> None:
    a, b = await product(inventory, 50), await product(inventory, 40)
    order = str(uuid.uuid4())
    env = completed(order, [(a, 2), (b, 1), (a, 1)])

    await inventory.handle(env)
    await inventory.handle(env)  # a redelivery: lost ack, relay republish

    assert await sales(inventory, order) == sorted([(a, 3), (b, 1)])
    assert await low_stock_events(inventory) == []


async def test_order_completed_confirms_the_orders_reservation_once(inventory: Inventory) -> None:
    """The saga no longer calls ConfirmReservation: the event confirms the held units."""
    a, b = await product(inventory, 50), await product(inventory, 40)
    order = str(uuid.uuid4())  # the event's saga_id is the order id here
    await inventory.store.reserve(order, [Line(a, 2), Line(b, 1)])
    assert (await inventory.store.get_product(a)).reserved == 2

    env = completed(order, [(a, 2), (b, 1)])
    await inventory.handle(env)
    await inventory.handle(env)  # a redelivery: nothing twice

    held = await inventory.store.reservation(order)
    assert held is not None and held.status == store.CONFIRMED
    got = [await inventory.store.get_product(p) for p in (a, b)]
    assert [(x.available, x.reserved) for x in got] == [(48, 0), (39, 0)]
    assert await sales(inventory, order) == sorted([(a, 2), (b, 1)])


async def test_a_released_reservation_stays_released_and_the_sale_is_recorded(
    inventory: Inventory,
) -> None:
    """Nothing to refuse: the order is complete whatever inventory holds (logged)."""
    a = await product(inventory, 50)
    order = str(uuid.uuid4())
    await inventory.store.reserve(order, [Line(a, 2)])
    await inventory.store.release(order, "test")

    await inventory.handle(completed(order, [(a, 2)]))

    held = await inventory.store.reservation(order)
    assert held is not None and held.status == store.RELEASED
    assert (await inventory.store.get_product(a)).reserved == 0
    assert await sales(inventory, order) == [(a, 2)]


async def test_low_stock_is_reported_once_per_crossing(inventory: Inventory) -> None:
    # Created under the threshold and never reported (no ConfirmReservation yet).
    low = await product(inventory, 3)
    plenty = await product(inventory, 100)

    await inventory.handle(completed(str(uuid.uuid4()), [(low, 1), (plenty, 1)]))
    await inventory.handle(completed(str(uuid.uuid4()), [(low, 1)]))  # same crossing

    assert await low_stock_events(inventory) == [(low, 3)]


async def test_the_handler_span_continues_the_events_trace(inventory: Inventory) -> None:
    a = await product(inventory, 50)
    trace_id = int(uuid.uuid4().hex, 16)
    order = str(uuid.uuid4())

    await inventory.handle(completed(order, [(a, 1)], trace_id))

    [span] = inventory.spans.get_finished_spans()
    assert span.name == "inventory.record_sale"
    assert span.context is not None and span.context.trace_id == trace_id
    assert span.parent is not None and span.parent.span_id == 0xABC
    async with inventory.engine.connect() as conn:
        stored = await conn.scalar(
            text("SELECT trace_id FROM sales WHERE order_id = :o"), {"o": order}
        )
    assert stored == f"{trace_id:032x}"


async def test_an_event_of_another_type_changes_nothing(inventory: Inventory) -> None:
    env = new_envelope(
        events_pb2.UserCreated(user_id="u", email="u@example.com"),
        types=EVENTS,
        source="users",
        subject="u",
    )
    env.type = "order.completed"  # a mislabelled event: logged and ignored, not retried
    await inventory.handle(env)  # returns: the consume loop acks it
    async with inventory.engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM sales")) == 0
        handled = await conn.scalar(text("SELECT count(*) FROM mesh_inbox"))
    assert handled == 1
