"""Email rules of the users service."""

from __future__ import annotations

import pytest

from base.errors import Violations
from services.users.validation import email_field


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Ada@Example.COM", "ada@example.com"),
        ("  ada.lovelace+shop@mail.example.co.uk ", "ada.lovelace+shop@mail.example.co.uk"),
        ("o'brien@example.ie", "o'brien@example.ie"),
    ],
)
def test_valid_emails(raw: str, normalised: str) -> None:
    v = Violations()
    assert email_field(v, "email", raw) == normalised
    assert not v.items


@pytest.mark.parametrize(
    "raw",
    [
        "", "plain", "@example.com", "ada@", "ada@example", "ada@@example.com",
        "ada..x@example.com", ".ada@example.com", "ada@-example.com", "ada@example.123",
        "ada lovelace@example.com", "ada@exam_ple.com", "ada@exa\nmple.com",
        "a" * 65 + "@example.com", "ada@" + "x" * 250 + ".com", "adä@example.com",
    ],
)  # fmt: skip
def test_invalid_emails(raw: str) -> None:
    v = Violations()
    assert email_field(v, "email", raw) == ""
    assert [x.field for x in v.items] == ["email"]
