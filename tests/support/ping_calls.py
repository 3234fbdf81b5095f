"""Calls of the four gRPC arities on the ping service through plain grpc.aio channels,
and a flaky servicer, for the interceptor tests (fixture `start_server`:
tests/unit/interceptors/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from shop.testing.v1 import ping_pb2

from interceptors.arity import for_channel
from tests.support.ping import PingServicer

ARITIES = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


METHODS = {
    "unary_unary": "/shop.testing.v1.PingService/Ping",
    "unary_stream": "/shop.testing.v1.PingService/PingList",
    "stream_unary": "/shop.testing.v1.PingService/PingStream",
    "stream_stream": "/shop.testing.v1.PingService/PingBidi",
}


UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]


async def _repeat(request: ping_pb2.PingRequest, n: int) -> AsyncIterator[ping_pb2.PingRequest]:
    for _ in range(n):
        yield request


async def invoke(
    stub: Any,
    arity: str,
    request: ping_pb2.PingRequest | None = None,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - the gRPC call's own timeout
    metadata: Sequence[tuple[str, str]] | None = None,
    n: int = 2,
) -> list[ping_pb2.PingResponse]:
    """Call the ping method of `arity`; `n` messages each way where streaming."""
    req = request if request is not None else ping_pb2.PingRequest(value="hi")
    if arity == "unary_unary":
        return [await stub.Ping(req, timeout=timeout, metadata=metadata)]
    if arity == "unary_stream":
        req2 = ping_pb2.PingRequest()
        req2.CopyFrom(req)
        req2.count = req2.count or n
        return [m async for m in stub.PingList(req2, timeout=timeout, metadata=metadata)]
    if arity == "stream_unary":
        return [await stub.PingStream(_repeat(req, n), timeout=timeout, metadata=metadata)]
    return [m async for m in stub.PingBidi(_repeat(req, n), timeout=timeout, metadata=metadata)]


async def invoke_error(stub: Any, arity: str, **kw: Any) -> grpc.aio.AioRpcError:
    """The error of a call expected to fail. One message each way by default: a server
    failing a bidi call while the client still writes may end it with a racy status."""
    kw.setdefault("n", 1)
    try:
        await invoke(stub, arity, **kw)
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError(f"{arity}: expected the call to fail")


def channel(address: str, *interceptors: Any) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, interceptors=for_channel(*interceptors))


class Flaky(PingServicer):
    """Fails the first `failures` calls with `code` (before any response), then answers."""

    def __init__(
        self, failures: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, **kw: Any
    ) -> None:
        super().__init__()
        self.failures = failures
        self.code = code
        self.trailing: tuple[tuple[str, str], ...] = kw.get("trailing", ())
        self.message: str = kw.get("message", "flaky")
        self.fail_after_first = kw.get("fail_after_first", False)

    async def _maybe_fail(self, context: Any) -> None:
        self.calls += 1
        self.metadata_seen.append(tuple(context.invocation_metadata() or ()))
        self.time_remaining_seen.append(context.time_remaining())
        if self.calls <= self.failures:
            if self.trailing:
                context.set_trailing_metadata(self.trailing)
            await context.abort(self.code, self.message)

    async def Ping(self, request, context):  # type: ignore[override]
        await self._maybe_fail(context)
        return ping_pb2.PingResponse(value=request.value, counter=self.calls)

    async def PingList(self, request, context):  # type: ignore[override]
        if self.fail_after_first:
            self.calls += 1
            yield ping_pb2.PingResponse(value="first")
            await context.abort(self.code, "broke mid-stream")
        await self._maybe_fail(context)
        for i in range(request.count):
            yield ping_pb2.PingResponse(value=request.value, counter=i)

    async def PingStream(self, request_iterator, context):  # type: ignore[override]
        async for _ in request_iterator:
            pass
        await self._maybe_fail(context)
        return ping_pb2.PingResponse()

    async def PingBidi(self, request_iterator, context):  # type: ignore[override]
        async for _ in request_iterator:
            await self._maybe_fail(context)
            yield ping_pb2.PingResponse()
