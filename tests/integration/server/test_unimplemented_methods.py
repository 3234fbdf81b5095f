"""A servicer that implements some of its service's methods, as `start_service` runs it
(mTLS, caller policy, the whole chain): the others answer UNIMPLEMENTED with grpc's own
details, counted like any call, and nothing warns or logs an error about them.

Until 6 Dec 2026 grpc's generated base class answered them synchronously, which the
chain's wrappers passed through with a warning each (three per method at start), and
grpc.aio logged every such call as an unexpected NotImplementedError and answered
`Unexpected <class 'NotImplementedError'>: Method not implemented!`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from mesh.server import ServiceDefinition
from tests.support.bootstrap import PING_SERVICE, Starter, handled_calls
from tests.support.pki import mtls_channel


class OnlyPing(ping_pb2_grpc.PingServiceServicer):
    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        return ping_pb2.PingResponse(value=request.value)


class SyncPingList(OnlyPing):
    def PingList(self, request: ping_pb2.PingRequest, context: Any) -> Any:  # its own, sync
        return iter(())


def _definition(servicer: Any) -> ServiceDefinition:
    return ServiceDefinition(
        name="ping",
        servicers=[(ping_pb2_grpc.add_PingServiceServicer_to_server, servicer)],
        service_names=[PING_SERVICE],
    )


async def _requests() -> AsyncIterator[ping_pb2.PingRequest]:
    yield ping_pb2.PingRequest(value="x")


async def test_methods_a_servicer_lacks_answer_unimplemented_through_the_chain(
    start: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        svc = await start(_definition(OnlyPing()))
        async with mtls_channel(svc.address, "ping") as channel:
            stub = ping_pb2_grpc.PingServiceStub(channel)
            assert (await stub.Ping(ping_pb2.PingRequest(value="a"), timeout=5)).value == "a"
            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "PingList": stub.PingList(ping_pb2.PingRequest(), timeout=5).read,
                "PingStream": lambda: stub.PingStream(_requests(), timeout=5),
                "PingBidi": stub.PingBidi(_requests(), timeout=5).read,
            }
            for method, call in calls.items():
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call()
                assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, method
                assert err.value.details() == "Method not implemented!", method
    handled = await handled_calls(svc.admin_port)
    assert {method for method, code in handled if code == "UNIMPLEMENTED"} == {
        "PingList", "PingStream", "PingBidi"
    }, handled  # fmt: skip
    noise = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in noise if "not intercepting" in m or "NotImplementedError" in m], noise


async def test_a_synchronous_method_of_the_servicers_own_is_still_named(
    start: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    """The control: a sync behaviour the servicer wrote is not taken for grpc's."""
    with caplog.at_level(logging.WARNING, logger="interceptors._handler"):
        await start(_definition(SyncPingList()))
    named = [r.getMessage() for r in caplog.records if "not intercepting" in r.getMessage()]
    assert named and all("SyncPingList.PingList" in m for m in named), named
