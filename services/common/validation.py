"""Request-field checks shared by the shop's services.

Each check takes the request's `Violations` collector and the field's path (as the
caller sees it, e.g. `items[2].quantity`), records what is wrong, and returns the
normalised value (or a neutral one when invalid) so validation can go on and report
every bad field in one INVALID_ARGUMENT. The servicer calls `raise_if_any()` once.

Strings that reach a database are checked for control characters: besides being
meaningless in names, a NUL is rejected by PostgreSQL and would otherwise surface
as INTERNAL instead of INVALID_ARGUMENT. Text fields also refuse Unicode format
characters (category Cf: bidi overrides such as U+202E, zero-width spaces and
joiners, the BOM), which make a name display as something else than it is.
Limit: emoji sequences joined with U+200D (family emoji) are refused too.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from shop.common.v1 import money_pb2

from base.errors import Violations
from services.common.money import (
    CURRENCIES,
    MAX_AMOUNT_MINOR,
    Amount,
)
from services.common.pagination import PageTokenError, decode_page_token

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_CURRENCY = re.compile(r"[A-Z]{3}")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100


# Controls, surrogates, private use, unassigned; and the line and paragraph separators
# (U+2028, U+2029: line breaks as a newline is, which passed until 7 Dec 2026).
_CONTROL = frozenset({"Cc", "Cs", "Co", "Cn", "Zl", "Zp"})


def has_control_chars(value: str) -> bool:
    """True for C0/C1 controls (NUL, newline, escape...), surrogates, private-use and
    unassigned code points, and Unicode's line and paragraph separators. ASCII text is
    checked in C: its only non-printable
    characters are its controls (category Cc), so `isprintable()` says the same as the
    per-character categories (tests/unit/services/test_common.py compares them for
    every ASCII character); an order's text fields cost ~250 Python steps otherwise."""
    if value.isascii():
        return not value.isprintable()
    return any(unicodedata.category(ch) in _CONTROL for ch in value)


def has_format_chars(value: str) -> bool:
    """True for Unicode format characters (Cf): bidi overrides, zero-width characters.
    ASCII has none."""
    if value.isascii():
        return False
    return any(unicodedata.category(ch) == "Cf" for ch in value)


def printable(text: str, limit: int) -> str:
    """`text` as a field `text_field` accepts: controls and format characters become
    spaces, and it is cut to `limit` characters. For text a service passes on rather
    than types: an upstream's error message as the reason of a compensation, which
    would otherwise be refused (INVALID_ARGUMENT) for a newline in it."""
    if has_control_chars(text) or has_format_chars(text):
        text = "".join(
            " " if unicodedata.category(ch) in _CONTROL or unicodedata.category(ch) == "Cf"
            else ch
            for ch in text
        )  # fmt: skip
    return text[:limit]


def is_uuid(value: str) -> bool:
    return bool(_UUID.fullmatch(value))


def uuid_field(v: Violations, path: str, value: str, *, required: bool = True) -> str:
    """A UUID in canonical 8-4-4-4-12 form, returned lower case ('' when missing/invalid)."""
    if not value:
        if required:
            v.add(path, "is required (a UUID)")
        return ""
    if not is_uuid(value):
        v.add(path, "must be a UUID such as 123e4567-e89b-12d3-a456-426614174000")
        return ""
    return value.lower()


def text_field(
    v: Violations,
    path: str,
    value: str,
    *,
    min_len: int = 1,
    max_len: int,
    strip: bool = True,
) -> str:
    """A string of `min_len`..`max_len` characters without control characters.

    With `strip`, surrounding whitespace is dropped first (and does not count).
    """
    text = value.strip() if strip else value
    if len(text) < min_len:
        v.add(path, "is required" if min_len == 1 and not text else f"needs {min_len}+ characters")
        return text
    if len(text) > max_len:
        v.add(path, f"must be at most {max_len} characters")
        return text
    if has_control_chars(text):
        v.add(path, "must not contain control characters")
    elif has_format_chars(text):
        v.add(path, "must not contain invisible format characters (bidi overrides, zero-width)")
    return text


def int_field(v: Violations, path: str, value: int, *, minimum: int, maximum: int) -> int:
    """An integer in [minimum, maximum]."""
    if value < minimum:
        v.add(path, f"must be at least {minimum}")
    elif value > maximum:
        v.add(path, f"must be at most {maximum}")
    return value


def currency_field(v: Violations, path: str, code: str) -> str:
    if not code:
        v.add(path, "is required (an ISO 4217 code such as USD)")
    elif not _CURRENCY.fullmatch(code):
        v.add(path, "must be an upper-case ISO 4217 code such as USD")
    elif code not in CURRENCIES:
        v.add(path, f"unsupported currency; supported: {', '.join(sorted(CURRENCIES))}")
    return code


def money_field(
    v: Violations,
    path: str,
    money: money_pb2.Money,
    *,
    present: bool,
    allow_zero: bool = False,
) -> Amount | None:
    """A positive (or, with `allow_zero`, non-negative) amount of a supported currency.

    `present` is the request's `HasField(...)` for the money field. Returns None
    when anything is wrong.
    """
    if not present:
        v.add(path, "is required")
        return None
    before = len(v.items)
    currency_field(v, f"{path}.currency_code", money.currency_code)
    amount = money.amount_minor
    if amount < 0 or (amount == 0 and not allow_zero):
        v.add(f"{path}.amount_minor", "must be positive" if not allow_zero else "must be >= 0")
    elif amount > MAX_AMOUNT_MINOR:
        v.add(f"{path}.amount_minor", f"must be at most {MAX_AMOUNT_MINOR} minor units")
    if len(v.items) != before:
        return None
    return Amount(money.currency_code, amount)


def unique_ids(v: Violations, path_of: str, ids: Iterable[str], what: str = "id") -> None:
    """Record a violation at `path_of.format(i)` for each repeated (non-empty) id."""
    seen: set[str] = set()
    for i, value in enumerate(ids):
        if value and value in seen:
            v.add(path_of.format(i), f"repeats an earlier {what}; list each at most once")
        seen.add(value)


def page_size_field(
    v: Violations,
    path: str,
    value: int,
    *,
    default: int = DEFAULT_PAGE_SIZE,
    maximum: int = MAX_PAGE_SIZE,
) -> int:
    """0 means `default`; otherwise 1..`maximum`."""
    if value == 0:
        return default
    if value < 0 or value > maximum:
        v.add(path, f"must be from 1 to {maximum} (0 means {default})")
        return default
    return value


def page_token_field(
    v: Violations, path: str, kind: str, token: str
) -> dict[str, str | int] | None:
    """The cursor of a page token of listing `kind`; None for the first page or when invalid."""
    if not token:
        return None
    try:
        return decode_page_token(kind, token)
    except PageTokenError as exc:
        v.add(path, str(exc))
        return None
