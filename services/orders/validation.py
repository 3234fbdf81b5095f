"""Requests of both API versions → validated domain commands.

Every check records a field violation under the request's own field path
(`items[2].quantity`, `card.exp_year`, `card_number` in v1) and validation goes
on, so one INVALID_ARGUMENT lists everything wrong. Shared checks come from
`services.common.validation`; what is specific to orders (cards, addresses,
idempotency keys) is here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from shop.orders.v1 import orders_pb2 as v1
from shop.orders.v2 import orders_pb2 as v2

from base.errors import Violations
from services.common.cards import card_number_field, cvc_field, expiry_fields
from services.common.validation import (
    currency_field,
    int_field,
    page_size_field,
    page_token_field,
    text_field,
    unique_ids,
    uuid_field,
)
from services.orders.model import Address, Card, Line, PlaceOrder

MAX_ITEMS = 100
# Units of one product in one order. Bounds line totals (price x quantity) far
# below int64 whatever the price, and no shop sells more in one order.
MAX_QUANTITY = 1_000_000
MAX_KEY_CHARS = 128
MAX_REASON_CHARS = 500
MAX_ADDRESS_LINES = 5
V2_DEFAULT_PAGE_SIZE = 20
V2_MAX_PAGE_SIZE = 100
# Page tokens of ListOrders v2 (services.common.pagination rejects tokens of other listings).
PAGE_KIND = "orders.v2.list"
V1_CURRENCY = "USD"

_COUNTRY = re.compile(r"^[A-Z]{2}$")


class _Item(Protocol):
    @property
    def product_id(self) -> str: ...
    @property
    def quantity(self) -> int: ...


def _items(v: Violations, items: Sequence[_Item]) -> tuple[Line, ...]:
    if not items:
        v.add("items", "needs at least one item")
        return ()
    if len(items) > MAX_ITEMS:
        # Per-line checks of an oversized list would only bloat the error.
        v.add("items", f"must have at most {MAX_ITEMS} items, got {len(items)}")
        return ()
    lines = []
    for n, item in enumerate(items):
        pid = uuid_field(v, f"items[{n}].product_id", item.product_id)
        qty = int_field(v, f"items[{n}].quantity", item.quantity, minimum=1, maximum=MAX_QUANTITY)
        lines.append(Line(pid, qty))
    unique_ids(v, "items[{}].product_id", (line.product_id for line in lines), "product")
    return tuple(lines)


def _card_v2(v: Violations, request: v2.CreateOrderRequest, now: datetime) -> Card:
    if not request.HasField("card"):
        v.add("card", "is required")
        return Card("")
    c = request.card
    number = card_number_field(v, "card.number", c.number)
    expiry_fields(v, "card", c.exp_month, c.exp_year, now=now)
    cvc = cvc_field(v, "card.cvc", c.cvc)
    return Card(number, c.exp_month, c.exp_year, cvc)


def _address(v: Violations, request: v2.CreateOrderRequest) -> Address | None:
    path = "shipping_address"
    if not request.HasField("shipping_address"):
        v.add(path, "is required (recipient, one line, city and country_code)")
        return None
    a = request.shipping_address
    recipient = text_field(v, f"{path}.recipient", a.recipient, max_len=200)
    lines: list[str] = []
    if not a.lines:
        v.add(f"{path}.lines", "needs at least one line")
    elif len(a.lines) > MAX_ADDRESS_LINES:
        v.add(f"{path}.lines", f"must have at most {MAX_ADDRESS_LINES} lines")
    else:
        for n, line in enumerate(a.lines):
            lines.append(text_field(v, f"{path}.lines[{n}]", line, max_len=200))
    city = text_field(v, f"{path}.city", a.city, max_len=100)
    postal = text_field(v, f"{path}.postal_code", a.postal_code, min_len=0, max_len=20)
    if not a.country_code:
        v.add(f"{path}.country_code", "is required (ISO 3166-1 alpha-2, e.g. DE)")
    elif not _COUNTRY.fullmatch(a.country_code):
        v.add(f"{path}.country_code", "must be two upper-case letters (ISO 3166-1 alpha-2)")
    return Address(recipient, tuple(lines), city, postal, a.country_code)


def fingerprint(order: PlaceOrder) -> str:
    """Digest of what the order is (not the card, which is never stored even hashed)."""
    body = {
        "user": order.user_id,
        "lines": [[line.product_id, line.quantity] for line in order.lines],
        "currency": order.currency,
        "shipping": None
        if order.shipping is None
        else [order.shipping.recipient, list(order.shipping.lines), order.shipping.city,
              order.shipping.postal_code, order.shipping.country_code],
    }  # fmt: skip
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()


def create_order_v1(request: v1.CreateOrderRequest, user_id: str | None = None) -> PlaceOrder:
    """`user_id`: the one to validate instead of the request's (the caller's own when empty)."""
    v = Violations()
    user_id = uuid_field(v, "user_id", request.user_id if user_id is None else user_id)
    lines = _items(v, request.items)
    number = card_number_field(v, "card_number", request.card_number)
    v.raise_if_any()
    # v1 cards carry no expiry or CVC: zeros mean "not provided" to payments.
    return PlaceOrder(user_id, lines, V1_CURRENCY, Card(number), api_version=1)


def create_order_v2(
    request: v2.CreateOrderRequest, now: datetime | None = None, user_id: str | None = None
) -> PlaceOrder:
    """`user_id`: the one to validate instead of the request's (the caller's own when empty)."""
    v = Violations()
    key = text_field(v, "idempotency_key", request.idempotency_key, max_len=MAX_KEY_CHARS,
                     strip=False)  # fmt: skip
    user_id = uuid_field(v, "user_id", request.user_id if user_id is None else user_id)
    lines = _items(v, request.items)
    currency = currency_field(v, "currency_code", request.currency_code)
    card = _card_v2(v, request, now or datetime.now(UTC))
    shipping = _address(v, request)
    v.raise_if_any()
    order = PlaceOrder(user_id, lines, currency, card, shipping, key, "", 2)
    return PlaceOrder(user_id, lines, currency, card, shipping, key, fingerprint(order), 2)


def order_id(value: str) -> str:
    v = Violations()
    oid = uuid_field(v, "order_id", value)
    v.raise_if_any()
    return oid


def cancel_order(order_id_value: str, reason: str) -> tuple[str, str]:
    v = Violations()
    oid = uuid_field(v, "order_id", order_id_value)
    why = text_field(v, "reason", reason, min_len=0, max_len=MAX_REASON_CHARS)
    v.raise_if_any()
    return oid, why


def list_orders_v1(request: v1.ListOrdersRequest, user_id: str | None = None) -> str:
    v = Violations()
    user_id = uuid_field(v, "user_id", request.user_id if user_id is None else user_id)
    v.raise_if_any()
    return user_id


def list_orders_v2(
    request: v2.ListOrdersRequest, user_id: str | None = None
) -> tuple[str, int, tuple[int, str] | None]:
    """(user_id, page size, cursor after which the page starts)."""
    v = Violations()
    user_id = uuid_field(v, "user_id", request.user_id if user_id is None else user_id)
    size = page_size_field(v, "page_size", request.page_size, default=V2_DEFAULT_PAGE_SIZE,
                           maximum=V2_MAX_PAGE_SIZE)  # fmt: skip
    cursor = page_token_field(v, "page_token", PAGE_KIND, request.page_token)
    after: tuple[int, str] | None = None
    if cursor is not None:
        t, oid, owner = cursor.get("t"), cursor.get("i"), cursor.get("u")
        if not isinstance(t, int) or not isinstance(oid, str) or owner != user_id:
            v.add("page_token", "page token is malformed or belongs to another user's listing")
        else:
            after = (t, oid)
    v.raise_if_any()
    return user_id, size, after


def page_cursor(user_id: str, created_us: int, order_id_value: str) -> dict[str, str | int]:
    return {"u": user_id, "t": created_us, "i": order_id_value}
