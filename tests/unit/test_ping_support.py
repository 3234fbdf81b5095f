import grpc
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from tests.support.ping import start_ping_server


async def test_ping_server_answers_and_fails_on_demand():
    srv = await start_ping_server("a")
    try:
        async with grpc.aio.insecure_channel(srv.address) as ch:
            stub = ping_pb2_grpc.PingServiceStub(ch)
            resp = await stub.Ping(ping_pb2.PingRequest(value="x"))
            assert (resp.value, resp.server) == ("x", "a")
            try:
                await stub.Ping(
                    ping_pb2.PingRequest(error_code=grpc.StatusCode.UNAVAILABLE.value[0])
                )
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
            else:
                raise AssertionError("expected UNAVAILABLE")
    finally:
        await srv.stop()
