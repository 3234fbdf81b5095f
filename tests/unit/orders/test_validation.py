"""Request validation of both versions: every bad field reported, values normalised."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from shop.orders.v1 import orders_pb2 as v1
from shop.orders.v2 import orders_pb2 as v2

from base.errors import InvalidArgument
from services.common.pagination import encode_page_token
from services.orders import validation

USER = "11111111-1111-4111-8111-111111111111"
PRODUCT = "22222222-2222-4222-8222-222222222222"
NOW = datetime(2026, 11, 25, tzinfo=UTC)


def request_v2(**changes: object) -> v2.CreateOrderRequest:
    req = v2.CreateOrderRequest(
        idempotency_key="key-1",
        user_id=USER,
        items=[v2.OrderItem(product_id=PRODUCT, quantity=2)],
        currency_code="EUR",
        card=v2.PaymentCard(number="4242 4242 4242 4242", exp_month=11, exp_year=2026, cvc="123"),
        shipping_address=v2.Address(recipient=" Ada ", lines=["1 Road"], city="Berlin",
                                    country_code="DE"),
    )  # fmt: skip
    for k, value in changes.items():
        setattr(req, k, value)
    return req


def violations(exc: pytest.ExceptionInfo[InvalidArgument]) -> set[str]:
    return {v.field for v in exc.value.violations}


def test_valid_v2_request_becomes_a_command() -> None:
    cmd = validation.create_order_v2(request_v2(), now=NOW)
    assert cmd.user_id == USER and cmd.currency == "EUR" and cmd.api_version == 2
    assert [(x.product_id, x.quantity) for x in cmd.lines] == [(PRODUCT, 2)]
    assert cmd.card.number == "4242424242424242" and cmd.card.last4 == "4242"
    assert cmd.shipping is not None and cmd.shipping.recipient == "Ada"
    assert cmd.idempotency_key == "key-1" and len(cmd.fingerprint) == 64
    assert "4242424242424242" not in repr(cmd)  # the card number never shows in logs


def test_the_fingerprint_ignores_the_card_and_follows_the_order() -> None:
    a = validation.create_order_v2(request_v2(), now=NOW)
    other_card = request_v2()
    other_card.card.number = "4000000000000002"
    b = validation.create_order_v2(other_card, now=NOW)
    more = request_v2()
    more.items[0].quantity = 3
    c = validation.create_order_v2(more, now=NOW)
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_every_bad_v2_field_is_reported_at_once() -> None:
    req = request_v2(idempotency_key="", user_id="x", currency_code="EURO")
    req.items.append(v2.OrderItem(product_id=PRODUCT, quantity=0))
    req.card.exp_month = 10  # October 2026 is over on 25 November 2026
    req.shipping_address.country_code = "de"
    with pytest.raises(InvalidArgument) as exc:
        validation.create_order_v2(req, now=NOW)
    assert violations(exc) == {
        "idempotency_key", "user_id", "currency_code", "items[1].product_id",
        "items[1].quantity", "card.exp_year", "shipping_address.country_code",
    }  # fmt: skip


@pytest.mark.parametrize("code", ["DE\n", "de", "D", "DEU"])
def test_a_country_code_is_two_capitals_and_nothing_after(code: str) -> None:
    """`^[A-Z]{2}$` with `match` took "DE\\n": `$` also matches before a final newline."""
    req = request_v2()
    req.shipping_address.country_code = code
    with pytest.raises(InvalidArgument) as exc:
        validation.create_order_v2(req, now=NOW)
    assert violations(exc) == {"shipping_address.country_code"}


def test_item_limits() -> None:
    many = request_v2()
    many.items.extend(v2.OrderItem(product_id=PRODUCT, quantity=1) for _ in range(100))
    with pytest.raises(InvalidArgument) as exc:
        validation.create_order_v2(many, now=NOW)
    assert violations(exc) == {"items"}
    huge = request_v2()
    huge.items[0].quantity = validation.MAX_QUANTITY + 1
    with pytest.raises(InvalidArgument) as exc:
        validation.create_order_v2(huge, now=NOW)
    assert violations(exc) == {"items[0].quantity"}


def test_v1_needs_only_a_card_number_and_is_usd() -> None:
    cmd = validation.create_order_v1(
        v1.CreateOrderRequest(user_id=USER, items=[v1.OrderItem(product_id=PRODUCT, quantity=1)],
                              card_number="4242424242424242")
    )  # fmt: skip
    assert cmd.currency == "USD" and cmd.api_version == 1 and cmd.idempotency_key == ""
    assert (cmd.card.exp_month, cmd.card.exp_year, cmd.card.cvc) == (0, 0, "")
    with pytest.raises(InvalidArgument) as exc:
        validation.create_order_v1(v1.CreateOrderRequest(user_id=USER, card_number="42"))
    assert violations(exc) == {"items", "card_number"}


def test_list_v2_page_size_and_tokens() -> None:
    assert validation.list_orders_v2(v2.ListOrdersRequest(user_id=USER)) == (USER, 20, None)
    token = encode_page_token(validation.PAGE_KIND, validation.page_cursor(USER, 5, PRODUCT))
    got = validation.list_orders_v2(
        v2.ListOrdersRequest(user_id=USER, page_size=100, page_token=token)
    )
    assert got == (USER, 100, (5, PRODUCT))
    for bad in (
        v2.ListOrdersRequest(user_id=USER, page_size=101),
        v2.ListOrdersRequest(user_id=USER, page_size=-1),
        v2.ListOrdersRequest(user_id=PRODUCT, page_token=token),  # another user's token
        v2.ListOrdersRequest(user_id=USER, page_token=encode_page_token("other", {"x": 1})),
    ):
        with pytest.raises(InvalidArgument):
            validation.list_orders_v2(bad)


def test_cancel_reason_is_optional_but_bounded() -> None:
    assert validation.cancel_order(USER, "") == (USER, "")
    with pytest.raises(InvalidArgument) as exc:
        validation.cancel_order("nope", "bad\x00reason")
    assert violations(exc) == {"order_id", "reason"}
