"""The server-side wrapping helper and the channel arity helper, through real servers."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors._call import local_error, local_reason, when_done
from interceptors._client import ClientInterceptor
from interceptors._handler import DEADLINE_SLACK_S, ObservingServerInterceptor, status_of
from tests.support.ping import PingServicer
from tests.support.ping_calls import (
    ARITIES,
    METHODS,
    NOT_FOUND,
    channel,
    invoke,
    invoke_error,
)
from tests.support.poll import eventually


class Recorder(ObservingServerInterceptor[str, str]):
    def __init__(self) -> None:
        super().__init__()
        self.prepared: list[str] = []
        self.ended: list[tuple[str, grpc.StatusCode]] = []

    def prepare(self, method: str) -> str:
        self.prepared.append(method)
        return method

    def begin(self, prepared: str, context: Any) -> str:
        return prepared

    def end(self, state: str, code: grpc.StatusCode, error: BaseException | None) -> None:
        self.ended.append((state, code))


@pytest.mark.parametrize("arity", ARITIES)
async def test_observing_interceptor_sees_every_arity_and_its_status(start_server, arity):
    rec = Recorder()
    srv = await start_server(interceptors=[rec])
    async with channel(srv.address) as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        assert len(await invoke(stub, arity)) >= 1
        err = await invoke_error(stub, arity, request=ping_pb2.PingRequest(error_code=NOT_FOUND))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        await invoke(stub, arity)
    await eventually(lambda: len(rec.ended) == 3)
    assert rec.ended == [
        (METHODS[arity], grpc.StatusCode.OK),
        (METHODS[arity], grpc.StatusCode.NOT_FOUND),
        (METHODS[arity], grpc.StatusCode.OK),
    ]
    # Wrapped once per method, then reused while the inner handler is the same object.
    assert rec.prepared == [METHODS[arity]]


class WriterServicer(PingServicer):
    """Streams with `context.write()` (a coroutine behaviour, not an async generator)."""

    async def PingList(self, request, context):  # type: ignore[override]
        for i in range(request.count):
            await context.write(ping_pb2.PingResponse(value=request.value, counter=i))


async def test_write_api_streaming_behaviour_is_wrapped(start_server):
    rec = Recorder()
    srv = await start_server(WriterServicer(), interceptors=[rec])
    async with channel(srv.address) as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        got = [m.counter async for m in stub.PingList(ping_pb2.PingRequest(value="w", count=3))]
    assert got == [0, 1, 2]
    await eventually(lambda: rec.ended == [(METHODS["unary_stream"], grpc.StatusCode.OK)])


async def test_a_call_past_its_deadline_ends_deadline_exceeded(start_server):
    rec = Recorder()
    srv = await start_server(interceptors=[rec])
    async with channel(srv.address) as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Ping(ping_pb2.PingRequest(sleep_ms=2000), timeout=0.1)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await eventually(
        lambda: rec.ended == [(METHODS["unary_unary"], grpc.StatusCode.DEADLINE_EXCEEDED)]
    )


class Order(ClientInterceptor):
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name, self.seen = name, seen

    async def intercept(self, continuation, client_call_details, request):
        self.seen.append(self.name)
        return await continuation(client_call_details, request)

    intercept_unary_unary = intercept_unary_stream = intercept
    intercept_stream_unary = intercept_stream_stream = intercept  # type: ignore[assignment]


@pytest.mark.parametrize("arity", ARITIES)
async def test_for_channel_installs_multi_arity_interceptors_for_every_arity_in_order(
    start_server, arity
):
    seen: list[str] = []
    srv = await start_server()
    async with channel(srv.address, Order("outer", seen), Order("inner", seen)) as ch:
        await invoke(ping_pb2_grpc.PingServiceStub(ch), arity)
    assert seen == ["outer", "inner"]


class DoneProbe(ClientInterceptor):
    def __init__(self) -> None:
        self.results: list[tuple[grpc.StatusCode, str]] = []

    async def intercept(self, continuation, client_call_details, request):
        call = await continuation(client_call_details, request)
        when_done(call, lambda code, details: self.results.append((code, details)))
        return call

    intercept_unary_unary = intercept_unary_stream = intercept
    intercept_stream_unary = intercept_stream_stream = intercept  # type: ignore[assignment]


@pytest.mark.parametrize("arity", ARITIES)
async def test_when_done_reports_status_of_every_arity(start_server, arity):
    probe = DoneProbe()
    srv = await start_server()
    async with channel(srv.address, probe) as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        await invoke(stub, arity)
        await invoke_error(
            stub, arity, request=ping_pb2.PingRequest(value="v", error_code=NOT_FOUND)
        )
    await eventually(lambda: len(probe.results) == 2)
    assert probe.results == [
        (grpc.StatusCode.OK, ""),
        (grpc.StatusCode.NOT_FOUND, "asked to fail (v)"),
    ]


async def test_when_done_with_a_stream_written_by_call_write(start_server):
    # An interceptor that awaited the call here would deadlock: writes wait for it.
    probe = DoneProbe()
    srv = await start_server()
    async with channel(srv.address, probe) as ch:
        stub: Any = ping_pb2_grpc.PingServiceStub(ch)
        call = stub.PingStream()
        for _ in range(3):
            await call.write(ping_pb2.PingRequest(value="w"))
        await call.done_writing()
        assert (await asyncio.wait_for(call, 5)).counter == 3
    await eventually(lambda: probe.results == [(grpc.StatusCode.OK, "")])


def test_local_error_is_marked_with_its_reason():
    err = local_error(grpc.StatusCode.UNAVAILABLE, "nope", "breaker-open")
    assert (err.code(), err.details(), local_reason(err)) == (
        grpc.StatusCode.UNAVAILABLE,
        "nope",
        "breaker-open",
    )
    other = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "x", None
    )
    assert local_reason(other) is None


class _Remaining:
    """A server context that only knows its time left."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


@pytest.mark.parametrize(
    ("remaining", "code"),
    [
        (None, grpc.StatusCode.CANCELLED),  # no deadline: the caller gave up
        (1.0, grpc.StatusCode.CANCELLED),
        (DEADLINE_SLACK_S + 0.01, grpc.StatusCode.CANCELLED),
        # The caller's cancel at its deadline, arrived before the server's timer fired.
        (DEADLINE_SLACK_S / 2, grpc.StatusCode.DEADLINE_EXCEEDED),
        (0.0, grpc.StatusCode.DEADLINE_EXCEEDED),
        (-0.2, grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_a_cancelled_call_is_a_deadline_when_its_deadline_is_at_hand(
    remaining: float | None, code: grpc.StatusCode
) -> None:
    assert status_of(_Remaining(remaining), asyncio.CancelledError()) is code  # type: ignore[arg-type]
