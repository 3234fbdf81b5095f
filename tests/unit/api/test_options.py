"""The `meshproto.api.v1` options read from descriptors: runtime ones, foreign pools, protos."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool
from meshproto.api.v1 import options_pb2
from shop.inventory.v1 import inventory_pb2
from shop.payments.v1 import payments_pb2
from shop.testing.v1 import ping_pb2
from shop.users.v1 import users_pb2

from mesh.api import options

PING = "/shop.testing.v1.PingService/"


def _method(module: object, service: str, method: str):  # type: ignore[no-untyped-def]
    return module.DESCRIPTOR.services_by_name[service].methods_by_name[method]  # type: ignore[attr-defined]


def test_idempotent_lookup_reads_the_option_from_the_default_pool():
    is_idempotent = options.IdempotentMethods()
    assert is_idempotent(PING + "Ping") and is_idempotent(PING + "PingList")
    assert not is_idempotent(PING + "PingStream") and not is_idempotent(PING + "PingBidi")
    assert not is_idempotent(PING + "NoSuchMethod")
    assert not is_idempotent("/no.such.Service/Get")


def test_internal_and_public_services():
    assert options.is_internal(payments_pb2.DESCRIPTOR.services_by_name["PaymentService"])
    assert not options.is_internal(users_pb2.DESCRIPTOR.services_by_name["UserService"])


def test_callers_fall_back_to_the_service_default():
    charge = _method(payments_pb2, "PaymentService", "Charge")
    assert options.callers_of(charge) == frozenset({"orders"})
    # GetUser names its own callers; DeleteUser takes the service's default.
    assert options.callers_of(_method(users_pb2, "UserService", "GetUser")) == frozenset(
        {"edge", "mesh-client", "orders"}
    )
    assert options.callers_of(_method(users_pb2, "UserService", "DeleteUser")) == frozenset(
        {"edge", "mesh-client"}
    )


def test_auth_rules():
    get_product = _method(inventory_pb2, "InventoryService", "GetProduct")
    add_stock = _method(inventory_pb2, "InventoryService", "AddStock")
    assert options.auth_of(get_product) == options.AuthRule(options.Access.PUBLIC)
    assert options.auth_of(add_stock) == options.AuthRule(
        options.Access.ROLES, frozenset({"admin"})
    )
    # Internal RPCs carry no end-user auth.
    assert options.auth_of(_method(payments_pb2, "PaymentService", "Charge")) is None


def _file(proto_file: object) -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto()
    proto_file.CopyToProto(fdp)  # type: ignore[attr-defined]
    return fdp


def _orders_service() -> descriptor_pb2.ServiceDescriptorProto:
    service = descriptor_pb2.ServiceDescriptorProto(name="Orders")
    service.options.Extensions[options_pb2.default_callers].services.append("billing")
    get = service.method.add(
        name="Get",
        input_type=".shop.testing.v1.PingRequest",
        output_type=".shop.testing.v1.PingResponse",
    )
    get.options.Extensions[options_pb2.idempotent] = True
    get.options.Extensions[options_pb2.callers].services.extend(["edge", "web"])
    service.method.add(
        name="Create",
        input_type=".shop.testing.v1.PingRequest",
        output_type=".shop.testing.v1.PingResponse",
    )
    return service


def test_a_pool_built_from_a_descriptor_set():
    # As the edge/CLI would: a pool of serialized files, not the generated modules.
    pool = descriptor_pool.DescriptorPool()
    for file in (descriptor_pb2.DESCRIPTOR, options_pb2.DESCRIPTOR, ping_pb2.DESCRIPTOR):
        pool.Add(_file(file))
    pool.Add(
        descriptor_pb2.FileDescriptorProto(
            name="x/orders.proto",
            package="x.v1",
            dependency=["shop/testing/v1/ping.proto", "meshproto/api/v1/options.proto"],
            service=[_orders_service()],
            syntax="proto3",
        )
    )
    is_idempotent = options.IdempotentMethods(pool)
    assert is_idempotent("/x.v1.Orders/Get") and not is_idempotent("/x.v1.Orders/Create")
    get = options.find_method("/x.v1.Orders/Get", pool)
    create = options.find_method("/x.v1.Orders/Create", pool)
    assert get is not None and create is not None
    assert options.callers_of(get) == frozenset({"edge", "web"})
    assert options.callers_of(create) == frozenset({"billing"})
    assert options.find_method("/x.v1.Orders/Nope", pool) is None


def test_descriptor_protos_from_serialized_bytes():
    # As the lint and the edge read them: protos parsed from a descriptor set's bytes.
    service = descriptor_pb2.ServiceDescriptorProto.FromString(
        _orders_service().SerializeToString()
    )
    get, create = service.method
    assert options.is_idempotent(get) and not options.is_idempotent(create)
    assert options.callers_of(create, service) == frozenset({"billing"})
    assert options.callers_of(create) is None  # a proto does not know its service
    assert options.default_callers(service) == frozenset({"billing"})
    assert not options.is_internal(service)
