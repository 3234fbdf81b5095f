"""Money as the shop handles it: integer minor units of a supported ISO 4217 currency.

Amounts are never floats. Every stored or transmitted amount fits a signed 64-bit
integer (protobuf `int64`, PostgreSQL `BIGINT`, SQLite `INTEGER`), and the shop caps
one amount well below that (`MAX_AMOUNT_MINOR`) so that sums of many lines and
quantities still fit; `Amount` arithmetic raises `MoneyOverflow` instead of wrapping
or silently growing past the cap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from shop.common.v1 import money_pb2

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

# One amount (a price, a line total, an order total, a charge) is at most 10^15
# minor units: ten trillion dollars, yet a thousand such amounts still add up
# inside int64.
MAX_AMOUNT_MINOR = 10**15

# The currencies the shop prices and charges in, with their minor-unit exponent
# (ISO 4217: 2 for cents, 0 for currencies without a minor unit).
CURRENCIES: Mapping[str, int] = MappingProxyType(
    {
        "AUD": 2,
        "BRL": 2,
        "CAD": 2,
        "CHF": 2,
        "CNY": 2,
        "CZK": 2,
        "DKK": 2,
        "EUR": 2,
        "GBP": 2,
        "HKD": 2,
        "INR": 2,
        "JPY": 0,
        "KRW": 0,
        "MXN": 2,
        "NOK": 2,
        "NZD": 2,
        "PLN": 2,
        "SEK": 2,
        "SGD": 2,
        "USD": 2,
        "ZAR": 2,
    }
)


class MoneyError(ValueError):
    """An amount the shop cannot represent or combine."""


class MoneyOverflow(MoneyError, ArithmeticError):
    """Arithmetic on amounts left the allowed range."""


class CurrencyMismatch(MoneyError):
    """Two amounts in different currencies were combined."""


def is_supported_currency(code: str) -> bool:
    return code in CURRENCIES


def minor_unit_exponent(code: str) -> int:
    """2 for USD (cents), 0 for JPY; KeyError for an unsupported currency."""
    return CURRENCIES[code]


def checked(value: int, limit: int = MAX_AMOUNT_MINOR) -> int:
    """`value` if it lies in [-limit, limit], else MoneyOverflow."""
    if not -limit <= value <= limit:
        raise MoneyOverflow(f"amount {value} is outside ±{limit} minor units")
    return value


@dataclass(frozen=True, slots=True, order=False)
class Amount:
    """An amount of one currency in minor units, always within ±MAX_AMOUNT_MINOR."""

    currency: str
    minor: int

    def __post_init__(self) -> None:
        if not is_supported_currency(self.currency):
            raise MoneyError(f"unsupported currency {self.currency!r}")
        checked(self.minor)

    @classmethod
    def from_proto(cls, money: money_pb2.Money) -> Amount:
        return cls(money.currency_code, money.amount_minor)

    @classmethod
    def zero(cls, currency: str) -> Amount:
        return cls(currency, 0)

    def to_proto(self) -> money_pb2.Money:
        return money_pb2.Money(currency_code=self.currency, amount_minor=self.minor)

    def __add__(self, other: Amount) -> Amount:
        if other.currency != self.currency:
            raise CurrencyMismatch(f"cannot add {other.currency} to {self.currency}")
        return Amount(self.currency, checked(self.minor + other.minor))

    def __sub__(self, other: Amount) -> Amount:
        if other.currency != self.currency:
            raise CurrencyMismatch(f"cannot subtract {other.currency} from {self.currency}")
        return Amount(self.currency, checked(self.minor - other.minor))

    def times(self, quantity: int) -> Amount:
        """This amount multiplied by a whole quantity (a unit price times units)."""
        return Amount(self.currency, checked(self.minor * quantity))

    def __str__(self) -> str:
        exp = CURRENCIES[self.currency]
        if exp == 0:
            return f"{self.minor} {self.currency}"
        sign = "-" if self.minor < 0 else ""
        whole, frac = divmod(abs(self.minor), 10**exp)
        return f"{sign}{whole}.{frac:0{exp}d} {self.currency}"


def total(amounts: Iterable[Amount], currency: str) -> Amount:
    """The sum of `amounts` (all in `currency`); zero for none. Raises on overflow."""
    result = Amount.zero(currency)
    for a in amounts:
        result = result + a
    return result
