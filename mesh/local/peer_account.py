"""Which account on this machine is at the other end of a loopback TCP connection.

Why: a server on 127.0.0.1 (the dashboard and the trace sink of `meshctl up`) is
reached by every account on the machine, and a browser cannot speak to a Unix
socket whose mode would keep the others out. The kernel knows who made each
socket: the server asks it for the client's end of the connection (local address
= the peer's, remote = ours) and reads its owner's uid — what `identd` answered
for remote hosts, asked locally. A browser the user runs, and a port forward made
by the user's own `ssh`, are the user's; another account's is not.

How: one exact lookup over Linux's sock_diag netlink (`SOCK_DIAG_BY_FAMILY`, the
interface `ss` uses; no privilege needed), ~12 µs. Hand-written (a few structs)
because the obvious source is too slow: reading `/proc/net/tcp` and `tcp6` cost
7.5 ms per lookup with 134 sockets on the box (the kernel prints every socket), and
the trace sink asks on every span batch: its CPU per order tripled under `bench
orders`. pyroute2 speaks sock_diag but dumps every socket rather than looking one
up. A client's dual-stack socket (gRPC's C core connects to 127.0.0.1 from an
AF_INET6 socket) is found by the same IPv4 lookup: the kernel keeps one table.

Limits: Linux only (elsewhere `available()` is False, `peer_uid` answers None and
the caller decides); IPv4 servers only (both listen on 127.0.0.1). A connection
that closed before the lookup is not found (None).
"""

from __future__ import annotations

import itertools
import os
import socket
import struct

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NO_COOKIE = 0xFFFFFFFF
_ALL_STATES = 0xFFFFFFFF
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_REQUEST = struct.Struct("=BBBBI")  # inet_diag_req_v2: family, protocol, ext, pad, states
# inet_diag_msg after its header: family, state, timer, retrans (4 bytes), the socket
# id (48), expires, rqueue, wqueue (12), then uid.
_UID_OFFSET = _HEADER.size + 4 + 48 + 12
_seq = itertools.count(1)


def _socket_id(peer: tuple[str, int], ours: tuple[str, int]) -> bytes:
    # inet_diag_sockid: sport, dport (big-endian), src[16], dst[16], interface, cookie.
    # The socket wanted is the client's: its source is the peer, its destination us.
    def address(host: str) -> bytes:
        return socket.inet_aton(host) + bytes(12)

    return (
        struct.pack("!HH", peer[1], ours[1])
        + address(peer[0])
        + address(ours[0])
        + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    )


def peer_uid(peer: tuple[str, int], ours: tuple[str, int]) -> int | None:
    """The uid owning the socket at IPv4 `peer` connected to `ours` (None: no such
    connection, or a system that cannot tell)."""
    body = _REQUEST.pack(socket.AF_INET, socket.IPPROTO_TCP, 0, 0, _ALL_STATES)
    body += _socket_id(peer, ours)
    header = _HEADER.pack(
        _HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, next(_seq), 0
    )
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as s:
            s.settimeout(1.0)
            s.send(header + body)
            answer = s.recv(8192)
    except (OSError, AttributeError):  # not Linux (no AF_NETLINK), or refused
        return None
    if len(answer) < _HEADER.size:
        return None
    _length, kind, _flags, _seq_no, _pid = _HEADER.unpack_from(answer)
    if kind != _SOCK_DIAG_BY_FAMILY or len(answer) < _UID_OFFSET + 4:
        return None  # NLMSG_ERROR: ENOENT, no such connection
    (uid,) = struct.unpack_from("=I", answer, _UID_OFFSET)
    return int(uid)


def available() -> bool:
    """Whether this system can tell (Linux's sock_diag)."""
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG).close()
    except (OSError, AttributeError):
        return False
    return True


def served_account() -> int | None:
    """The uid a loopback server of this process should serve: this process's own, or
    None (any account) where the system cannot tell who connects."""
    return os.getuid() if available() else None
