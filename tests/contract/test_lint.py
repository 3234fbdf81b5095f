"""The contract lint (buf lint, the mesh's rules, the shop's in services/tools/contract_lint.py):
today's protos keep every rule; deliberately bad copies fail by name."""

from __future__ import annotations

import pytest

from mesh.contracts import lint
from services.tools.contract_lint import SHOP_RULES
from tests.support.proto_tree import ProtoTree

USERS_V1 = "shop/users/v1/users.proto"
ORDERS_V2 = "shop/orders/v2/orders.proto"
PAYMENTS_V1 = "shop/payments/v1/payments.proto"
INVENTORY_V1 = "shop/inventory/v1/inventory.proto"
MONEY = "shop/common/v1/money.proto"


def violations(protos: ProtoTree) -> list[str]:
    fds = protos.descriptor_set(source_info=True)
    return [str(v) for v in lint.check(fds, protos.files(), SHOP_RULES)]


def test_current_contracts_pass():
    found = [str(v) for v in lint.lint_tree(rules=SHOP_RULES)]
    assert found == []


def test_lint_needs_source_info(protos):
    # Without source info buf's comment rules pass silently (measured): refuse such a set.
    with pytest.raises(lint.MissingSourceInfo):
        lint.check(protos.descriptor_set(source_info=False), protos.files())


