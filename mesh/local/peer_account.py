"""Which account on this machine is at the other end of a loopback TCP connection.

Why: a server on 127.0.0.1 (the dashboard and the trace sink of `meshctl up`) is
reached by every account on the machine, and a browser cannot speak to a Unix
socket whose mode would keep the others out. The kernel knows who made each
socket: Linux's `/proc/net/tcp` lists every IPv4 TCP socket of this network
namespace with its owner's uid, so the server finds the client's end of the
connection (local address = the peer's, remote = ours) and reads its uid — what
`identd` answered for remote hosts, asked locally. A browser the user runs, and a
port forward made by the user's own `ssh`, are the user's; another account's is not.

Limits: Linux only (elsewhere `available()` is False, `peer_uid` answers None and
the caller decides); IPv4 servers only (both listen on 127.0.0.1; a client's
dual-stack socket, as gRPC's C core makes, is found in `/proc/net/tcp6` under the
v4-mapped address); the tables are read once per call, a few hundred µs with a
thousand sockets: fine for a page or a span batch a few times a second, not for a
hot path. A connection that closed before the lookup is not found (None).
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

TCP_TABLE = Path("/proc/net/tcp")
TCP6_TABLE = Path("/proc/net/tcp6")
_ESTABLISHED = "01"


def _hex_words(packed: bytes) -> str:
    # The kernel prints an address as the native-endian integers of its network-order
    # 32-bit words (`%08X` each), then the port in hex.
    return "".join(f"{w:08X}" for w in struct.unpack(f"={len(packed) // 4}I", packed))


def _hex_address(host: str, port: int, *, mapped: bool = False) -> str:
    packed = socket.inet_aton(host)
    if mapped:  # ::ffff:a.b.c.d
        packed = b"\0" * 10 + b"\xff\xff" + packed
    return f"{_hex_words(packed)}:{port:04X}"


def _owner(table: Path, local: str, remote: str) -> int | None:
    try:
        text = table.read_text()
    except OSError:
        return None
    for line in text.splitlines()[1:]:
        fields = line.split()
        # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
        if len(fields) < 8:
            continue
        if fields[1] == local and fields[2] == remote and fields[3] == _ESTABLISHED:
            return int(fields[7])
    return None


def peer_uid(
    peer: tuple[str, int],
    ours: tuple[str, int],
    table: Path = TCP_TABLE,
    table6: Path = TCP6_TABLE,
) -> int | None:
    """The uid owning the socket at IPv4 `peer` connected to `ours` (None: not found, or
    no such table on this system)."""
    found = _owner(table, _hex_address(*peer), _hex_address(*ours))
    if found is None:
        found = _owner(table6, _hex_address(*peer, mapped=True), _hex_address(*ours, mapped=True))
    return found


def available(table: Path = TCP_TABLE) -> bool:
    """Whether this system can tell (Linux)."""
    return table.is_file()
