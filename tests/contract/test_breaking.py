"""Breaking-change detection: today's contracts against the released baseline, and
deliberately broken copies of them that the checker must catch, by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from mesh.contracts import baseline, breaking, codegen
from tests.support.proto_tree import ProtoTree

RELEASED = [
    "meshproto.api.v1",
    "meshproto.events.v1",
    "shop.common.v1",
    "shop.events.v1",
    "shop.inventory.v1",
    "shop.orders.v1",
    "shop.orders.v2",
    "shop.payments.v1",
    "shop.testing.v1",
    "shop.users.v1",
]

ORDERS_V1 = "shop/orders/v1/orders.proto"
USERS_V1 = "shop/users/v1/users.proto"
PAYMENTS_V1 = "shop/payments/v1/payments.proto"
INVENTORY_V1 = "shop/inventory/v1/inventory.proto"
MONEY = "shop/common/v1/money.proto"


@pytest.fixture(scope="module")
def released() -> dict[str, descriptor_pb2.FileDescriptorSet]:
    return baseline.load()


def problems(released: dict[str, descriptor_pb2.FileDescriptorSet], protos: ProtoTree) -> list[str]:
    return breaking.check(released, protos.descriptor_set(source_info=True))


def test_every_package_is_released(released):
    assert sorted(released) == RELEASED


def test_baseline_sets_are_self_contained(released):
    # Each set loads on its own: the wire-compat tests build classes from it.
    for package, fds in released.items():
        pool = descriptor_pool.DescriptorPool()
        for f in fds.file:
            pool.Add(f)
        assert any(f.package == package for f in fds.file)


def test_current_contracts_keep_the_baseline(released):
    current = codegen.build_descriptor_set()
    assert breaking.check(released, current) == [], (
        "a released contract changed incompatibly: put the change in a new major package"
    )


def test_identical_sets_compare_clean():
    current = codegen.build_descriptor_set()
    sets = baseline.release_sets(current, codegen.proto_files())
    assert breaking.check(sets, current) == []


# Each case: (proto, edit as (old, new), expected message).
BREAKING = {
    "field removed": (
        ORDERS_V1,
        ("  // Total in US cents.\n  int64 total_cents = 4;\n", ""),
        'Previously present field "4" with name "total_cents" on message "Order" was deleted. '
        "[buf FIELD_NO_DELETE]",
    ),
    "field renumbered": (
        ORDERS_V1,
        ("int64 total_cents = 4;", "int64 total_cents = 12;"),
        'Previously present field "4" with name "total_cents" on message "Order" was deleted. '
        "[buf FIELD_NO_DELETE]",
    ),
    "field renamed": (
        ORDERS_V1,
        ("int64 total_cents = 4;", "int64 total_amount_cents = 4;"),
        'Field "4" on message "Order" changed name from "total_cents" to "total_amount_cents". '
        "[buf FIELD_SAME_NAME]",
    ),
    "field type changed": (
        ORDERS_V1,
        ("int64 total_cents = 4;", "string total_cents = 4;"),
        'Field "4" with name "total_cents" on message "Order" changed type from "int64" to '
        '"string". [buf FIELD_SAME_TYPE]',
    ),
    "field message type changed": (
        ORDERS_V1,
        ("  repeated OrderItem items = 3;\n  // Total", "  repeated Order items = 3;\n  // Total"),
        'Field "3" with name "items" on message "Order" changed type from '
        '"shop.orders.v1.OrderItem" to "shop.orders.v1.Order". [buf FIELD_SAME_TYPE]',
    ),
    "singular to repeated": (
        ORDERS_V1,
        ("  string failure_reason = 6;", "  repeated string failure_reason = 6;"),
        'Field "6" with name "failure_reason" on message "Order" changed cardinality from '
        '"optional with implicit presence" to "repeated". [buf FIELD_SAME_CARDINALITY]',
    ),
    "repeated to singular": (
        ORDERS_V1,
        ("  repeated Order orders = 1;", "  Order orders = 1;"),
        'Field "1" with name "orders" on message "ListOrdersResponse" changed cardinality from '
        '"repeated" to "optional with explicit presence". [buf FIELD_SAME_CARDINALITY]',
    ),
    "field left its oneof": (
        PAYMENTS_V1,
        (
            "  oneof key {\n    // Id of the payment.\n    string payment_id = 1;\n",
            "  // Id of the payment.\n  string payment_id = 1;\n  oneof key {\n",
        ),
        'Field "1" with name "payment_id" on message "GetPaymentRequest" moved from inside to '
        "outside a oneof. [buf FIELD_SAME_ONEOF]",
    ),
    "rpc removed": (
        ORDERS_V1,
        (
            "  rpc GetOrder(GetOrderRequest) returns (Order) {\n"
            "    option (meshproto.api.v1.auth) = {access: ACCESS_USER};\n"
            "    option (meshproto.api.v1.idempotent) = true;\n"
            '    option (google.api.http) = {get: "/api/v1/orders/{order_id}"};\n'
            "  }\n",
            "",
        ),
        'Previously present RPC "GetOrder" on service "OrderService" was deleted. [buf '
        "RPC_NO_DELETE]",
    ),
    "rpc request type changed": (
        ORDERS_V1,
        ("rpc GetOrder(GetOrderRequest)", "rpc GetOrder(CancelOrderRequest)"),
        'RPC "GetOrder" on service "OrderService" changed request type from '
        '"shop.orders.v1.GetOrderRequest" to "shop.orders.v1.CancelOrderRequest". [buf '
        "RPC_SAME_REQUEST_TYPE]",
    ),
    "rpc response type changed": (
        USERS_V1,
        (
            "rpc DeleteUser(DeleteUserRequest) returns (DeleteUserResponse)",
            "rpc DeleteUser(DeleteUserRequest) returns (User)",
        ),
        'RPC "DeleteUser" on service "UserService" changed response type from '
        '"shop.users.v1.DeleteUserResponse" to "shop.users.v1.User". [buf RPC_SAME_RESPONSE_TYPE]',
    ),
    "server streaming added": (
        USERS_V1,
        (
            "returns (User) {\n    option (meshproto.api.v1.callers)",
            "returns (stream User) {\n    option (meshproto.api.v1.callers)",
        ),
        'RPC "GetUser" on service "UserService" changed from server unary to server streaming. '
        "[buf RPC_SAME_SERVER_STREAMING]",
    ),
    "client streaming removed": (
        "shop/testing/v1/ping.proto",
        ("rpc PingStream(stream PingRequest)", "rpc PingStream(PingRequest)"),
        'RPC "PingStream" on service "PingService" changed from client streaming to client '
        "unary. [buf RPC_SAME_CLIENT_STREAMING]",
    ),
    "http binding changed": (
        USERS_V1,
        ('{get: "/api/v1/users/{user_id}"}', '{get: "/api/v1/accounts/{user_id}"}'),
        "shop.users.v1.UserService rpc GetUser: HTTP binding GET /api/v1/users/{user_id} removed",
    ),
    "service became internal": (
        USERS_V1,
        (
            "service UserService {\n",
            "service UserService {\n  option (meshproto.api.v1.internal) = true;\n",
        ),
        "service shop.users.v1.UserService: became internal (the edge stops serving it)",
    ),
    "enum value removed": (
        ORDERS_V1,
        ("  // Cancelled after completion; refunded.\n  ORDER_STATUS_CANCELLED = 3;\n", ""),
        'Previously present enum value "3" on enum "OrderStatus" was deleted. [buf '
        "ENUM_VALUE_NO_DELETE]",
    ),
    "enum value renumbered": (
        ORDERS_V1,
        ("ORDER_STATUS_FAILED = 4;", "ORDER_STATUS_FAILED = 5;"),
        'Previously present enum value "4" on enum "OrderStatus" was deleted. [buf '
        "ENUM_VALUE_NO_DELETE]",
    ),
    "enum value renamed": (
        ORDERS_V1,
        ("ORDER_STATUS_FAILED = 4;", "ORDER_STATUS_ABORTED = 4;"),
        'Enum value "4" on enum "OrderStatus" changed name from "ORDER_STATUS_FAILED" to '
        '"ORDER_STATUS_ABORTED". [buf ENUM_VALUE_SAME_NAME]',
    ),
    "json name changed": (
        USERS_V1,
        (
            "  string email = 2;\n  // Public",
            '  string email = 2 [json_name = "mail"];\n  // Public',
        ),
        'Field "2" with name "email" on message "User" changed option "json_name" from "email" '
        'to "mail". [buf FIELD_SAME_JSON_NAME]',
    ),
    "extension renumbered": (
        "meshproto/api/v1/options.proto",
        ("bool internal = 50001;", "bool internal = 50011;"),
        "extension meshproto.api.v1.internal: renumbered from 50001 to 50011",
    ),
}


@pytest.mark.parametrize("case", sorted(BREAKING))
def test_breaking_change_is_reported_by_name(released, protos, case):
    proto, (old, new), expected = BREAKING[case]
    protos.edit(proto, old, new)
    found = problems(released, protos)
    assert any(expected in p for p in found), found


def test_message_removed(released, protos):
    protos.edit(
        ORDERS_V1,
        "rpc CancelOrder(CancelOrderRequest) returns (Order)",
        "rpc CancelOrder(GetOrderRequest) returns (Order)",
    )
    protos.edit_re(
        ORDERS_V1, r"// Request of CancelOrder\.\nmessage CancelOrderRequest \{.*?\}\n", ""
    )
    found = problems(released, protos)
    assert (
        'shop/orders/v1/orders.proto:1: Previously present message "CancelOrderRequest" was '
        "deleted from file. [buf MESSAGE_NO_DELETE]" in found
    ), found


def test_enum_removed(released, protos):
    protos.edit_re(PAYMENTS_V1, r"// Lifecycle of a payment\.\nenum PaymentStatus \{.*?\}\n", "")
    protos.edit(PAYMENTS_V1, "  PaymentStatus status = 4;", "  string status = 4;")
    found = problems(released, protos)
    assert any(
        'enum "PaymentStatus" was deleted from file. [buf ENUM_NO_DELETE]' in p for p in found
    )
    assert any(
        'Field "4" with name "status" on message "Payment" changed type from "enum" to "string"'
        in p
        for p in found
    ), found


def test_service_removed(released, protos):
    protos.edit_re(
        INVENTORY_V1, r"// Stock reservations held.*?\nservice ReservationService \{.*?\n\}\n", ""
    )
    found = problems(released, protos)
    assert any(
        'service "ReservationService" was deleted from file. [buf SERVICE_NO_DELETE]' in p
        for p in found
    ), found


def test_package_removed(released, protos):
    protos.remove("shop/testing")
    found = problems(released, protos)
    assert found == [
        'Previously present file "shop/testing/v1/ping.proto" was deleted. [buf FILE_NO_DELETE]'
    ]


def test_message_moved_to_another_file(released, protos):
    # Same wire format, but `from shop.common.v1 import money_pb2` loses Money.
    text = protos.path(MONEY).read_text()
    protos.write("shop/common/v1/amount.proto", text)
    protos.edit_re(
        MONEY,
        r"// An amount of money.*",
        'import public "shop/common/v1/amount.proto";\n',
    )
    found = problems(released, protos)
    assert found == [
        'shop/common/v1/money.proto:1: Previously present message "Money" was deleted from '
        "file. [buf MESSAGE_NO_DELETE]"
    ]


def test_file_removed(released, protos):
    # A package with a file gone: its generated module would vanish.
    protos.path(ORDERS_V1).rename(protos.path("shop/orders/v1/order.proto"))
    found = problems(released, protos)
    assert found == [
        'Previously present file "shop/orders/v1/orders.proto" was deleted. [buf FILE_NO_DELETE]'
    ]


COMPATIBLE = {
    "field added": (
        ORDERS_V1,
        (
            "  google.protobuf.Timestamp create_time = 7;\n}",
            "  google.protobuf.Timestamp create_time = 7;\n  // New.\n  string note = 8;\n}",
        ),
    ),
    "message added": (
        ORDERS_V1,
        (
            "// Request of GetOrder.",
            "// New.\nmessage Note {\n  // Text.\n  string text = 1;\n}\n\n// Request of GetOrder.",
        ),
    ),
    "enum value added": (
        ORDERS_V1,
        (
            "ORDER_STATUS_FAILED = 4;",
            "ORDER_STATUS_FAILED = 4;\n  // New.\n  ORDER_STATUS_ON_HOLD = 5;",
        ),
    ),
    "rpc added": (
        ORDERS_V1,
        (
            "  rpc GetOrder(GetOrderRequest) returns (Order) {",
            "  // New.\n  rpc PeekOrder(GetOrderRequest) returns (Order) {\n"
            '    option (google.api.http) = {get: "/api/v1/orders/{order_id}/peek"};\n  }\n\n'
            "  rpc GetOrder(GetOrderRequest) returns (Order) {",
        ),
    ),
    "http binding added": (
        USERS_V1,
        (
            '{get: "/api/v1/users/{user_id}"}',
            '{get: "/api/v1/users/{user_id}" '
            'additional_bindings {get: "/api/v1/accounts/{user_id}"}}',
        ),
    ),
    "comment changed": (
        ORDERS_V1,
        ("// Total in US cents.", "// Total of the order, in US cents."),
    ),
    "fields reordered in the file": (
        ORDERS_V1,
        (
            "  // Id of the order (a UUID).\n  string order_id = 1;\n"
            "  // Why, for the record.\n  string reason = 2;\n",
            "  // Why, for the record.\n  string reason = 2;\n"
            "  // Id of the order (a UUID).\n  string order_id = 1;\n",
        ),
    ),
    "internal service became public": (
        "shop/testing/v1/ping.proto",
        ("  option (meshproto.api.v1.internal) = true;\n", ""),
    ),
}


@pytest.mark.parametrize("case", sorted(COMPATIBLE))
def test_compatible_change_passes(released, protos, case):
    proto, (old, new) = COMPATIBLE[case]
    protos.edit(proto, old, new)
    assert problems(released, protos) == []


def test_new_package_is_not_checked_until_released(released, protos):
    protos.write(
        "shop/reviews/v1/reviews.proto",
        'syntax = "proto3";\n// Reviews.\npackage shop.reviews.v1;\n// A review.\n'
        "message Review {\n  // Its text.\n  string text = 1;\n}\n",
    )
    assert problems(released, protos) == []


# `make baseline` itself, against a copy of the contracts and a temp baseline dir.


def test_release_refuses_breaking_changes_unless_allowed(protos, tmp_path: Path, capsys):
    out = tmp_path / "baseline"
    args = ["--proto-root", str(protos.root), "--dir", str(out)]
    assert baseline.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{p}.binpb" for p in RELEASED]
    first = {p.name: p.read_bytes() for p in out.iterdir()}

    assert baseline.main(args) == 0  # deterministic: nothing to rewrite
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first

    protos.edit(ORDERS_V1, "int64 total_cents = 4;", "string total_cents = 4;")
    capsys.readouterr()
    assert baseline.main([*args, "--check"]) == 1
    assert (
        'Field "4" with name "total_cents" on message "Order" changed type from "int64" to '
        '"string". [buf FIELD_SAME_TYPE]' in capsys.readouterr().out
    )
    assert baseline.main(args) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first

    assert baseline.main([*args, "--allow-breaking"]) == 0
    assert baseline.main([*args, "--check"]) == 0


def test_release_records_additions(protos, tmp_path: Path):
    out = tmp_path / "baseline"
    args = ["--proto-root", str(protos.root), "--dir", str(out)]
    assert baseline.main(args) == 0
    proto, (old, new) = COMPATIBLE["field added"]
    protos.edit(proto, old, new)
    assert baseline.main(args) == 0
    # The new field is now released: removing it again is breaking.
    protos.edit(ORDERS_V1, "  // New.\n  string note = 8;\n", "")
    found = breaking.check(baseline.load(out), protos.descriptor_set())
    assert found == [
        'shop/orders/v1/orders.proto:1: Previously present field "8" with name "note" on message '
        '"Order" was deleted. '
        "[buf FIELD_NO_DELETE]"
    ]
