"""The orders domain: what both API versions map to (plain data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class OrderStatus(StrEnum):
    """Stored in `orders.status`. v1 shows RESERVED and PAID as PENDING."""

    PENDING = "PENDING"
    RESERVED = "RESERVED"
    PAID = "PAID"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (OrderStatus.COMPLETED, OrderStatus.CANCELLED, OrderStatus.FAILED)

    @property
    def in_flight(self) -> bool:
        """The saga is still placing the order."""
        return not self.terminal


# Forward progress of a placement; a transition never moves an order backwards
# (an advance to where the order is already, or behind it, changes nothing).
PROGRESS: dict[OrderStatus, int] = {
    OrderStatus.PENDING: 0,
    OrderStatus.RESERVED: 1,
    OrderStatus.PAID: 2,
    OrderStatus.COMPLETED: 3,
}

IN_FLIGHT: tuple[OrderStatus, ...] = (OrderStatus.PENDING, OrderStatus.RESERVED, OrderStatus.PAID)


@dataclass(frozen=True, slots=True)
class Card:
    """A card to charge. Never persisted: only `last4` reaches the database."""

    number: str = field(repr=False)
    # 0 when the caller gave none (v1 carries no expiry or CVC).
    exp_month: int = 0
    exp_year: int = 0
    cvc: str = field(default="", repr=False)

    @property
    def last4(self) -> str:
        return self.number[-4:]


@dataclass(frozen=True, slots=True)
class Address:
    recipient: str
    lines: tuple[str, ...]
    city: str
    postal_code: str
    country_code: str


@dataclass(frozen=True, slots=True)
class Line:
    """One ordered product; `unit_price_minor` is known once stock is reserved."""

    product_id: str
    quantity: int
    unit_price_minor: int | None = None


@dataclass(frozen=True, slots=True)
class StatusChange:
    status: OrderStatus
    at_us: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Order:
    order_id: str
    saga_id: str
    user_id: str
    lines: tuple[Line, ...]
    currency: str
    # Sum of the lines in minor units; 0 until stock is reserved (prices known).
    total_minor: int
    status: OrderStatus
    history: tuple[StatusChange, ...]
    shipping: Address | None
    failure_reason: str
    card_last4: str
    payment_id: str
    created_us: int
    updated_us: int


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    """A validated CreateOrder of either version."""

    user_id: str
    lines: tuple[Line, ...]
    currency: str
    card: Card
    shipping: Address | None = None
    # v2 only: the client's key (scoped to the user), and a digest of the request
    # without the card, to tell a retry from a different order reusing the key.
    idempotency_key: str = ""
    fingerprint: str = ""
    api_version: int = 2


@dataclass(frozen=True, slots=True)
class Page:
    orders: tuple[Order, ...]
    next_cursor: dict[str, str | int] | None
