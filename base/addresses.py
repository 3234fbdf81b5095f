"""Telling an IP address from a host name, in one place."""

from __future__ import annotations

import ipaddress


def is_ip_literal(name: str) -> bool:
    """Whether `name` is an IPv4 or IPv6 address as written (not a DNS name)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
