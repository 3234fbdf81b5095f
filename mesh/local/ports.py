"""Is a loopback port busy? Only when something listens on it (or holds it bound).

The check binds with SO_REUSEADDR, as Envoy and gRPC bind their listeners: TIME_WAIT
sockets left by a mesh that just stopped do not make the port busy (without it, `make run`
right after Ctrl-C said "ports already in use" for ~60 s although every server would have
bound fine; Linux shares a TIME_WAIT port when both sockets set SO_REUSEADDR, and those
servers do). A listener still conflicts — a gRPC one too, although it sets SO_REUSEPORT,
because this socket does not. Limit: a port free now can be taken before the server binds
it; the server's own bind error is then the answer.
"""

from __future__ import annotations

import socket


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
