"""MeshChannel as a grpc.aio channel: the four arities, and the chain runner's contract."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors import _fastpath
from tests.support.mesh_client import instance, ready_count
from tests.support.pki import mtls_channel
from tests.support.poll import eventually

EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


class Recorder(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Notes each call it sees (name, arity, method) and adds a header naming itself."""

    def __init__(self, name: str, log: list[tuple[str, str, str]]) -> None:
        self.name = name
        self.log = log

    def _details(self, d: grpc.aio.ClientCallDetails, arity: str) -> grpc.aio.ClientCallDetails:
        method = d.method.decode() if isinstance(d.method, bytes) else d.method
        self.log.append((self.name, arity, method))
        md = grpc.aio.Metadata(*(d.metadata or ()))
        md.add("x-seen-by", self.name)
        return grpc.aio.ClientCallDetails(d.method, d.timeout, md, d.credentials, d.wait_for_ready)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details, "uu"), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details, "us"), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details, "su"), requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details, "ss"), requests)


async def requests(*values: str) -> AsyncIterator[ping_pb2.PingRequest]:
    for v in values:
        yield ping_pb2.PingRequest(value=v)


@pytest.fixture
async def two(registry, servers):  # type: ignore[no-untyped-def]
    backends = [await servers(f"s{i}") for i in range(2)]
    for i, b in enumerate(backends):
        await registry.register(instance(f"s{i}", b.port))
    return backends


async def test_all_four_arities_run_the_chain_in_order(registry, two, channels) -> None:
    log: list[tuple[str, str, str]] = []
    ch = channels(registry, [Recorder("outer", log), Recorder("inner", log)])
    assert isinstance(ch, grpc.aio.Channel)
    stub = ping_pb2_grpc.PingServiceStub(ch)

    reply = await stub.Ping(ping_pb2.PingRequest(value="uu"), timeout=5)
    assert reply.value == "uu"
    listed = [r.counter async for r in stub.PingList(ping_pb2.PingRequest(count=3), timeout=5)]
    assert listed == [0, 1, 2]
    streamed = await stub.PingStream(requests("a", "b", "c"), timeout=5)
    assert (streamed.value, streamed.counter) == ("c", 3)
    bidi = [r.value async for r in stub.PingBidi(requests("x", "y"), timeout=5)]
    assert bidi == ["x", "y"]

    svc = "/shop.testing.v1.PingService/"
    expected = []
    for arity, method in (
        ("uu", "Ping"),
        ("us", "PingList"),
        ("su", "PingStream"),
        ("ss", "PingBidi"),
    ):
        expected += [("outer", arity, svc + method), ("inner", arity, svc + method)]
    assert log == expected
    seen = [md for b in two for md in b.servicer.metadata_seen]
    assert all([v for k, v in md if k == "x-seen-by"] == ["outer", "inner"] for md in seen)


async def test_call_objects_expose_status_and_metadata(registry, two, channels) -> None:
    stub = ping_pb2_grpc.PingServiceStub(channels(registry))
    call = stub.Ping(ping_pb2.PingRequest(value="v"), timeout=5)
    assert isinstance(call, grpc.aio.UnaryUnaryCall)
    assert (await call).value == "v"
    assert await call.code() is grpc.StatusCode.OK
    assert call.done()
    assert isinstance(await call.trailing_metadata(), grpc.aio.Metadata)

    failing = stub.Ping(ping_pb2.PingRequest(value="f", error_code=5), timeout=5)
    # status first, before awaiting the response: starts the call too
    assert await failing.code() is grpc.StatusCode.NOT_FOUND
    assert "asked to fail (f)" in await failing.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await failing
    assert info.value.code() is grpc.StatusCode.NOT_FOUND

    stream = stub.PingList(ping_pb2.PingRequest(count=2), timeout=5)
    assert (await stream.read()).counter == 0
    assert (await stream.read()).counter == 1
    assert await stream.read() is EOF
    assert await stream.code() is grpc.StatusCode.OK


async def test_write_style_streams(registry, two, channels) -> None:
    stub = ping_pb2_grpc.PingServiceStub(channels(registry))
    up = stub.PingStream(timeout=5)
    for v in ("1", "2"):
        await up.write(ping_pb2.PingRequest(value=v))
    await up.done_writing()
    assert (await up).counter == 2

    bidi = stub.PingBidi(timeout=5)
    await bidi.write(ping_pb2.PingRequest(value="w"))
    assert (await bidi.read()).value == "w"
    await bidi.done_writing()
    assert await bidi.read() is EOF
    assert await bidi.code() is grpc.StatusCode.OK


