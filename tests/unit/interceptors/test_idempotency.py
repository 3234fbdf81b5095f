"""Idempotent methods from the `shop.api.v1.idempotent` option in a descriptor pool."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool
from shop.api.v1 import visibility_pb2
from shop.testing.v1 import ping_pb2

from interceptors.idempotency import IdempotentMethods, idempotent_methods

PING = "/shop.testing.v1.PingService/"


def test_lookup_reads_the_option_from_the_default_pool():
    is_idempotent = IdempotentMethods()
    assert is_idempotent(PING + "Ping") and is_idempotent(PING + "PingList")
    assert not is_idempotent(PING + "PingStream") and not is_idempotent(PING + "PingBidi")
    assert not is_idempotent(PING + "NoSuchMethod")
    assert not is_idempotent("/no.such.Service/Get")


def test_listing_covers_loaded_modules_and_named_services():
    found = idempotent_methods()
    assert {PING + "Ping", PING + "PingList"} <= found
    assert PING + "PingStream" not in found
    assert idempotent_methods(services=["shop.testing.v1.PingService"]) == {
        PING + "Ping",
        PING + "PingList",
    }


def _file(proto_file: object) -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto()
    proto_file.CopyToProto(fdp)  # type: ignore[attr-defined]
    return fdp


def test_a_pool_built_from_a_descriptor_set():
    # As the edge/CLI would: a pool of serialized files, not the generated modules.
    pool = descriptor_pool.DescriptorPool()
    descriptor = descriptor_pb2.DESCRIPTOR
    for file in (descriptor, visibility_pb2.DESCRIPTOR, ping_pb2.DESCRIPTOR):
        pool.Add(_file(file))
    service = descriptor_pb2.ServiceDescriptorProto(name="Orders")
    service.method.add(
        name="Get",
        input_type=".shop.testing.v1.PingRequest",
        output_type=".shop.testing.v1.PingResponse",
    ).options.Extensions[visibility_pb2.idempotent] = True
    service.method.add(
        name="Create",
        input_type=".shop.testing.v1.PingRequest",
        output_type=".shop.testing.v1.PingResponse",
    )
    pool.Add(
        descriptor_pb2.FileDescriptorProto(
            name="x/orders.proto",
            package="x.v1",
            dependency=["shop/testing/v1/ping.proto", "shop/api/v1/visibility.proto"],
            service=[service],
            syntax="proto3",
        )
    )
    is_idempotent = IdempotentMethods(pool)
    assert is_idempotent("/x.v1.Orders/Get") and not is_idempotent("/x.v1.Orders/Create")
    assert idempotent_methods(pool, services=["x.v1.Orders"]) == {"/x.v1.Orders/Get"}
