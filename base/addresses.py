"""Telling an IP address from a host name, and what a DNS label is, in one place."""

from __future__ import annotations

import ipaddress
import re

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def is_ip_literal(name: str) -> bool:
    """Whether `name` is an IPv4 or IPv6 address as written (not a DNS name)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_dns_label(name: str, max_len: int = 63) -> bool:
    """Whether `name` is a lower-case DNS label (RFC 1123) of at most `max_len` characters:
    letters, digits and '-', starting and ending with a letter or digit. (`fullmatch`:
    `match` with `$` took a trailing newline, `"a\\n"`, for a label.)"""
    return len(name) <= max_len and _DNS_LABEL.fullmatch(name) is not None


def is_dns_name(name: str) -> bool:
    """Whether `name` is a lower-case host name: DNS labels joined by '.', at most 253
    characters (`localhost`, `shop.example.com`). Limit: no wildcard (`*.example.com`)
    and no trailing dot."""
    return len(name) <= 253 and all(is_dns_label(label) for label in name.split("."))
