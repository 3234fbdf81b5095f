"""The chain wrapped once at registration (interceptors/registered.py) runs as the same
chain of grpc.aio interceptors would: same order, also for methods served by a generic
handler only, and an interceptor that cannot be registered keeps its place outside."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors._handler import ObservingServerInterceptor
from interceptors.registered import chained_server, split_chain
from tests.support.ping import PingServicer

PING = "/shop.testing.v1.PingService/Ping"


class Mark(ObservingServerInterceptor[None, None]):
    """Registrable: appends its name to the shared trace when a call begins and ends."""

    def __init__(self, name: str, trace: list[str]) -> None:
        super().__init__()
        self.name, self.trace = name, trace

    def prepare(self, method: str) -> None:
        return None

    def begin(self, prepared: None, context: Any) -> None:
        self.trace.append(f"{self.name}>")

    def end(self, state: None, code: grpc.StatusCode, error: BaseException | None) -> None:
        self.trace.append(f"<{self.name}")


class PlainMark(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Not registrable (no wrap_method): a grpc.aio interceptor deciding per call."""

    def __init__(self, name: str, trace: list[str]) -> None:
        self.name, self.trace = name, trace

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.trace.append(f"{self.name}?")
        return await continuation(details)


class Recording(PingServicer):
    def __init__(self, trace: list[str]) -> None:
        super().__init__("p")
        self.trace = trace

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        self.trace.append("handler")
        return await super().Ping(request, context)


def test_only_the_inner_run_of_wrappers_is_registered() -> None:
    trace: list[str] = []
    a, b, p = Mark("a", trace), Mark("b", trace), PlainMark("p", trace)
    assert split_chain([a, b]) == ([], [a, b])
    assert split_chain([a, p, b]) == ([a, p], [b])
    assert split_chain([a, b, p]) == ([a, b, p], [])
    assert split_chain([]) == ([], [])


async def _trace(chain: list[Any], trace: list[str], *, registered: bool, generic: bool) -> None:
    registrar = chained_server(chain, registered=registered)
    servicer = Recording(trace)
    if generic:  # served by a generic handler only (as reflection v1 is)
        handler = grpc.unary_unary_rpc_method_handler(
            servicer.Ping,
            request_deserializer=ping_pb2.PingRequest.FromString,
            response_serializer=ping_pb2.PingResponse.SerializeToString,
        )
        generic_handler = grpc.method_handlers_generic_handler(
            "shop.testing.v1.PingService", {"Ping": handler}
        )
        registrar.add_generic_rpc_handlers((generic_handler,))
    else:
        ping_pb2_grpc.add_PingServiceServicer_to_server(servicer, registrar)
    port = registrar.add_insecure_port("127.0.0.1:0")
    await registrar.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ping_pb2_grpc.PingServiceStub(channel)
            for _ in range(2):  # the second call through the cached wrappers
                assert (await stub.Ping(ping_pb2.PingRequest(value="x"))).value
            missing = channel.unary_unary("/shop.testing.v1.PingService/Nope", None, None)  # type: ignore[arg-type]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await missing(b"")
            assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
    finally:
        await registrar.stop(None)


@pytest.mark.parametrize("generic", [False, True])
@pytest.mark.parametrize("plain_at", [None, 0, 1])
async def test_registered_chain_runs_as_the_interceptors_do(
    generic: bool, plain_at: int | None
) -> None:
    traces: dict[bool, list[str]] = {}
    for registered in (False, True):
        trace: list[str] = []
        chain: list[Any] = [Mark("a", trace), Mark("b", trace)]
        if plain_at is not None:
            chain.insert(plain_at, PlainMark("p", trace))
        await _trace(chain, trace, registered=registered, generic=generic)
        traces[registered] = trace
    assert traces[True] == traces[False]
    one = ["a>", "b>", "handler", "<b", "<a"]
    if plain_at is None:
        assert traces[True] == one * 2
    else:
        # The plain interceptor runs when grpc looks the handler up: before any wrapper,
        # and for the unknown method too.
        assert traces[True] == (["p?", *one] * 2) + ["p?"]
