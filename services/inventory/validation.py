"""Validation of the inventory service's requests: INVALID_ARGUMENT with every field violation."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from shop.inventory.v1 import inventory_pb2

from base.errors import Violations
from services.common.money import Amount
from services.common.validation import (
    int_field,
    money_field,
    page_size_field,
    page_token_field,
    text_field,
    unique_ids,
    uuid_field,
)

MAX_SKU = 64
MAX_NAME = 200
MAX_REASON = 500
MAX_LINES = 100
# One line may ask for up to a billion units; one product may hold up to 10^12
# (available + reserved), far inside int64 whatever is added or reserved.
MAX_LINE_QUANTITY = 10**9
MAX_STOCK = 10**12
PRODUCTS_PAGE = "inventory.products"

# Letters, digits and a few separators; no spaces, so a SKU survives URLs and CSVs.
_SKU = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")


@dataclass(frozen=True, slots=True)
class NewProduct:
    sku: str
    name: str
    price: Amount
    initial_stock: int


@dataclass(frozen=True, slots=True)
class Line:
    product_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Page:
    size: int
    after_sku: str | None


def create_product(req: inventory_pb2.CreateProductRequest) -> NewProduct:
    v = Violations()
    sku = req.sku
    if not sku:
        v.add("sku", "is required")
    elif len(sku) > MAX_SKU:
        v.add("sku", f"must be at most {MAX_SKU} characters")
    elif not _SKU.fullmatch(sku):
        v.add("sku", "must start with a letter or digit and use only letters, digits, . _ : / -")
    name = text_field(v, "name", req.name, max_len=MAX_NAME)
    price = money_field(v, "price", req.price, present=req.HasField("price"))
    stock = int_field(v, "initial_stock", req.initial_stock, minimum=0, maximum=MAX_STOCK)
    v.raise_if_any()
    assert price is not None
    return NewProduct(sku, name, price, stock)


def product_id(req: inventory_pb2.GetProductRequest) -> str:
    v = Violations()
    pid = uuid_field(v, "product_id", req.product_id)
    v.raise_if_any()
    return pid


def list_products(req: inventory_pb2.ListProductsRequest) -> Page:
    v = Violations()
    size = page_size_field(v, "page_size", req.page_size)
    cursor = page_token_field(v, "page_token", PRODUCTS_PAGE, req.page_token)
    after: str | None = None
    if cursor is not None:
        sku = cursor.get("sku")
        # Tokens are client input like any other: the cursor must be a SKU.
        if isinstance(sku, str) and len(sku) <= MAX_SKU and _SKU.fullmatch(sku):
            after = sku
        else:
            v.add("page_token", "page token is malformed")
    v.raise_if_any()
    return Page(size, after)


def add_stock(req: inventory_pb2.AddStockRequest) -> Line:
    v = Violations()
    pid = uuid_field(v, "product_id", req.product_id)
    qty = int_field(v, "quantity", req.quantity, minimum=1, maximum=MAX_STOCK)
    v.raise_if_any()
    return Line(pid, qty)


def _lines(v: Violations, items: Sequence[inventory_pb2.LineItem]) -> list[Line]:
    if not items:
        v.add("items", "needs at least one line")
    elif len(items) > MAX_LINES:
        v.add("items", f"must have at most {MAX_LINES} lines")
        return []
    lines = []
    for i, item in enumerate(items):
        pid = uuid_field(v, f"items[{i}].product_id", item.product_id)
        qty = int_field(
            v, f"items[{i}].quantity", item.quantity, minimum=1, maximum=MAX_LINE_QUANTITY
        )
        lines.append(Line(pid, qty))
    unique_ids(v, "items[{}].product_id", [line.product_id for line in lines], "product")
    return lines


def check_availability(req: inventory_pb2.CheckAvailabilityRequest) -> list[Line]:
    v = Violations()
    lines = _lines(v, req.items)
    v.raise_if_any()
    return lines


def reserve_items(req: inventory_pb2.ReserveItemsRequest) -> tuple[str, list[Line]]:
    v = Violations()
    saga_id = uuid_field(v, "saga_id", req.saga_id)
    lines = _lines(v, req.items)
    v.raise_if_any()
    return saga_id, lines


def saga_id(req: inventory_pb2.ConfirmReservationRequest) -> str:
    v = Violations()
    sid = uuid_field(v, "saga_id", req.saga_id)
    v.raise_if_any()
    return sid


def release(
    req: inventory_pb2.ReleaseReservationRequest | inventory_pb2.ReturnReservationRequest,
) -> tuple[str, str]:
    """A release's or a return's saga id and reason (the same two fields)."""
    v = Violations()
    sid = uuid_field(v, "saga_id", req.saga_id)
    reason = text_field(v, "reason", req.reason, min_len=0, max_len=MAX_REASON)
    v.raise_if_any()
    return sid, reason
