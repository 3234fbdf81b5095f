"""Free loopback ports for processes that cannot report the port they bound."""

from __future__ import annotations

import random
import socket

_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default range starts here


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range.

    A port the kernel picked (bind to port 0) lies in the ephemeral range, where the
    kernel hands the same number to the next port-0 listener or outgoing connection
    once the probe closes: a service or a client could take it before the process it
    was picked for binds it (seen: Envoy's edge listener "Address already in use" in
    one start of twenty). Below that range the kernel never hands ports out, so only
    another explicit pick could take it: this one checks the port binds now (without
    SO_REUSEADDR, so not in TIME_WAIT either) and never returns a port twice.
    """
    high = _ephemeral_low() - 1
    low = max(1024, min(20000, high - 2000))
    if high - low < 1000:  # an unusual range: fall back to the kernel's pick
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in range(500):
        port = random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port between {low} and {high}")


def in_time_wait(port: int) -> bool:
    """A TCP socket on local loopback port `port` sits in TIME_WAIT (state 06 in
    /proc/net/tcp): what made a plain bind fail right after a mesh stopped."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return any(r[1].endswith(f":{port:04X}") and r[3] == "06" for r in rows)