# Each case: (proto, (old, new), expected violation).
BAD = {
    "double money": (
        MONEY,
        ("int64 amount_minor = 2;", "double amount_minor = 2;"),
        "shop.common.v1.Money field 2 'amount_minor': is double: money and amounts are "
        "integers (shop.common.v1.Money: minor units + currency), never floating point "
        "[no-float]",
    ),
    "float price": (
        INVENTORY_V1,
        (
            "  google.protobuf.Timestamp create_time = 7;\n}\n\n// One product",
            "  google.protobuf.Timestamp create_time = 7;\n  // Price in dollars.\n"
            "  float price_usd = 8;\n}\n\n// One product",
        ),
        "shop.inventory.v1.Product field 8 'price_usd': is float",
    ),
    "field without comment": (
        USERS_V1,
        ("  // Login email, unique, stored lower case.\n", ""),
        'shop/users/v1/users.proto:96: Field "email" should have a non-empty comment for '
        "documentation. [buf COMMENT_FIELD]",
    ),
    "trailing comment only": (
        USERS_V1,
        (
            "  // Login email, unique, stored lower case.\n  string email = 2;",
            "  string email = 2; // Login email.",
        ),
        'shop/users/v1/users.proto:96: Field "email" should have a non-empty comment for '
        "documentation. [buf COMMENT_FIELD]",
    ),
    "message without comment": (
        USERS_V1,
        ("// What a customer tells about themselves.\n", ""),
        'shop/users/v1/users.proto:104: Message "Profile" should have a non-empty comment for '
        "documentation. [buf COMMENT_MESSAGE]",
    ),
    "rpc without comment": (
        USERS_V1,
        ("  // Returns one account by id (NOT_FOUND if there is none).\n", ""),
        'shop/users/v1/users.proto:25: RPC "GetUser" should have a non-empty comment for '
        "documentation. [buf COMMENT_RPC]",
    ),
    "service without comment": (
        USERS_V1,
        ("// Manages customer accounts and their login sessions.\n", ""),
        'shop/users/v1/users.proto:10: Service "UserService" should have a non-empty comment for '
        "documentation. [buf COMMENT_SERVICE]",
    ),
    "enum without comment": (
        PAYMENTS_V1,
        ("// Lifecycle of a payment.\n", ""),
        'shop/payments/v1/payments.proto:48: Enum "PaymentStatus" should have a non-empty '
        "comment for documentation. [buf COMMENT_ENUM]",
    ),
    "enum value without comment": (
        PAYMENTS_V1,
        ("  // The money was captured.\n", ""),
        'shop/payments/v1/payments.proto:52: Enum value "PAYMENT_STATUS_CAPTURED" should have a '
        "non-empty comment for documentation. [buf COMMENT_ENUM_VALUE]",
    ),
    "oneof without comment": (
        PAYMENTS_V1,
        ("  // Which payment to return.\n", ""),
        'shop/payments/v1/payments.proto:98: Oneof "key" should have a non-empty comment for '
        "documentation. [buf COMMENT_ONEOF]",
    ),
    "public rpc without http binding": (
        USERS_V1,
        ('    option (google.api.http) = {get: "/api/v1/users/{user_id}"};\n', ""),
        "shop.users.v1.UserService rpc GetUser: public RPC has no google.api.http binding [http]",
    ),
    "binding under the wrong version": (
        ORDERS_V2,
        ('{get: "/api/v2/orders/{order_id}"}', '{get: "/api/v1/orders/{order_id}"}'),
        "shop.orders.v2.OrderService rpc GetOrder: HTTP binding GET /api/v1/orders/{order_id} "
        "is not under /api/v2/ [http]",
    ),
    "binding outside /api": (
        USERS_V1,
        ('{get: "/api/v1/users/{user_id}"}', '{get: "/v1/users/{user_id}"}'),
        "shop.users.v1.UserService rpc GetUser: HTTP binding GET /v1/users/{user_id} "
        "is not under /api/v1/ [http]",
    ),
    "internal service without callers": (
        PAYMENTS_V1,
        ('  option (meshproto.api.v1.default_callers) = {services: ["orders"]};\n', ""),
        "shop.payments.v1.PaymentService rpc Charge: internal RPC names no callers: add option "
        "(meshproto.api.v1.callers) or the service's (meshproto.api.v1.default_callers) [policy]",
    ),
    "public rpc without auth": (
        USERS_V1,
        (
            "    option (meshproto.api.v1.auth) = {access: ACCESS_USER};\n"
            "    option (meshproto.api.v1.idempotent) = true;\n",
            "    option (meshproto.api.v1.idempotent) = true;\n",
        ),
        "shop.users.v1.UserService rpc GetUser: public RPC declares no end-user auth: add option "
        "(meshproto.api.v1.auth) [policy]",
    ),
    "roles access without roles": (
        INVENTORY_V1,
        (
            '"mesh-client", "orders"]};\n'
            '    option (meshproto.api.v1.auth) = {access: ACCESS_ROLES, roles: ["admin"]};',
            '"mesh-client", "orders"]};\n'
            "    option (meshproto.api.v1.auth) = {access: ACCESS_ROLES};",
        ),
        "shop.inventory.v1.InventoryService rpc AddStock: ACCESS_ROLES names no roles [policy]",
    ),
    "binding on an internal service": (
        INVENTORY_V1,
        (
            "  rpc ReserveItems(ReserveItemsRequest) returns (Reservation) {\n",
            "  rpc ReserveItems(ReserveItemsRequest) returns (Reservation) {\n"
            '    option (google.api.http) = {post: "/api/v1/reservations" body: "*"};\n',
        ),
        "shop.inventory.v1.ReservationService rpc ReserveItems: internal service has HTTP "
        "binding POST /api/v1/reservations: remove it [http]",
    ),
    "camel case field": (
        USERS_V1,
        ("  string email = 2;\n  // Public", "  string emailAddress = 2;\n  // Public"),
        'shop/users/v1/users.proto:97: Field name "emailAddress" should be lower_snake_case, '
        'such as "email_address". [buf FIELD_LOWER_SNAKE_CASE]',
    ),
    "snake case message": (
        USERS_V1,
        (
            "// Request of GetUser.",
            "// A note.\nmessage user_note {\n  // Text.\n  string text = 1;\n}\n\n"
            "// Request of GetUser.",
        ),
        'shop/users/v1/users.proto:121: Message name "user_note" should be PascalCase, such as '
        '"UserNote". [buf MESSAGE_PASCAL_CASE]',
    ),
    "enum value without prefix": (
        PAYMENTS_V1,
        ("PAYMENT_STATUS_CAPTURED = 1;", "CAPTURED = 1;"),
        'shop/payments/v1/payments.proto:53: Enum value name "CAPTURED" should be prefixed with '
        '"PAYMENT_STATUS_". [buf ENUM_VALUE_PREFIX]',
    ),
    "zero enum value not unspecified": (
        PAYMENTS_V1,
        ("PAYMENT_STATUS_UNSPECIFIED = 0;", "PAYMENT_STATUS_NONE = 0;"),
        'shop/payments/v1/payments.proto:51: Enum zero value name "PAYMENT_STATUS_NONE" should '
        'be suffixed with "_UNSPECIFIED". [buf ENUM_ZERO_VALUE_SUFFIX]',
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_contract_fails_by_name(protos, case):
    proto, (old, new), expected = BAD[case]
    protos.edit(proto, old, new)
    found = violations(protos)
    assert any(v.startswith(expected) for v in found), found


def test_binding_on_internal_payments(protos):
    # Payments never reaches the edge: a binding there is a lint error, not a route.
    protos.edit(
        PAYMENTS_V1,
        'import "google/protobuf/timestamp.proto";',
        'import "google/api/annotations.proto";\nimport "google/protobuf/timestamp.proto";',
    )
    protos.edit(
        PAYMENTS_V1,
        "  rpc Charge(ChargeRequest) returns (Payment) {\n",
        "  rpc Charge(ChargeRequest) returns (Payment) {\n"
        '    option (google.api.http) = {post: "/api/v1/charges" body: "*"};\n',
    )
    assert violations(protos) == [
        "shop.payments.v1.PaymentService rpc Charge: internal service has HTTP binding "
        "POST /api/v1/charges: remove it [http]"
    ]


def test_double_wrapper_is_a_float_too(protos):
    protos.edit(
        INVENTORY_V1,
        'import "google/protobuf/timestamp.proto";',
        'import "google/protobuf/timestamp.proto";\nimport "google/protobuf/wrappers.proto";',
    )
    protos.edit(
        INVENTORY_V1,
        "  google.protobuf.Timestamp create_time = 7;\n}\n\n// One product",
        "  google.protobuf.Timestamp create_time = 7;\n  // Weight in kilograms.\n"
        "  google.protobuf.DoubleValue weight = 8;\n}\n\n// One product",
    )
    found = violations(protos)
    assert len(found) == 1
    assert found[0].startswith(
        "shop.inventory.v1.Product field 8 'weight': is google.protobuf.DoubleValue"
    )


def test_unversioned_package(protos):
    protos.write(
        "acme/misc.proto",
        'syntax = "proto3";\n\n// Odds and ends.\npackage acme.misc;\n\n'
        "// A thing.\nmessage Thing {\n  // Its name.\n  string name = 1;\n}\n",
    )
    found = violations(protos)
    assert "package acme.misc: must be <org>.<name>.v<N> (versioned) [package]" in found
    assert any(v.endswith("[buf PACKAGE_VERSION_SUFFIX]") for v in found), found


def test_shop_contracts_live_in_their_package_directory(protos):
    protos.write(
        "shop/misc/v1/misc.proto",
        'syntax = "proto3";\n\n// Odds and ends.\npackage shop.odds.v1;\n\n'
        "// A thing.\nmessage Thing {\n  // Its name.\n  string name = 1;\n}\n",
    )
    found = violations(protos)
    assert (
        "package shop.odds.v1 in shop/misc/v1/misc.proto: must be shop.<name>.v<N>, matching "
        "its directory (shop.misc.v1) [shop-package]"
    ) in found
    assert any(v.endswith("[buf PACKAGE_DIRECTORY_MATCH]") for v in found), found


def test_the_mesh_lint_alone_knows_no_shop_rule(protos):
    protos.edit(MONEY, "int64 amount_minor = 2;", "double amount_minor = 2;")
    fds = protos.descriptor_set(source_info=True)
    assert lint.lint(fds, protos.files()) == []
    assert len(violations(protos)) == 1


def test_every_problem_is_reported_not_just_the_first(protos):
    protos.edit(MONEY, "int64 amount_minor = 2;", "double amountMinor = 2;")
    protos.edit(MONEY, '  // ISO 4217 alphabetic code, upper case, e.g. "USD", "EUR", "JPY".\n', "")
    found = violations(protos)
    assert sorted(v.rsplit("[", 1)[1] for v in found) == [
        "buf COMMENT_FIELD]",
        "buf FIELD_LOWER_SNAKE_CASE]",
        "no-float]",
    ], found
