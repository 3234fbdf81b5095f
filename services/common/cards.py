"""Payment card fields: number (Luhn), expiry, CVC — checked without ever echoing them.

A violation names the field and what is wrong, never the value: a card number
must not end up in an error message, a log line or a trace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from base.errors import Violations
from services.common.timestamps import utcnow

MIN_PAN = 12
MAX_PAN = 19
MAX_YEARS_AHEAD = 50
_SEPARATORS = re.compile(r"[ -]")
_DIGITS = re.compile(r"[0-9]+")


def luhn_ok(number: str) -> bool:
    """The Luhn (mod 10) check digit of a string of digits is right."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_number_field(v: Violations, path: str, value: str) -> str:
    """The number's digits (spaces and dashes dropped): 12-19 digits, Luhn-valid; '' if not."""
    number = _SEPARATORS.sub("", value)
    if not number:
        v.add(path, "is required")
    elif not _DIGITS.fullmatch(number):
        v.add(path, "must contain only digits")
    elif not MIN_PAN <= len(number) <= MAX_PAN:
        v.add(path, f"must have {MIN_PAN} to {MAX_PAN} digits")
    elif not luhn_ok(number):
        v.add(path, "is not a valid card number (check digit)")
    else:
        return number
    return ""


def expiry_fields(
    v: Violations, path: str, month: int, year: int, *, now: datetime | None = None
) -> None:
    """`path.exp_month` 1-12 and `path.exp_year` four digits, not expired, not absurdly far."""
    today = now or utcnow()
    month_ok = v.check(1 <= month <= 12, f"{path}.exp_month", "must be from 1 to 12")
    if not 1000 <= year <= 9999:
        v.add(f"{path}.exp_year", "must be a four-digit year")
    elif year > today.year + MAX_YEARS_AHEAD:
        v.add(f"{path}.exp_year", f"must be within {MAX_YEARS_AHEAD} years")
    elif month_ok and (year, month) < (today.year, today.month):
        # A card is valid to the end of its expiry month.
        v.add(f"{path}.exp_year", "the card has expired")


def cvc_field(v: Violations, path: str, value: str) -> str:
    if not value:
        v.add(path, "is required")
    elif not (3 <= len(value) <= 4 and _DIGITS.fullmatch(value)):
        v.add(path, "must be 3 or 4 digits")
    else:
        return value
    return ""


@dataclass(frozen=True, slots=True)
class CardInput:
    """A validated card. `number` is held in memory for the charge only; `repr` hides it."""

    number: str
    exp_month: int
    exp_year: int
    cvc: str

    @property
    def last4(self) -> str:
        return self.number[-4:]

    def __repr__(self) -> str:
        exp = f"{self.exp_month:02d}/{self.exp_year}" if self.exp_year else "none"
        return f"CardInput(last4={self.last4!r}, exp={exp})"

    __str__ = __repr__
