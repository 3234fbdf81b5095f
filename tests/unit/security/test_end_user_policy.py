"""The end-user requirements and trusted identities the mesh reads from the contracts."""

from __future__ import annotations

from shop.inventory.v1 import inventory_pb2  # noqa: F401  (registers the descriptors)
from shop.orders.v2 import orders_pb2  # noqa: F401
from shop.payments.v1 import payments_pb2  # noqa: F401
from shop.users.v1 import users_pb2  # noqa: F401

from interceptors.end_user import Requirement
from mesh.security.end_user import END_USER_GATEWAYS, method_requirement, named_callers


def test_requirements_come_from_the_auth_option() -> None:
    assert method_requirement("/shop.users.v1.UserService/GetUser") == Requirement()
    assert method_requirement("/shop.orders.v2.OrderService/CreateOrder") == Requirement()
    assert method_requirement("/shop.inventory.v1.InventoryService/CreateProduct") == (
        Requirement(frozenset({"admin"}))
    )
    # Public, internal (no auth option), unknown: nothing required.
    assert method_requirement("/shop.inventory.v1.InventoryService/GetProduct") is None
    assert method_requirement("/shop.users.v1.UserService/CreateUser") is None
    assert method_requirement("/shop.inventory.v1.ReservationService/ReserveItems") is None
    assert method_requirement("/shop.payments.v1.PaymentService/Charge") is None
    assert method_requirement("/grpc.health.v1.Health/Check") is None
    assert method_requirement("/no.such.Service/Method") is None


def test_trusted_callers_are_the_gateways_and_the_services_the_contracts_name() -> None:
    assert {"edge", "mesh-client"} == END_USER_GATEWAYS
    assert named_callers(["shop.users.v1.UserService"]) == {"edge", "mesh-client", "orders"}
    assert named_callers(["shop.payments.v1.PaymentService"]) == {"orders"}
    # "*" (any mesh identity) names nobody in particular.
    assert named_callers(["shop.testing.v1.PingService"]) == set()
    assert named_callers(["no.such.Service"]) == set()
