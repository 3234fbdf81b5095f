"""Which account on this machine is at the other end of a loopback TCP connection.

Why: a web page served on 127.0.0.1 (the dashboard of `meshctl up`) is reached by
every account on the machine, and a browser cannot speak to a Unix socket whose
mode would keep the others out. The kernel knows who made each socket: Linux's
`/proc/net/tcp` lists every IPv4 TCP socket of this network namespace with its
owner's uid, so the server finds the client's end of the connection (local
address = the peer's, remote = ours) and reads its uid — what `identd` answered
for remote hosts, asked locally. A browser the user runs, and a port forward made
by the user's own `ssh`, are the user's; another account's is not.

Limits: Linux only (`/proc/net/tcp`; elsewhere `peer_uid` answers None and the
caller decides); IPv4 only (the dashboard listens on 127.0.0.1); the socket table
is read once per call, a few hundred µs with a thousand sockets, fine for a page
asked for a few times a second, not for a hot path. A connection that closed
before the lookup is not found (None).
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

TCP_TABLE = Path("/proc/net/tcp")
_ESTABLISHED = "01"


def _hex_address(host: str, port: int) -> str:
    # The kernel prints the address as the native-endian integer of its network-order
    # bytes (`%08X`), then the port in hex.
    (number,) = struct.unpack("=I", socket.inet_aton(host))
    return f"{number:08X}:{port:04X}"


def peer_uid(peer: tuple[str, int], ours: tuple[str, int], table: Path = TCP_TABLE) -> int | None:
    """The uid owning the socket at `peer` connected to `ours` (None: not found, or no
    such table on this system)."""
    try:
        text = table.read_text()
    except OSError:
        return None
    want_local, want_remote = _hex_address(*peer), _hex_address(*ours)
    for line in text.splitlines()[1:]:
        fields = line.split()
        # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
        if len(fields) < 8:
            continue
        if fields[1] == want_local and fields[2] == want_remote and fields[3] == _ESTABLISHED:
            return int(fields[7])
    return None


def available(table: Path = TCP_TABLE) -> bool:
    """Whether this system can tell (Linux)."""
    return table.is_file()
