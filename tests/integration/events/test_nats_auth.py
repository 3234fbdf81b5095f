"""NATS authentication and per-service permissions on a real nats-server running the
config `meshctl up` renders: who is refused, who is let through, and that a permitted
event is handled once."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.errors
import pytest
from meshproto.events.v1.envelope_pb2 import Envelope
from shop.events.v1 import events_pb2

from mesh.events import SubscribeOptions, new_envelope
from mesh.events.nats_auth import stream_for
from services.common.event_types import EVENTS, shop_streams
from tests.support.nats import NatsServer
from tests.support.nats_clients import Client, bus_as, order_completed
from tests.support.poll import eventually

STREAMS = shop_streams()


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        if c.nc is not None and not c.nc.is_closed:
            await c.nc.close()


async def as_identity(srv: NatsServer, identity: str, clients: list[Client]) -> Client:
    c = Client()
    clients.append(c)
    await c.connect(srv, identity)
    return c


async def publish_as_payments(srv: NatsServer) -> None:
    """One `payment.completed` published as payments (its stream declared first)."""
    payments = await bus_as(srv, "payments")
    try:
        await payments.ensure_streams()
        await payments.publish(payment_completed())
    finally:
        await payments.close()


def payment_completed() -> Envelope:
    return new_envelope(
        events_pb2.PaymentCompleted(payment_id="p-1", saga_id="s-1"),
        types=EVENTS,
        source="test",
        subject="p-1",
    )


async def test_anonymous_connections_are_refused(nats_srv: NatsServer) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(nats_srv.url, allow_reconnect=False, max_reconnect_attempts=0)


async def test_a_seed_the_server_does_not_know_is_refused(
    nats_srv: NatsServer, tmp_path: Any
) -> None:
    from mesh.events.nats_auth import new_user_seed

    stranger = tmp_path / "stranger.nk"
    stranger.write_bytes(new_user_seed())
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(nats_srv.url, nkeys_seed=str(stranger), allow_reconnect=False,
                           max_reconnect_attempts=0)  # fmt: skip


async def test_a_service_no_event_identity_names_is_refused(nats_srv: NatsServer) -> None:
    # What `meshctl up` hands a service its topology gives no NATS identity (a project
    # without events): the URL alone. Connecting as that service, it is refused.
    from mesh.events.nats_connect import client_auth
    from mesh.settings import Settings

    assert nats_srv.local is not None
    env = nats_srv.local.client_env("notes")
    assert "NATS_NKEY_SEED_FILE" not in env
    auth = client_auth(Settings.from_env("notes", env))
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(nats_srv.url, allow_reconnect=False, max_reconnect_attempts=0,
                           **auth.connect_options())  # fmt: skip
    # The control: a named service's environment connects.
    named = client_auth(Settings.from_env("orders", nats_srv.local.client_env("orders")))
    nc = await nats.connect(nats_srv.url, allow_reconnect=False, **named.connect_options())
    await nc.close()


async def test_orders_publishing_payment_completed_is_rejected_by_the_server(
    nats_srv: NatsServer, clients: list[Client]
) -> None:
    payments = await bus_as(nats_srv, "payments")
    try:
        await payments.ensure_streams()  # PAYMENT exists: only the permission can stop it
    finally:
        await payments.close()
    orders = await as_identity(nats_srv, "orders", clients)
    assert orders.nc is not None
    with pytest.raises(nats.errors.TimeoutError):  # the server dropped it: no ack
        await orders.nc.jetstream().publish("payment.completed", b"forged", timeout=1.0)
    await eventually(lambda: orders.violation('Publish to "payment.completed"'),
                     what="the server's permissions violation")  # fmt: skip
    admin = await nats.connect(nats_srv.admin_url)
    try:
        info = await admin.jetstream().stream_info("PAYMENT")
        assert info.state.messages == 0  # nothing forged reached the stream
    finally:
        await admin.close()


async def test_orders_publishing_order_completed_is_handled_once_by_inventory(
    nats_srv: NatsServer,
) -> None:
    orders = await bus_as(nats_srv, "orders")
    inventory = await bus_as(nats_srv, "inventory")
    handled: list[str] = []

    async def handler(env: Envelope) -> None:
        handled.append(env.id)

    try:
        await orders.ensure_streams()
        await inventory.ensure_streams()
        stream = stream_for("order.completed", STREAMS).name
        await inventory.subscribe("order.completed", handler,
                                  durable="inventory-order-completed", stream=stream)  # fmt: skip
        env = order_completed()
        ack = await orders.publish(env)
        assert ack.stream == "ORDER"

        async def acked() -> bool:
            info = await inventory.js.consumer_info("ORDER", "inventory-order-completed")
            return info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= ack.seq

        await eventually(acked, what="inventory's consumer to ack the event")
        info = await inventory.js.consumer_info("ORDER", "inventory-order-completed")
        assert info.num_ack_pending == 0 and info.num_redelivered == 0
        assert handled == [env.id]
    finally:
        await inventory.close()
        await orders.close()


async def test_a_service_cannot_subscribe_outside_its_grants(
    nats_srv: NatsServer, clients: list[Client]
) -> None:
    orders = await as_identity(nats_srv, "orders", clients)
    assert orders.nc is not None
    await orders.nc.subscribe("payment.refunded")
    await orders.nc.subscribe("_INBOX.payments.>")  # another identity's replies
    await orders.nc.flush()
    await eventually(lambda: orders.violation("subscription to \"payment.refunded\""),
                     what="the subscription refused")  # fmt: skip
    await eventually(lambda: orders.violation("subscription to \"_INBOX.payments.>\""),
                     what="the other inbox refused")  # fmt: skip


async def test_a_service_cannot_use_another_services_consumer_or_stream(
    nats_srv: NatsServer, clients: list[Client]
) -> None:
    admin = await nats.connect(nats_srv.admin_url)
    try:
        for spec in STREAMS:
            await admin.jetstream().add_stream(spec.config())
    finally:
        await admin.close()
    orders = await as_identity(nats_srv, "orders", clients)
    assert orders.nc is not None
    js = orders.nc.jetstream(timeout=1.0)
    with pytest.raises(nats.errors.TimeoutError):
        await js.consumer_info("ORDER", "inventory-order-completed")
    with pytest.raises(nats.errors.TimeoutError):  # retired: orders no longer consumes it
        await js.consumer_info("PAYMENT", "orders-payment-completed")
    with pytest.raises(nats.errors.TimeoutError):
        await js.delete_stream("PAYMENT")
    with pytest.raises(nats.errors.TimeoutError):
        await js.stream_info("USER")  # only the streams it declares
    await eventually(
        lambda: orders.violation("$JS.API.CONSUMER.INFO.ORDER.inventory-order-completed"),
        what="the foreign consumer refused",
    )
    await eventually(
        lambda: orders.violation("$JS.API.CONSUMER.INFO.PAYMENT.orders-payment-completed"),
        what="the retired consumer refused",
    )
    await eventually(lambda: orders.violation("$JS.API.STREAM.DELETE.PAYMENT"),
                     what="the stream deletion refused")  # fmt: skip


async def test_meshctl_observer_reads_events_but_publishes_nothing(
    nats_srv: NatsServer, clients: list[Client]
) -> None:
    observer = await as_identity(nats_srv, "meshctl", clients)
    assert observer.nc is not None
    seen: list[str] = []

    async def on_msg(msg: Any) -> None:
        seen.append(msg.subject)

    await observer.nc.subscribe(">", cb=on_msg)
    await observer.nc.flush()
    await publish_as_payments(nats_srv)
    await eventually(lambda: "payment.completed" in seen, what="the observer sees the event")
    # JetStream's API traffic and other clients' replies are withheld from it.
    assert not any(s.startswith(("$JS.", "_INBOX.")) for s in seen), seen
    await observer.nc.publish("payment.completed", b"forged")
    await observer.nc.flush()
    await eventually(lambda: observer.violation('Publish to "payment.completed"'),
                     what="the observer's publish refused")  # fmt: skip


async def test_a_consumer_dead_letters_under_its_own_identity(nats_srv: NatsServer) -> None:
    """The DLQ grant is enough: inventory parks a poison `order.completed` in
    `dlq.order.completed` (its own dead letters, nothing wider)."""
    orders = await bus_as(nats_srv, "orders")
    inventory = await bus_as(nats_srv, "inventory")

    async def poison(env: Envelope) -> None:
        raise RuntimeError("cannot handle this one")

    try:
        await orders.ensure_streams()
        await inventory.ensure_streams()
        sub = await inventory.subscribe("order.completed", poison,
                                        durable="inventory-order-completed", stream="ORDER",
                                        options=SubscribeOptions(max_deliver=1))  # fmt: skip
        await orders.publish(order_completed())
        await eventually(lambda: sub.stats.dead_lettered == 1, what="the dead letter")
    finally:
        await inventory.close()
        await orders.close()
    admin = await nats.connect(nats_srv.admin_url)
    try:
        info = await admin.jetstream().stream_info("DLQ")
        assert info.state.messages == 1
    finally:
        await admin.close()


async def test_a_password_in_the_nats_url_is_never_shown(
    nats_srv: NatsServer, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """`meshctl events tail` and `meshctl up`'s table print the URL without its secret."""
    from mesh.local.tail import tail_events
    from mesh.local.up import table

    password = nats_srv.admin_url.split(":")[2].split("@")[0]
    out = io.StringIO()
    tail = asyncio.create_task(tail_events(nats_srv.admin_url, "payment.>", limit=1, out=out))

    err: list[str] = []

    def tailing() -> bool:
        err.append(capsys.readouterr().err)
        return "tailing" in "".join(err)

    await eventually(tailing, what="the tail subscribed")
    await publish_as_payments(nats_srv)
    await asyncio.wait_for(tail, 10)
    assert "payment.completed" in out.getvalue()
    shown = table({}, 8080, nats_srv.admin_url)
    assert "nats://***@127.0.0.1" in shown
    err.append(capsys.readouterr().err)
    assert "on nats://***@127.0.0.1" in "".join(err)
    everything = out.getvalue() + "".join(err) + caplog.text + shown
    assert password not in everything


