"""Free loopback ports for processes that cannot report the port they bound."""

from __future__ import annotations

import os
import random
import socket

_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default range starts here


def _worker_slice(low: int, high: int) -> tuple[int, int]:
    """This pytest-xdist worker's share of [low, high]: workers are separate processes,
    so `_handed_out` cannot keep two of them from picking the same port for processes
    that bind later; disjoint slices can. Without xdist the whole range."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count <= 1:
        return low, high
    index = int(worker[2:]) % count
    size = (high - low + 1) // count
    return low + index * size, low + (index + 1) * size - 1


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
    low, high = _worker_slice(max(1024, min(20000, high - 2000)), high)
    if high - low < 500:  # an unusual range: fall back to the kernel's pick
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
