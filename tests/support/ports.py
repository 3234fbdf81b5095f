"""Free loopback ports for processes that cannot report the port they bound."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def in_time_wait(port: int) -> bool:
    """A TCP socket on local loopback port `port` sits in TIME_WAIT (state 06 in
    /proc/net/tcp): what made a plain bind fail right after a mesh stopped."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return any(r[1].endswith(f":{port:04X}") and r[3] == "06" for r in rows)
