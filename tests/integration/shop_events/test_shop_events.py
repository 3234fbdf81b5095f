"""Events across the shop's processes: a real nats-server, the four services, a test
subscriber. What an order publishes reaches every subscriber once, with the caller's
trace; events written while NATS is down, or by a service killed before it could
publish, arrive after the fact, once in effect; `meshctl events tail` shows them."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys

import pytest
from shop.events.v1 import events_pb2
from shop.orders.v2 import orders_pb2 as v2

from mesh.events import unpack
from services.inventory.events import ORDER_COMPLETED_DURABLE
from tests.support.nats import NatsServer
from tests.support.poll import eventually
from tests.support.shop import REPO, ShopStack
from tests.support.shop_calls import create_v2, new_product, new_user, payment
from tests.support.shop_events import (
    LOW_STOCK_THRESHOLD,
    Recorder,
    acked_through,
    log_line,
    outbox_rows,
    republish,
    rows,
    scalar,
    stream_events,
    trace_id_of,
)

pytestmark = pytest.mark.asyncio(loop_scope="package")


def new_traceparent() -> tuple[str, str]:
    """(traceparent, trace id) of a sampled caller span."""
    trace_id = secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-01", trace_id


async def sales_of(shop: ShopStack, order_id: str) -> list[tuple[str, int, str, str]]:
    """(product, units, trace id, event id) of each sales row inventory recorded for the order."""
    found = await rows(
        shop.database_url("inventory"),
        "SELECT product_id, quantity, trace_id, event_id FROM sales WHERE order_id = :o",
        o=order_id,
    )
    return [tuple(r) for r in found]  # type: ignore[misc]


async def handled_by(shop: ShopStack, service: str, consumer: str, event_id: str) -> int:
    n = await scalar(
        shop.database_url(service),
        "SELECT count(*) FROM mesh_inbox WHERE consumer = :c AND event_id = :e",
        c=consumer,
        e=event_id,
    )
    return int(n or 0)


async def test_an_order_reaches_each_subscriber_once_with_the_callers_trace(
    shop: ShopStack, recorder: Recorder
) -> None:
    user = await new_user(shop)
    product = await new_product(shop, stock=10)
    traceparent, trace_id = new_traceparent()

    order = await shop.orders_v2().CreateOrder(
        create_v2(user, [(product, 6)]), metadata=(("traceparent", traceparent),)
    )
    assert order.status == v2.ORDER_STATUS_COMPLETED

    # The test's own durable consumer: once, in the caller's trace (continued from headers).
    effect = await recorder.wait_for("order.completed", order.order_id)
    assert effect.n == 1 and recorder.deliveries[effect.event_id] == 1
    assert effect.trace_id == trace_id
    [published] = [
        e
        for e in await stream_events(shop.nats_url, "ORDER", "order.completed")
        if e.envelope.subject == order.order_id
    ]
    assert published.envelope.id == effect.event_id
    assert trace_id_of(published.envelope.traceparent) == trace_id
    assert trace_id_of(published.headers["traceparent"]) == trace_id
    assert published.headers["Nats-Msg-Id"] == effect.event_id
    assert [
        (x.product_id, x.quantity)
        for x in unpack(published.envelope, events_pb2.OrderCompleted).items
    ] == [(product, 6)]

    # Inventory: one sale row, in the same trace, handled once through its inbox.
    async def sold() -> list[tuple[str, int, str, str]]:
        return await sales_of(shop, order.order_id)

    assert await eventually(sold, what="inventory recording the sale") == [
        (product, 6, trace_id, effect.event_id)
    ]
    assert await handled_by(shop, "inventory", "inventory", effect.event_id) == 1
    line = await log_line(
        shop.processes["inventory"].log_path, f"sale of order {order.order_id}", trace_id
    )
    assert f"6 x {product}" in line

    # 10 - 6 < threshold: the handler confirmed the order's reservation and reported the
    # crossing in its transaction; the sale's own check found it reported: no second one.
    low = [
        (
            unpack(env, events_pb2.InventoryLowStock).available,
            unpack(env, events_pb2.InventoryLowStock).threshold,
        )
        for env, _ in await outbox_rows(shop.database_url("inventory"))
        if env.type == "inventory.low_stock" and env.subject == product
    ]
    assert low == [(4, LOW_STOCK_THRESHOLD)]


async def test_events_written_while_nats_is_down_arrive_once_after_it_restarts(
    shop: ShopStack, recorder: Recorder, nats_running: NatsServer
) -> None:
    users = [await new_user(shop) for _ in range(3)]
    product = await new_product(shop, stock=100)
    await nats_running.stop()

    orders = [
        await shop.orders_v2().CreateOrder(create_v2(u, [(product, 1 + i)]), timeout=30)
        for i, u in enumerate(users)
    ]
    assert all(o.status == v2.ORDER_STATUS_COMPLETED for o in orders)
    ids = {o.order_id for o in orders}
    # Committed with the orders, waiting in the outbox: NATS is not there to take them.
    waiting = [
        env.subject
        for env, sent in await outbox_rows(shop.database_url("orders"))
        if env.type == "order.completed" and env.subject in ids and not sent
    ]
    assert sorted(waiting) == sorted(ids)

    await nats_running.start()

    for o in orders:
        done = await recorder.wait_for("order.completed", o.order_id, within_s=30)
        reserved = await recorder.wait_for("inventory.reserved", o.order_id)
        p = await payment(shop, o.order_id)
        assert p is not None
        paid = await recorder.wait_for("payment.completed", p.payment_id)
        assert (done.n, reserved.n, paid.n) == (1, 1, 1)

        async def sold(order_id: str = o.order_id) -> list[tuple[str, int, str, str]]:
            return await sales_of(shop, order_id)

        quantity = next(x.quantity for x in o.items)
        [(sold_product, units, _, event_id)] = await eventually(sold, what="sale recorded")
        assert (sold_product, units, event_id) == (product, quantity, done.event_id)
        assert await handled_by(shop, "inventory", "inventory", done.event_id) == 1

    # JetStream holds each event once, whatever the relays retried.
    published = [
        e
        for e in await stream_events(shop.nats_url, "ORDER", "order.completed")
        if e.envelope.subject in ids
    ]
    assert sorted(e.envelope.subject for e in published) == sorted(ids)

    # A copy beyond the stream's dedupe (a relay republishing after its duplicate window)
    # reaches the consumers again: their inboxes make it change nothing.
    last = 0
    for e in published:
        last = await republish(shop.nats_url, e)

    async def replays_acked() -> bool:
        return await acked_through(
            shop.nats_url, "ORDER", ORDER_COMPLETED_DURABLE, last
        ) and await acked_through(shop.nats_url, "ORDER", recorder.durable("order.completed"), last)

    await eventually(replays_acked, what="the copies handled by inventory and the test")
    for o in orders:
        assert len(await sales_of(shop, o.order_id)) == 1
        [effect] = await recorder.effects("order.completed", o.order_id)
        assert effect.n == 1 and recorder.deliveries[effect.event_id] == 2


async def test_an_event_committed_before_a_crash_is_published_after_the_restart(
    shop: ShopStack, recorder: Recorder, nats_running: NatsServer
) -> None:
    await nats_running.stop()  # users' relay cannot publish from now on
    user = await new_user(shop)
    users_db = shop.database_url("users")
    [(env, sent)] = [
        (env, sent)
        for env, sent in await outbox_rows(users_db)
        if env.type == "user.created" and env.subject == user
    ]
    assert not sent  # committed with the account, not published

    await shop.kill("users")  # kill -9: the row stays pending in the database
    await nats_running.start()
    await shop.start("users")

    # The restarted users (same MESH_INSTANCE_ID) takes its relay lease back at once.
    effect = await recorder.wait_for("user.created", user, within_s=40)
    assert effect.event_id == env.id and effect.n == 1

    async def marked_sent() -> bool:
        return any(sent for e, sent in await outbox_rows(users_db) if e.id == env.id)

    await eventually(marked_sent, what="the outbox row marked sent")
    published = [
        e
        for e in await stream_events(shop.nats_url, "USER", "user.created")
        if e.envelope.id == env.id
    ]
    assert len(published) == 1
    assert unpack(published[0].envelope, events_pb2.UserCreated).user_id == user


async def test_meshctl_events_tail_prints_decoded_events(
    shop: ShopStack, nats_srv: NatsServer
) -> None:
    user = await new_user(shop)
    product = await new_product(shop, stock=5)
    env = {
        **os.environ,
        **nats_srv.client_env("meshctl"),  # the read-only identity `meshctl up` hands it
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "generated")]),
    }
    tail = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh.cli", "events", "tail", "order.*", "--limit", "1",
        env=env, cwd=str(REPO),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert tail.stderr is not None and tail.stdout is not None
        # A core subscription sees what is published from now on: wait until it is there.
        ready = await asyncio.wait_for(tail.stderr.readline(), 20)
        assert b"tailing 'order.*'" in ready, ready

        traceparent, trace_id = new_traceparent()
        # Two orders at once: `--limit 1` prints one event, not what arrives meanwhile.
        orders = await asyncio.gather(
            shop.orders_v2().CreateOrder(
                create_v2(user, [(product, 2)]), metadata=(("traceparent", traceparent),)
            ),
            shop.orders_v2().CreateOrder(create_v2(user, [(product, 1)])),
        )

        out = await asyncio.wait_for(tail.stdout.read(), 20)
        assert await asyncio.wait_for(tail.wait(), 5) == 0
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()
    [line] = out.decode().splitlines()
    assert "order.completed" in line
    assert "source=orders" in line
    order = next(o for o in orders if f'"order_id": "{o.order_id}"' in line)
    if order is orders[0]:
        assert f"trace={trace_id}" in line
    assert f'"product_id": "{product}"' in line