class RetryOnce(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Calls the continuation again after any failure (a minimal retry)."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(details, request)
        if await call.code() is grpc.StatusCode.OK:
            return call
        return await continuation(details, request)


async def test_a_retry_re_picks_an_instance(registry, servers, channels) -> None:
    backends = [await servers(f"s{i}") for i in range(2)]
    for i, b in enumerate(backends):
        await registry.register(instance(f"s{i}", b.port))
    ch = channels(registry, [RetryOnce()], lb_policy="round_robin")
    await eventually(lambda: ready_count(ch) == 2)
    stub = ping_pb2_grpc.PingServiceStub(ch)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Ping(ping_pb2.PingRequest(error_code=5), timeout=5)
    # each failing call made two attempts, one on each instance (round-robin re-pick)
    assert [b.servicer.calls for b in backends] == [1, 1]


class Cache(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """Answers unary calls itself; upper-cases streamed responses."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return ping_pb2.PingResponse(value="cached", server="cache")

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(details, request)

        async def upper() -> AsyncIterator[ping_pb2.PingResponse]:
            async for r in call:
                yield ping_pb2.PingResponse(value=r.value.upper(), counter=r.counter)

        return upper()


async def test_interceptors_may_answer_or_wrap_the_stream(registry, two, channels) -> None:
    stub = ping_pb2_grpc.PingServiceStub(channels(registry, [Cache()]))
    call = stub.Ping(ping_pb2.PingRequest(value="x"))
    assert (await call).server == "cache"
    assert await call.code() is grpc.StatusCode.OK
    assert sum(b.servicer.calls for b in two) == 0

    stream = stub.PingList(ping_pb2.PingRequest(value="ab", count=2), timeout=5)
    assert [r.value async for r in stream] == ["AB", "AB"]
    assert await stream.code() is grpc.StatusCode.OK  # from the real call underneath


class Refuse(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(), "nope", ""
        )


async def test_an_interceptor_error_is_the_calls_status(registry, two, channels) -> None:
    stub = ping_pb2_grpc.PingServiceStub(channels(registry, [Refuse()]))
    call = stub.Ping(ping_pb2.PingRequest())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await call.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await call.details() == "nope"
    assert call.done()


async def test_concurrent_waiters_share_one_chain_run(registry, two, channels) -> None:
    stub = ping_pb2_grpc.PingServiceStub(channels(registry))
    call = stub.Ping(ping_pb2.PingRequest(value="once"), timeout=5)
    reply, code, again = await asyncio.gather(call, call.code(), call)
    assert reply.value == again.value == "once" and code is grpc.StatusCode.OK
    assert sum(b.servicer.calls for b in two) == 1


async def test_cancelling_the_awaiting_task_cancels_the_call(registry, two, channels) -> None:
    stub = ping_pb2_grpc.PingServiceStub(channels(registry))
    task = asyncio.ensure_future(stub.Ping(ping_pb2.PingRequest(sleep_ms=2000), timeout=5))
    await eventually(lambda: sum(b.servicer.calls for b in two) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_in_flight_counts_follow_calls(registry, two, channels) -> None:
    ch = channels(registry)
    stub = ping_pb2_grpc.PingServiceStub(ch)
    calls = [
        asyncio.ensure_future(stub.Ping(ping_pb2.PingRequest(sleep_ms=300), timeout=5))
        for _ in range(4)
    ]
    await eventually(lambda: sum(s.inflight for s in ch.pool.status()) == 4)
    # p2c keeps them balanced: two each
    assert collections.Counter(s.inflight for s in ch.pool.status()) == {2: 2}
    await asyncio.gather(*calls)
    assert sum(s.inflight for s in ch.pool.status()) == 0


async def test_fenced_status_read_of_a_finished_grpc_call(servers) -> None:
    # Guards the private grpc.aio read the endpoints use (interceptors/_fastpath.py).
    server = await servers("guard")
    async with mtls_channel(server.address, "ping") as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        ok = stub.Ping(ping_pb2.PingRequest())
        await ok
        assert _fastpath._private_status_now(ok) == (grpc.StatusCode.OK, "")
        bad = stub.Ping(ping_pb2.PingRequest(error_code=14))
        with pytest.raises(grpc.aio.AioRpcError):
            await bad
        assert _fastpath._private_status_now(bad) == (
            grpc.StatusCode.UNAVAILABLE,
            "asked to fail ()",
        )


async def test_close_with_grace_lets_calls_in_flight_finish(registry, two, channels) -> None:
    ch = channels(registry)
    stub = ping_pb2_grpc.PingServiceStub(ch)
    slow = asyncio.ensure_future(
        stub.Ping(ping_pb2.PingRequest(value="s", sleep_ms=300), timeout=5)
    )
    await eventually(lambda: sum(b.servicer.calls for b in two) == 1)
    await ch.close(grace=5)
    assert slow.done() and (await slow).value == "s"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Ping(ping_pb2.PingRequest(), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_close_without_grace_cuts_calls_with_cancelled(registry, two, channels) -> None:
    ch = channels(registry)
    stub = ping_pb2_grpc.PingServiceStub(ch)
    slow = asyncio.ensure_future(stub.Ping(ping_pb2.PingRequest(sleep_ms=3000), timeout=5))
    await eventually(lambda: sum(b.servicer.calls for b in two) == 1)
    await ch.close()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await slow
    assert info.value.code() is grpc.StatusCode.CANCELLED
