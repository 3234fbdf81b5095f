"""What a DNS label and a host name are (base/addresses.py)."""

from __future__ import annotations

import pytest

from base.addresses import is_dns_label, is_dns_name


@pytest.mark.parametrize("name", ["a", "orders", "a-1", "1a", "a" * 63])
def test_dns_labels(name: str) -> None:
    assert is_dns_label(name)


@pytest.mark.parametrize("name", ["", "a-", "-a", "A", "a b", "a_b", "a.b", "a" * 64, "a\n"])
def test_not_dns_labels(name: str) -> None:
    """A trailing newline passed until `match` with `$` became `fullmatch`."""
    assert not is_dns_label(name)


@pytest.mark.parametrize("name", ["localhost", "shop.example.com", "a-1.b2"])
def test_host_names(name: str) -> None:
    assert is_dns_name(name)


@pytest.mark.parametrize(
    "name", ["", "not a name", "a..b", ".a", "a.", "Shop.example.com", "*.example.com",
             "a.b\n", ".".join(["a" * 63] * 4)]
)  # fmt: skip
def test_not_host_names(name: str) -> None:
    assert not is_dns_name(name)
