"""The traffic server interceptor on a real loopback server: the incoming track reaches the
handler's context, faults abort or delay their share, and no rule costs no wrapper; the
same as a grpc.aio interceptor and wrapped once at registration (`registered`, as
mesh.server.start_service runs it: interceptors/registered.py)."""

from __future__ import annotations

import random
import time
from typing import Any

import grpc
import pytest
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors._handler import ObservingServerInterceptor
from interceptors.traffic import FaultRule, TrafficServerInterceptor, incoming_track
from tests.support.ping import start_ping_server


class SeenTrack(ObservingServerInterceptor[None, None]):
    """Records `incoming_track` as the handler's task sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str | None] = []

    def prepare(self, method: str) -> None:
        return None

    def begin(self, prepared: None, context: Any) -> None:
        self.seen.append(incoming_track.get())

    def end(self, state: None, code: grpc.StatusCode, error: BaseException | None) -> None:
        pass


@pytest.mark.parametrize("registered", [False, True])
async def test_incoming_track_reaches_the_handler_and_only_its_call(registered: bool) -> None:
    seen = SeenTrack()
    server = await start_ping_server(
        interceptors=[TrafficServerInterceptor(), seen], registered=registered
    )
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = ping_pb2_grpc.PingServiceStub(channel)
            await stub.Ping(ping_pb2.PingRequest(), metadata=(("x-mesh-track", "green"),))
            await stub.Ping(ping_pb2.PingRequest())
        assert seen.seen == ["green", None]
    finally:
        await server.stop(None)


@pytest.mark.parametrize("registered", [False, True])
async def test_abort_share_follows_the_rule_and_changes_live(registered: bool) -> None:
    traffic = TrafficServerInterceptor(
        [FaultRule("/shop.testing.v1.PingService/Ping", abort_fraction=0.2)],
        rng=random.Random(11),
    )
    server = await start_ping_server(interceptors=[traffic], registered=registered)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = ping_pb2_grpc.PingServiceStub(channel)
            failed = 0
            for _ in range(500):
                try:
                    await stub.Ping(ping_pb2.PingRequest())
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() is grpc.StatusCode.UNAVAILABLE
                    failed += 1
            # Binomial(500, 0.2): mean 100, sd 8.9; ±4 sd.
            assert 64 <= failed <= 136
            assert server.servicer.calls == 500 - failed  # aborted before the handler
            # Another method is not covered by the rule.
            replies = [r async for r in stub.PingList(ping_pb2.PingRequest(count=1))]
            assert len(replies) == 1
            traffic.set_rules([FaultRule(abort_fraction=1.0, abort_code=grpc.StatusCode.ABORTED)])
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Ping(ping_pb2.PingRequest())
            assert info.value.code() is grpc.StatusCode.ABORTED
            assert info.value.details() == "fault injected: ABORTED"
            traffic.set_rules([])
            await stub.Ping(ping_pb2.PingRequest())
    finally:
        await server.stop(None)


@pytest.mark.parametrize("registered", [False, True])
async def test_delay_applies_to_streams_too(registered: bool) -> None:
    traffic = TrafficServerInterceptor([FaultRule(delay_fraction=1.0, delay_s=0.2)])
    server = await start_ping_server(interceptors=[traffic], registered=registered)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = ping_pb2_grpc.PingServiceStub(channel)
            started = time.monotonic()
            replies = [r async for r in stub.PingList(ping_pb2.PingRequest(count=3))]
            assert len(replies) == 3 and time.monotonic() - started >= 0.2
    finally:
        await server.stop(None)


async def test_no_rule_returns_the_handler_itself() -> None:
    handler = object()

    async def continuation(_details: Any) -> Any:
        return handler

    details: Any = type("Details", (), {"method": "/a.B/C", "invocation_metadata": (("k", "v"),)})()
    traffic = TrafficServerInterceptor()
    assert await traffic.intercept_service(continuation, details) is handler
    traffic.set_rules([FaultRule("/x.Y/*", abort_fraction=1.0)])
    assert await traffic.intercept_service(continuation, details) is handler  # not matched


def test_rules_are_checked() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultRule(abort_fraction=2)
    with pytest.raises(ValueError, match="OK"):
        FaultRule(abort_fraction=0.1, abort_code=grpc.StatusCode.OK)
    assert not FaultRule().matches("/grpc.health.v1.Health/Check")