class _LeftPipe(io.StringIO):
    """An output whose reader has gone, as `meshctl events tail | head -1` meets it."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


async def test_the_tail_ends_when_its_reader_leaves(
    nats_srv: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a limit the tail runs until stopped, but not past its reader: the write's
    BrokenPipeError (swallowed by nats-py inside a callback) ends it, for meshctl to exit
    as a shell tool does on SIGPIPE."""
    from mesh.local.tail import tail_events

    tail = asyncio.create_task(tail_events(nats_srv.admin_url, "payment.>", out=_LeftPipe()))
    await eventually(lambda: "tailing" in capsys.readouterr().err, what="the tail subscribed")
    await publish_as_payments(nats_srv)
    with pytest.raises(BrokenPipeError):
        await asyncio.wait_for(tail, 10)


async def test_the_dashboard_reads_the_streams_state_and_no_event(
    nats_srv: NatsServer, clients: list[Client], tmp_path: Any
) -> None:
    """The dashboard's monitor identity: the streams' message counts and the consumers'
    pending, through the dashboard's own collector; an event's content, a consumer of its
    own, a deleted stream or a plain subscription to events are refused."""
    from mesh.discovery.embedded import EmbeddedRegistry
    from mesh.local.dashboard.collect import Collector

    await publish_as_payments(nats_srv)  # PAYMENT holds one event
    registry = EmbeddedRegistry(tmp_path / "registry")
    collector = Collector(
        registry, [], nats_url=nats_srv.url, edge_admin=None,
        traces_db=tmp_path / "traces.db", nats_auth=nats_srv.auth_for("dashboard"),
    )  # fmt: skip
    notes: list[str] = []
    try:
        streams = await collector._streams(notes)
    finally:
        await collector.close()
        await registry.close()
    assert notes == []
    assert {s.name: s.messages for s in streams}.get("PAYMENT") == 1
    # The attacker's requests, as the dashboard's identity.
    spy = await as_identity(nats_srv, "dashboard", clients)
    assert spy.nc is not None
    js = spy.nc.jetstream(timeout=1.0)
    with pytest.raises(nats.errors.TimeoutError):
        await js.get_msg("PAYMENT", 1)
    with pytest.raises(nats.errors.TimeoutError):
        await js.add_consumer("PAYMENT", durable_name="peek")
    with pytest.raises(nats.errors.TimeoutError):
        await js.delete_stream("PAYMENT")
    await spy.nc.subscribe("payment.>")
    await spy.nc.flush()
    await eventually(lambda: spy.violation("$JS.API.STREAM.MSG.GET.PAYMENT"),
                     what="reading an event refused")  # fmt: skip
    await eventually(lambda: spy.violation("$JS.API.STREAM.DELETE.PAYMENT"),
                     what="deleting a stream refused")  # fmt: skip
    await eventually(lambda: spy.violation('subscription to "payment.>"'),
                     what="a subscription to events refused")  # fmt: skip
