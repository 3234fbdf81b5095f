"""Default deadlines and propagation of the incoming call's deadline, all four arities."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors.context import incoming_deadline, remaining_deadline
from interceptors.deadline import DeadlineClientInterceptor, DeadlineServerInterceptor
from tests.support.ping import PingServicer
from tests.support.ping_calls import ARITIES, channel, invoke, invoke_error

# The server's time_remaining() can read a few ms above the timeout (clock rounding).
SLACK = 0.1


@pytest.mark.parametrize("arity", ARITIES)
async def test_default_deadline_when_none_set(start_server, arity):
    srv = await start_server()
    interceptor = DeadlineClientInterceptor(3.0, stream_timeout_s=4.0)
    async with channel(srv.address, interceptor) as ch:
        await invoke(ping_pb2_grpc.PingServiceStub(ch), arity)
    seen = srv.servicer.time_remaining_seen[0]
    expected = 4.0 if arity.endswith("stream") else 3.0
    assert seen is not None and expected - 1.0 < seen <= expected + SLACK


@pytest.mark.parametrize("arity", ["unary_stream", "stream_stream"])
async def test_streams_get_no_default_unless_configured(start_server, arity):
    srv = await start_server()
    async with channel(srv.address, DeadlineClientInterceptor(3.0)) as ch:
        await invoke(ping_pb2_grpc.PingServiceStub(ch), arity)
    assert srv.servicer.time_remaining_seen[0] is None


@pytest.mark.parametrize("arity", ARITIES)
async def test_own_timeout_wins_over_the_default(start_server, arity):
    srv = await start_server()
    interceptor = DeadlineClientInterceptor(1.0, stream_timeout_s=1.0)
    async with channel(srv.address, interceptor) as ch:
        await invoke(ping_pb2_grpc.PingServiceStub(ch), arity, timeout=20.0)
    seen = srv.servicer.time_remaining_seen[0]
    assert seen is not None and 19.0 < seen <= 20.0 + SLACK


@pytest.mark.parametrize("arity", ARITIES)
async def test_expired_incoming_deadline_fails_fast_without_sending(start_server, arity):
    srv = await start_server()
    async with channel(srv.address, DeadlineClientInterceptor(5.0)) as ch:
        token = incoming_deadline.set(time.monotonic() - 0.5)
        try:
            err = await invoke_error(ping_pb2_grpc.PingServiceStub(ch), arity)
        finally:
            incoming_deadline.reset(token)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline of the incoming call passed" in (err.details() or "")
    assert srv.servicer.calls == 0


@pytest.mark.parametrize("arity", ARITIES)
async def test_remaining_incoming_deadline_caps_outgoing_calls(start_server, arity):
    srv = await start_server()
    async with channel(srv.address, DeadlineClientInterceptor(30.0)) as ch:
        token = incoming_deadline.set(time.monotonic() + 1.5)
        try:
            await invoke(ping_pb2_grpc.PingServiceStub(ch), arity, timeout=10.0)
        finally:
            incoming_deadline.reset(token)
    seen = srv.servicer.time_remaining_seen[0]
    assert seen is not None and 0.5 < seen <= 1.5 + SLACK


class Relay(PingServicer):
    """Handles each arity by calling the downstream's four arities, recording its deadline."""

    def __init__(self, downstream: Any) -> None:
        super().__init__("relay")
        self.downstream = downstream
        self.remaining: list[float | None] = []

    async def _relay(self) -> None:
        self.remaining.append(remaining_deadline())
        for arity in ARITIES:
            await invoke(self.downstream, arity)

    async def Ping(self, request, context):  # type: ignore[override]
        await self._relay()
        return ping_pb2.PingResponse(value="relayed")

    async def PingList(self, request, context):  # type: ignore[override]
        await self._relay()
        yield ping_pb2.PingResponse(value="relayed")

    async def PingStream(self, request_iterator, context):  # type: ignore[override]
        async for _ in request_iterator:
            pass
        await self._relay()
        return ping_pb2.PingResponse(value="relayed")

    async def PingBidi(self, request_iterator, context):  # type: ignore[override]
        async for _ in request_iterator:
            pass
        await self._relay()
        yield ping_pb2.PingResponse(value="relayed")


@pytest.mark.parametrize("arity", ARITIES)
async def test_deadline_propagates_through_a_hop(start_server, arity):
    downstream = await start_server()
    async with channel(downstream.address, DeadlineClientInterceptor(30.0)) as down:
        relay = Relay(ping_pb2_grpc.PingServiceStub(down))
        front = await start_server(relay, interceptors=[DeadlineServerInterceptor()])
        async with channel(front.address) as ch:
            await invoke(ping_pb2_grpc.PingServiceStub(ch), arity, timeout=2.0)
    assert relay.remaining[0] is not None and 1.0 < relay.remaining[0] <= 2.0 + SLACK
    # Every downstream arity saw at most what was left upstream, not the 30 s default.
    seen = downstream.servicer.time_remaining_seen
    assert len(seen) == 5  # the bidi ping prepares once per message
    assert all(s is not None and 0.5 < s <= 2.0 + SLACK for s in seen), seen


async def test_server_without_deadline_publishes_none(start_server):
    relay_seen: list[float | None] = []

    class Probe(PingServicer):
        async def Ping(self, request, context):  # type: ignore[override]
            relay_seen.append(remaining_deadline())
            return ping_pb2.PingResponse()

    srv = await start_server(Probe(), interceptors=[DeadlineServerInterceptor()])
    async with channel(srv.address) as ch:
        await ping_pb2_grpc.PingServiceStub(ch).Ping(ping_pb2.PingRequest())
    assert relay_seen == [None]
    assert remaining_deadline() is None


def test_default_must_be_positive():
    with pytest.raises(ValueError):
        DeadlineClientInterceptor(0)


async def test_concurrent_server_calls_each_see_their_own_deadline(start_server):
    import asyncio

    seen: dict[str, float | None] = {}
    all_in = asyncio.Barrier(3)

    class Probe(PingServicer):
        async def Ping(self, request, context):  # type: ignore[override]
            await all_in.wait()  # the three calls overlap
            seen[request.value] = remaining_deadline()
            return ping_pb2.PingResponse()

    srv = await start_server(Probe(), interceptors=[DeadlineServerInterceptor()])
    async with channel(srv.address) as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        await asyncio.gather(
            stub.Ping(ping_pb2.PingRequest(value="short"), timeout=1.0),
            stub.Ping(ping_pb2.PingRequest(value="long"), timeout=9.0),
            stub.Ping(ping_pb2.PingRequest(value="none")),
        )
    assert seen["none"] is None
    assert seen["short"] is not None and 0.5 < seen["short"] <= 1.0 + SLACK
    assert seen["long"] is not None and 8.5 < seen["long"] <= 9.0 + SLACK
